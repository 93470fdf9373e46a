"""The namespace's init as a small C program (``init.c``), where the host can build one.

Why: the PID namespace's init (supervisor.fork_chain) is a fork of the Python launcher; after it
forks the kernel it only reaps and passes signals on, yet it holds ~4 MiB of the launcher's memory
per kernel (PSS; issue 21's target is bubblewrap's, whose processes are C). So once it has forked
the kernel, it execs ``sandbox-kernel-init``, which does the same in ~0.3 MiB. Where there is none
(no C compiler when the kernelspec was installed, or a launch without a kernelspec's policy cache),
the Python init goes on as before: the same behaviour, the memory aside; the pid_namespace layer's
detail says which.

Where it lives: in the kernelspec's directory, beside the validated-policy cache, written by
``sandbox-kernel install`` (the platform's installer, never the tenant), so it is trusted as the
cache is: the launcher checks that the tenant cannot write it (trusted_start.launch_files) before
it runs it. Standard library only; ``build`` runs at install time, ``beside`` on the launch path.
"""

from __future__ import annotations

import os

from . import resources

FILE_NAME = "sandbox-kernel-init"
SOURCE = os.path.join(resources.PACKAGE_DIR, "init.c")


def beside(policy_cache: str | None) -> str | None:
    """The helper installed beside `policy_cache` (a kernelspec's), if there is one."""
    if not policy_cache:
        return None
    path = os.path.join(os.path.dirname(os.path.abspath(policy_cache)), FILE_NAME)
    return path if os.path.isfile(path) and os.access(path, os.X_OK) else None


USAGE_MARK = b"KERNEL_PID [READY_FD]"  # init.c's USAGE: a helper that closes READY_FD once it runs


def takes_ready_fd(helper: str) -> bool:
    """Whether `helper` closes the READY_FD it is given once it runs (init.c), rather than at its exec:
    a helper built by an older `install` does not take one (it is rebuilt by the next)."""
    try:
        with open(helper, "rb") as fh:
            return USAGE_MARK in fh.read(1 << 20)
    except OSError:
        return False


def compiler() -> str | None:
    import shutil

    return next((c for c in (os.environ.get("CC"), "cc", "gcc", "clang") if c and shutil.which(c)), None)


def command(cc: str, out: str) -> list[str]:
    """The compiler's command line that builds init.c into `out`."""
    return [cc, "-O2", "-o", out, "-Wall", "-Werror", SOURCE]


def build(dest_dir: str) -> tuple[str | None, str]:
    """Compile init.c into `dest_dir`: (its path, "") or (None, why not)."""
    import subprocess

    cc = compiler()
    if cc is None:
        return None, "no C compiler (cc, gcc or clang) on this host"
    out = os.path.join(dest_dir, FILE_NAME)
    try:
        r = subprocess.run(command(cc, out), capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired) as e:
        return None, f"{cc} failed: {e}"
    if r.returncode != 0:
        return None, f"{cc} failed: {(r.stderr or r.stdout).strip()[-500:]}"
    os.chmod(out, 0o755)
    return out, ""
