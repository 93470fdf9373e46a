"""Red team: running a new program from memory (no executable memfd).

Landlock's execute right is checked on the path of the file being executed, and memfd
files live on an internal mount Landlock never restricts: a program written into a memfd
runs through execve("/proc/self/fd/N") or execveat(fd, "", AT_EMPTY_PATH), under every
exec.allow. seccomp closes it: memfd_create only with MFD_NOEXEC_SEAL (unless the PID
namespace layer set vm.memfd_noexec=2, which makes the OS kernel seal every memfd), never
with MFD_EXEC, and no execveat(AT_EMPTY_PATH). Each test runs a real kernel, as root and
as an ordinary user, under `free` and `offline`.
"""

from __future__ import annotations


import pytest
from rtutil import attempt, run_reporting

pytestmark = pytest.mark.redteam

MODES = ["free", "offline"]


HELPERS = r"""
import ctypes, errno, json, os, subprocess, sys
MFD_CLOEXEC, MFD_ALLOW_SEALING, MFD_NOEXEC_SEAL, MFD_EXEC = 0x1, 0x2, 0x8, 0x10
AT_EMPTY_PATH = 0x1000
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
def ename(e):
    return errno.errorcode.get(e, str(e))
def raw(nr, *args):
    conv = [ctypes.c_ulong(a & 0xFFFFFFFFFFFFFFFF) if isinstance(a, int) else a for a in args]
    r = libc.syscall(ctypes.c_long(nr), *conv)
    return r if r >= 0 else -ctypes.get_errno()
def memfd_with_true(flags):
    # a memfd holding a copy of /usr/bin/true, or the errno name of memfd_create's refusal
    fd = raw(319, b"tool", flags)
    if fd < 0:
        return "memfd_create " + ename(-fd)
    with open("/usr/bin/true", "rb") as src:
        data = src.read()
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]
    return fd
def run_proc_fd(fd):
    # execve("/proc/self/fd/N") in a child that inherits the memfd
    try:
        p = subprocess.run(["/proc/self/fd/%d" % fd], pass_fds=(fd,))
    except OSError as e:
        return "execve " + ename(e.errno)
    return "ran" if p.returncode == 0 else "exit %d" % p.returncode
EXECVEAT_CHILD = (
    "import ctypes, errno, os, sys\n"
    "libc = ctypes.CDLL(None, use_errno=True)\n"
    "fd = int(sys.argv[1]); flags = int(sys.argv[2])\n"
    "argv = (ctypes.c_char_p * 2)(b'true', None); envp = (ctypes.c_char_p * 1)(None)\n"
    "libc.syscall(ctypes.c_long(322), ctypes.c_long(fd), b'', argv, envp, ctypes.c_ulong(flags))\n"
    "print('execveat ' + errno.errorcode.get(ctypes.get_errno(), '?'))\n")
def run_execveat(fd, flags=AT_EMPTY_PATH):
    p = subprocess.run([sys.executable, "-c", EXECVEAT_CHILD, str(fd), str(flags)], pass_fds=(fd,),
                       capture_output=True, text=True)
    if p.returncode == 0 and not p.stdout.strip():
        return "ran"  # /usr/bin/true replaced the child: nothing printed, exit 0
    return p.stdout.strip() or "exit %d %s" % (p.returncode, p.stderr[-200:])
"""


def run(kernel, code: str) -> dict:
    return run_reporting(kernel, HELPERS, code)


@attempt("seccomp+pid_namespace")
@pytest.mark.parametrize("profile", MODES)
def test_memfd_program_run_through_proc_self_fd(pool, who, profile):
    """memfd_create + a copy of /usr/bin/true + execve("/proc/self/fd/N"): a program that exists
    nowhere on disk runs under any exec.allow. Stopped by seccomp (memfd_create with MFD_EXEC
    is refused; without MFD_NOEXEC_SEAL too, unless the kernel's PID namespace has
    vm.memfd_noexec=2, as root's has: then the OS kernel seals the memfd non-executable and the
    execve fails)."""
    got = run(pool.get(profile, who), """
        out = {}
        for name, flags in [("default", 0), ("cloexec", MFD_CLOEXEC), ("sealing", MFD_ALLOW_SEALING),
                            ("exec", MFD_EXEC), ("exec_upper_bits", MFD_EXEC | (1 << 40)),
                            ("no_seal_upper_bits", MFD_NOEXEC_SEAL << 32)]:
            fd = memfd_with_true(flags)
            out[name] = fd if isinstance(fd, str) else run_proc_fd(fd)
        report(out)
        """)
    sealed = pool.get(profile, who).ok("import json, os; print('vm.memfd_noexec=2' in "
                                   "json.loads(os.environ['SANDBOX_KERNEL_LAYERS'])['pid_namespace']['detail'])")
    for key, value in got.items():
        if sealed.stdout.strip() == "True" and key in ("default", "cloexec", "sealing", "no_seal_upper_bits"):
            assert value == "execve EACCES", (key, got)  # created sealed non-executable: it cannot run
        else:
            assert value == "memfd_create EPERM", (key, got)


