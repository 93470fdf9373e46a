/* sandbox-kernel-init: pid 1 of a kernel's PID namespace, as a small C program.

   The Python init (sandbox_kernel/supervisor.py, fork_chain) forks the kernel, then execs this
   program in its own process, which stays pid 1 and the kernel's parent: what a Python init
   holds, some 4 MiB per kernel (issue 21's PSS target), it does not. It does what
   supervisor._init does, and nothing else:
   - reaps every process that ends in the namespace (orphans are re-parented to it);
   - passes SIGTERM, SIGHUP, SIGQUIT, SIGUSR1 and SIGUSR2 on to the kernel (supervisor.FORWARDED),
     except those it sent itself; SIGINT stays ignored (Jupyter interrupts the kernel's process
     group);
   - exits when the kernel exits, with its status (a signal N as 128 + N), and with it the OS
     kernel kills every process left in the namespace.
   Those signals are already blocked when it starts (the mask and the ignored SIGINT survive the
   exec) and are taken with sigwaitinfo, so none is lost between the fork and the exec: with no
   handler installed, signals sent from inside the namespace to its init are dropped by the OS
   kernel, SIGKILL included, as before the exec. PR_SET_PDEATHSIG survives the exec too.

   Usage: sandbox-kernel-init KERNEL_PID [READY_FD]. READY_FD, the write end of a pipe the kernel
   reads until its end, is closed once this program runs: its loader has opened ld.so.cache and
   libc by then, so the kernel can change the mount namespace it shares with init (the read view
   pivots the root) without this program looking up a path in the middle of it. (A helper built
   before READY_FD existed takes one argument; init_helper.takes_ready_fd tells which by USAGE.)
   Built by `sandbox-kernel install` with the host's C compiler into the kernelspec's directory,
   beside the validated-policy cache (init_helper.py). */
#include <errno.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

static const int forwarded[] = {SIGTERM, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2};
static const char USAGE[] = "usage: sandbox-kernel-init KERNEL_PID [READY_FD]\n";

int main(int argc, char **argv) {
    char *end;
    if (argc == 3) {
        long fd = strtol(argv[2], &end, 10);
        if (*end || fd < 3) goto usage;
        close((int)fd);
    } else if (argc != 2) goto usage;
    long k = strtol(argv[1], &end, 10);
    if (*end || k < 2) goto usage;
    pid_t kernel = (pid_t)k, self = getpid();
    sigset_t waited;
    sigemptyset(&waited);
    sigaddset(&waited, SIGCHLD);
    for (unsigned i = 0; i < sizeof forwarded / sizeof *forwarded; i++) sigaddset(&waited, forwarded[i]);
    sigprocmask(SIG_BLOCK, &waited, NULL);
    for (;;) {
        siginfo_t info;
        if (sigwaitinfo(&waited, &info) < 0) continue; /* EINTR */
        if (info.si_signo != SIGCHLD) {
            if (info.si_pid != self) kill(kernel, info.si_signo);
            continue;
        }
        for (;;) {
            int status;
            pid_t pid = waitpid(-1, &status, WNOHANG);
            if (pid < 0) {
                if (errno == EINTR) continue;
                _exit(1); /* no child left: the kernel is gone */
            }
            if (pid == 0) break;
            if (pid == kernel)
                _exit(WIFSIGNALED(status) ? 128 + WTERMSIG(status) : WIFEXITED(status) ? WEXITSTATUS(status) : 1);
        }
    }
usage:
    if (write(2, USAGE, sizeof USAGE - 1) < 0) return 2;
    return 2;
}
