"""The launch context: facts about this launch that a profile's placeholders and rules refer to
({home}, {cwd}, {tmp}, {python}, {env}, {system}), and what the launcher has learned about it
(the connection file, the kernel's id and ports)."""

from __future__ import annotations

import os
import pwd
import sys

from ..paths import below, real_writable, realpath
from ..profile_files import search_path
from .connection_dir import connection_dirs
from .jupyter_paths import jupyter_path, jupyter_runtime_dir
from .python_files import env_paths, environment_bin, python_paths, trusted_paths, zip_landmarks
from .system_dirs import READ_KEPT, SYSTEM_EXEC_DIRS


class LaunchContext:
    """Facts about this launch that a profile's placeholders and rules refer to.

    (A plain class: importing dataclasses costs the launcher ~5 ms at every kernel start.)
    """

    def __init__(self, env: dict[str, str], command: list[str] | None = None):
        self.env = env
        self.command = list(command or [])
        self.connection = None  # the validated connection file (sandbox_kernel.connection), if any
        self.kernel_ports: list[int] = []  # from the connection file
        self.ipc_dir: str | None = None  # where ipc-transport sockets are bound
        self.kernel_id = ""
        self.transport = "tcp"
        self.policy_cache: str | None = None  # the validated-policy cache file the launcher read
        self.subordinate_plan = None  # user_namespace.host_uid: subordinate: pid_namespace's prepare -> its apply
        self.jupyter_parent_fd: int | None = None  # pidfd of the Jupyter process (launcher, at its start)
        self.handoff: dict = {}  # for the kernel, apart from the report (layers/handoff.py): seccomp, gpu_tools
        # what the kernel may write for the audit trail: the FIFO to its supervisor (which writes
        # audit.log), or audit.log itself where no supervisor runs (pid_namespace layer; trail.py)
        self.audit_fifo: str | None = None
        self.audit_target: str | None = None
        self.private_tmp = False  # /tmp and /dev/shm are this kernel's own tmpfs (mount_namespace layer)
        self.init_program: str | None = None  # what runs as the PID namespace's init (supervisor.fork_chain)
        # Jupyter's runtime directory (other kernels' connection files), from the environment the
        # launcher was given: filesystem.home may point HOME elsewhere for the kernel.
        self.runtime_dir = jupyter_runtime_dir(env)

    def use_tenant_home(self, policy) -> str | None:
        """filesystem.home: HOME (and so {home}) becomes the tenant's own directory."""
        value = policy.data["filesystem"].get("home")
        if not value:
            return None
        home = expand_home(value, self.env)
        if not os.path.isdir(home):
            from ..errors import SandboxError

            raise SandboxError(f"filesystem.home {home} is not a directory; the platform creates each tenant's home "
                               f"before starting its kernels")
        self.env["HOME"] = home
        return home

    @property
    def uid(self) -> int:
        return os.getuid()

    @property
    def home(self) -> str:
        home = self.env.get("HOME")
        if not home:
            try:
                home = pwd.getpwuid(self.uid).pw_dir
            except KeyError:
                home = "/"
        return home

    @property
    def cwd(self) -> str:
        return os.getcwd()

    @property
    def tmp(self) -> str:
        if self.private_tmp:
            return "/tmp"
        return self.env.get("TMPDIR") or "/tmp"

    def python_paths(self) -> list[str]:
        """{python}: the interpreter files, the ELF loader and a virtual environment's own bin (see
        ``python_paths``). Nothing else: not the directory of the command being wrapped (`run --
        bash` must not grant /usr/bin), nor the directory the interpreter shares with other programs."""
        return python_paths()

    def expand(self, path: str) -> list[str]:
        if path.startswith("{system}"):  # and a virtual environment's own bin, whole (its ELF programs too)
            env_bin = environment_bin()
            dirs = [d for d in SYSTEM_EXEC_DIRS if os.path.exists(d)] + ([env_bin] if env_bin else [])
            return [d + path[len("{system}"):] for d in dirs]
        if path.startswith("{python}"):
            rest = path[len("{python}"):]
            if not rest:
                return self.python_paths()
            # {python}/x names something inside the environment's own bin; the interpreter
            # files and the loader are files, and nothing lies below them
            return [d + rest for d in self.python_paths() if os.path.isdir(d)]
        if path.startswith("{env}"):
            return [d + path[len("{env}"):] for d in env_paths()]
        for name in ("home", "cwd", "tmp"):
            tag = "{" + name + "}"
            if path.startswith(tag):
                return [getattr(self, name) + path[len(tag):]]
        return [path]

    def expand_paths(self, paths: list[str]) -> list[str]:
        return list(dict.fromkeys([e for p in paths for e in self.expand(p)]))

    def protected_paths(self, policy) -> list[str]:
        """Read-only even inside writable directories: what the next start trusts, and every
        directory programs may run from (W^X: no directory is both writable and executable)."""
        out = jupyter_path(self.env, "kernels")
        out += connection_dirs(self, policy)
        out += search_path(self.env)
        out += trusted_paths()
        if self.policy_cache:
            out.append(os.path.dirname(os.path.abspath(self.policy_cache)))
        if policy.audit_log:
            out.append(policy.audit_log)
        out += self.expand_paths(policy.data["filesystem"]["protected"])
        out += self.exec_dirs_in_writable(policy)
        out += self.startup_landmarks(policy)
        return list(dict.fromkeys(out))

    def startup_landmarks(self, policy) -> list[str]:
        """Where the next start's interpreter would find a planted standard library, inside a
        writable directory: Python's start looks for ``lib/pythonXY.zip`` in every directory above
        its own before it finds its standard library (``zip_landmarks``), so a cell that wrote
        ``~/lib/python311.zip`` (pyenv or conda under the home) would run its code in the next
        launcher before any layer. Protected: the installation's tree where it lies in a writable
        directory (the pyenv or conda root), and each landmark outside it (the launcher creates an
        empty directory there, which no file can replace)."""
        writable = real_writable(policy, self)
        roots = []
        for d in dict.fromkeys(realpath(p) for p in
                               (os.path.dirname(realpath(sys.executable)), sys.base_prefix)):
            for w in writable:
                if d != w and below(d, w):
                    top = d
                    while os.path.dirname(top) != w:
                        top = os.path.dirname(top)
                    roots.append(top)
        out = list(roots)
        for lm in zip_landmarks():
            inside = any(below(lm, w) for w in writable)
            if inside and not any(below(lm, r) for r in roots):
                out.append(lm)
        return list(dict.fromkeys(out))

    def readable_paths(self, policy) -> list[str]:
        """What Landlock lets the tenant read: filesystem.readable, plus what the kernel itself
        must read (the protected paths: kernelspecs, profiles, this package, the guard hook, the
        policy cache); writable and exec.allow directories are granted with their own rights, and
        the resolver files (read_kept) file by file, even inside a hidden directory."""
        out = self.expand_paths(policy.data["filesystem"]["readable"])
        out += self.protected_paths(policy)
        if self.audit_fifo and policy.audit_log:  # the supervisor writes the trail: the kernel reads none of it
            out = [p for p in out if p != policy.audit_log]
        return list(dict.fromkeys(out))

    def read_kept(self) -> list[str]:
        """READ_KEPT as the real files they name."""
        return list(dict.fromkeys(realpath(p) for p in READ_KEPT if os.path.exists(p)))

    def exec_dirs_in_writable(self, policy) -> list[str]:
        """exec.allow directories that lie strictly inside a writable directory: these become
        read-only (a directory equal to a writable one stays writable; with noexec_writable it
        runs nothing)."""
        writable = real_writable(policy, self)
        out = []
        for d in self.expand_paths(policy.data["exec"]["allow"]):
            r = realpath(d)
            if any(r != w and below(r, w) for w in writable):
                out.append(r)
        return out


def expand_home(value: str, env: dict[str, str]) -> str:
    """filesystem.home with {user}, {uid} and {tenant} (SANDBOX_KERNEL_TENANT, which the platform
    sets in the Jupyter server's environment; a tenant cannot change that from a cell)."""
    import re

    from ..errors import SandboxError

    out = value
    if "{user}" in out:
        out = out.replace("{user}", pwd.getpwuid(os.getuid()).pw_name)
    out = out.replace("{uid}", str(os.getuid()))
    if "{tenant}" in out:
        tenant = env.get("SANDBOX_KERNEL_TENANT", "")
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}", tenant):
            raise SandboxError(f"filesystem.home {value} uses {{tenant}} but SANDBOX_KERNEL_TENANT is {tenant!r}; the "
                               f"platform must set it (letters, digits, '.', '_', '-') in the Jupyter server's "
                               f"environment")
        out = out.replace("{tenant}", tenant)
    return os.path.normpath(out)