@attempt("seccomp")
@pytest.mark.parametrize("profile", MODES)
def test_execveat_empty_path(pool, who, profile):
    """execveat(fd, "", AT_EMPTY_PATH) runs the file behind a descriptor (fexecve): of a memfd,
    a program that exists nowhere on disk. Stopped by seccomp (AT_EMPTY_PATH is refused on
    execveat, for every descriptor)."""
    got = run(pool.get(profile, who), """
        out = {}
        fd = memfd_with_true(0)
        out["memfd"] = fd if isinstance(fd, str) else run_execveat(fd)
        true_fd = os.open("/usr/bin/true", os.O_RDONLY)
        out["file"] = run_execveat(true_fd)
        out["upper_bits"] = run_execveat(true_fd, AT_EMPTY_PATH | (1 << 36))
        report(out)
        """)
    assert got["memfd"] in ("memfd_create EPERM", "execveat EPERM"), got
    assert got["file"] == "execveat EPERM", got
    assert got["upper_bits"] == "execveat EPERM", got


@attempt("seccomp")
@pytest.mark.parametrize("profile", MODES)
def test_sealed_memfd_still_works_and_cannot_become_executable(pool, who, profile):
    """Shared memory stays usable: memfd_create(MFD_NOEXEC_SEAL) works (write, read, mmap), and
    its F_SEAL_EXEC keeps chmod +x from making it a program (the OS kernel's seal; seccomp only
    insists on asking for it)."""
    got = run(pool.get(profile, who), """
        import mmap
        out = {}
        fd = os.memfd_create("shm", os.MFD_CLOEXEC | MFD_NOEXEC_SEAL)
        os.write(fd, b"shared data")
        with mmap.mmap(fd, 11) as m:
            out["read"] = m[:].decode()
        try:
            os.fchmod(fd, 0o755)
            out["chmod"] = "ok"
        except OSError as e:
            out["chmod"] = ename(e.errno)
        fd2 = memfd_with_true(MFD_NOEXEC_SEAL)
        out["exec"] = fd2 if isinstance(fd2, str) else run_proc_fd(fd2)
        out["execveat"] = fd2 if isinstance(fd2, str) else run_execveat(fd2)
        report(out)
        """)
    assert got["read"] == "shared data", got
    assert got["chmod"] == "EPERM", got
    assert got["exec"] == "execve EACCES", got
    assert got["execveat"] == "execveat EPERM", got


@attempt("seccomp")
@pytest.mark.parametrize("profile", MODES)
def test_hugetlb_memfd_cannot_carry_a_program(pool, who, profile):
    """The sealed-memfd neighbour: a memfd on hugetlbfs (MFD_HUGETLB) asks for MFD_NOEXEC_SEAL
    and gets mode 0666, but hugetlbfs does not enforce F_SEAL_EXEC, so fchmod(0755) makes it
    executable again (shown on Linux 6.18); where huge pages are configured a program can be
    mapped into it and run. Stopped by seccomp (memfd_create with MFD_HUGETLB is refused)."""
    got = run(pool.get(profile, who), """
        out = {}
        for name, flags in [("hugetlb", 0x4 | MFD_NOEXEC_SEAL), ("hugetlb_2mb", 0x4 | (21 << 26) | MFD_NOEXEC_SEAL)]:
            fd = raw(319, b"huge", flags)
            if fd < 0:
                out[name] = "memfd_create " + ename(-fd)
                continue
            try:
                os.fchmod(fd, 0o755)
                out[name] = "chmod +x ok"
            except OSError as e:
                out[name] = "chmod " + ename(e.errno)
        report(out)
        """)
    assert got == {"hugetlb": "memfd_create EPERM", "hugetlb_2mb": "memfd_create EPERM"}, got


@attempt("mount_namespace")
@pytest.mark.parametrize("profile", MODES)
def test_unnamed_file_in_a_writable_directory(pool, who, profile):
    """The on-disk neighbour of a memfd: an O_TMPFILE file (no name, gone on close) in /tmp, the
    home or the working directory, or a POSIX shared-memory file in /dev/shm, holding a copy of
    /usr/bin/true and run through /proc/self/fd/N. Unlike a memfd it lives on a real mount, so
    Landlock checks its path: no exec right in writable directories."""
    got = run(pool.get(profile, who), """
        out = {}
        with open("/usr/bin/true", "rb") as src:
            data = src.read()
        for where in ("/tmp", os.path.expanduser("~"), os.getcwd(), "/dev/shm"):
            try:
                if where == "/dev/shm":
                    path = "/dev/shm/sbx-shm-probe-%d" % os.getpid()
                    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o755)
                    os.unlink(path)
                else:
                    fd = os.open(where, os.O_TMPFILE | os.O_RDWR, 0o755)
            except OSError as e:
                out[where] = "open " + ename(e.errno)
                continue
            os.write(fd, data)
            os.fchmod(fd, 0o755)
            out[where] = run_proc_fd(fd)
            os.close(fd)
        report(out)
        """)
    for where, value in got.items():
        assert value in ("execve EACCES", "open EACCES", "open EROFS"), (where, got)
    assert any(v == "execve EACCES" for v in got.values()), got
