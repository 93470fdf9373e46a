"""Where the host keeps programs, libraries and the files every process reads (fixed paths)."""

# What every process reads at run time that a hidden directory may hold (on many hosts
# /etc/resolv.conf points into /run/systemd/resolve): brought back read-only.
READ_KEPT = ["/etc/resolv.conf", "/etc/hosts", "/etc/nsswitch.conf", "/etc/localtime"]
# Directories of programs (not libraries): where not in exec.allow they are mounted noexec, so
# the ELF loader (which exec.allow must include for any dynamic program) cannot run them either.
# Besides the bin directories: the helper-program directories kept beside the libraries (git's
# helpers and git itself, ssh's, the FHS's libexec), which hold no library a process loads
# (Debian's one exception, coreutils' libstdbuf.so, is preloaded by stdbuf alone). The bin directories
# of packages' own trees (/usr/lib/jvm/*/bin, /opt/*/bin) vary by host: program_trees.py finds them.
PROGRAM_DIRS = ["/usr/bin", "/bin", "/usr/sbin", "/sbin", "/usr/local/bin", "/usr/local/sbin", "/usr/games",
                "/usr/local/games", "/usr/libexec", "/usr/local/libexec", "/usr/lib/git-core", "/usr/lib/openssh"]
SYSTEM_EXEC_DIRS = ["/usr/bin", "/bin", "/usr/sbin", "/sbin", "/usr/local/bin", "/usr/local/sbin",
                    "/usr/lib", "/usr/lib64", "/lib", "/lib64", "/usr/libexec"]
ELF_LOADERS = ["/lib64/ld-linux-x86-64.so.2", "/lib/ld-linux-aarch64.so.1", "/lib/ld-linux-armhf.so.3",
               "/lib64/ld64.so.2", "/lib/ld-linux.so.2"]

