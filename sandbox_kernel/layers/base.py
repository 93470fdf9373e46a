"""What every layer shares: the launch context and the status report.

A layer is a module with ``NAME`` and ``apply(policy, ctx, status)``. ``apply``
either enforces its rules and reports ``active``/``partial``, reports ``off`` when
the profile turns it off explicitly, or, when the machine cannot give it, raises
``LayerUnavailable`` (enforcement ``required``, the default) or reports
``unavailable`` (enforcement ``best-effort``). Nothing fails open silently.
"""

from __future__ import annotations

import os
import pwd
import sys

from .. import resources, standins
from ..errors import LayerUnavailable
from ..profile_files import search_path

SIMULATE_ENV = "SANDBOX_KERNEL_SIMULATE_MISSING"
STATUS_ENV = "SANDBOX_KERNEL_LAYERS"  # the status report (human-facing: doctor, %sandbox)
HANDOFF_ENV = "SANDBOX_KERNEL_HANDOFF"  # what the launcher hands the kernel's own steps (handoff_from_env)

# hard: enforced by the OS kernel, inherited by children, not removable from user code.
HARDNESS = {
    "import_guard": "soft", "environment": "soft", "no_new_privs": "hard", "capabilities": "hard",
    "rlimits": "hard", "cgroup": "hard", "mount_namespace": "hard", "landlock": "hard", "seccomp": "hard",
    "pid_namespace": "hard", "trusted_start": "hard",
}

# What every process reads at run time that a hidden directory may hold (on many hosts
# /etc/resolv.conf points into /run/systemd/resolve): brought back read-only.
READ_KEPT = ["/etc/resolv.conf", "/etc/hosts", "/etc/nsswitch.conf", "/etc/localtime"]
# Directories of programs (not libraries): where not in exec.allow they are mounted noexec, so
# the ELF loader (which exec.allow must include for any dynamic program) cannot run them either.
PROGRAM_DIRS = ["/usr/bin", "/bin", "/usr/sbin", "/sbin", "/usr/local/bin", "/usr/local/sbin", "/usr/games",
                "/usr/local/games"]
SYSTEM_EXEC_DIRS = ["/usr/bin", "/bin", "/usr/sbin", "/sbin", "/usr/local/bin", "/usr/local/sbin",
                    "/usr/lib", "/usr/lib64", "/lib", "/lib64", "/usr/libexec"]
ELF_LOADERS = ["/lib64/ld-linux-x86-64.so.2", "/lib/ld-linux-aarch64.so.1", "/lib/ld-linux-armhf.so.3",
               "/lib64/ld64.so.2", "/lib/ld-linux.so.2"]


def simulated_missing(layer: str) -> bool:
    """Test and diagnostic switch: pretend the machine lacks a layer.

    It can only make start-up fail (required layers) or report the layer unavailable
    (best-effort layers, which the profile has opted into): never a silent loosening.
    """
    return layer in os.environ.get(SIMULATE_ENV, "").split(",")


def level_or_off(policy, name: str, status: "Status", why_off: str | None = None) -> str | None:
    """The layer's enforcement level, or None (reported off) when the profile turns it off."""
    level = policy.enforcement(name)
    if level == "off":
        status.off(name, why_off or f"enforcement.{name} is off in the profile")
        return None
    return level


class Status:
    """Which layers are in force, as reported by their `apply`."""

    def __init__(self, layers: dict | None = None):
        self.layers: dict[str, dict] = layers or {}

    def _set(self, name: str, state: str, detail: str, **extra) -> None:
        self.layers[name] = {"state": state, "detail": detail, "hard": HARDNESS.get(name, "hard") == "hard", **extra}

    def active(self, name, detail, **extra):
        self._set(name, "active", detail, **extra)

    def partial(self, name, detail, **extra):
        self._set(name, "partial", detail, **extra)

    def off(self, name, detail, **extra):
        self._set(name, "off", detail, **extra)

    def unavailable(self, name, detail, **extra):
        self._set(name, "unavailable", detail, **extra)

    def not_needed(self, name, detail, **extra):
        self._set(name, "not needed", detail, **extra)

    def cannot(self, name: str, level: str, why: str) -> None:
        """Fail closed: a required layer stops start-up; a best-effort one is reported unavailable."""
        if level == "required":
            raise LayerUnavailable(name, why)
        self.unavailable(name, why)

    def to_json(self) -> str:
        return standins.json_dumps(self.layers, separators=(",", ":"), sort_keys=True)

    @classmethod
    def from_env(cls, env=None) -> "Status | None":
        text = (os.environ if env is None else env).get(STATUS_ENV)
        return cls(standins.json_loads(text)) if text else None


HANDOFF_MODES = ("none", "restricted", "full")  # network.mode (tests: the schema's)
HANDOFF_LISTEN = ("allow", "notify", "later", "refuse")  # seccomp.listen_plan (tests: seccomp.LISTEN_DETAIL's)


def handoff_from_env(env=None) -> dict:
    """The launcher's hand-off to the kernel ({} without one): JSON in HANDOFF_ENV, written by the
    launcher from ``LaunchContext.handoff`` and read by the kernel before any user code runs, as
    SANDBOX_KERNEL_LAYERS is. ``seccomp``: what stage 2 needs (layers/seccomp.py); ``gpu_tools``:
    the environment layer's GPU tool verdicts (accelerators.tool_verdicts). Tenant code can set it
    for its children: anything but what the launcher writes raises ValueError."""
    text = (os.environ if env is None else env).get(HANDOFF_ENV)
    if not text:
        return {}
    data = standins.json_loads(text)
    if not isinstance(data, dict) or not set(data) <= {"seccomp", "gpu_tools"}:
        raise ValueError("not an object with seccomp and gpu_tools")
    facts = data.get("seccomp", {})
    kinds = {"stage_two": bool, "stage_one": str, "listen": str, "audited": bool, "memfd_noexec": bool}
    if not isinstance(facts, dict) or set(facts) != (set(kinds) if facts else set()) or not all(
            isinstance(facts[k], t) for k, t in kinds.items() if k in facts):
        raise ValueError(f"seccomp is not an object of {', '.join(kinds)}")
    if facts and (facts["stage_one"] not in HANDOFF_MODES or facts["listen"] not in HANDOFF_LISTEN):
        raise ValueError(f"seccomp's stage_one or listen is none of {', '.join(HANDOFF_MODES + HANDOFF_LISTEN)}")
    tools = data.get("gpu_tools", [])
    if not isinstance(tools, list) or not all(
            isinstance(t, list) and len(t) == 4 and all(isinstance(x, str) for x in t) for t in tools):
        raise ValueError("gpu_tools is not a list of [entry, path, state, detail]")
    return data


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
        self.cgroups: list[str] = []  # set by the cgroup layer
        self.namespaces: set[str] = set()  # entered by the pid_namespace layer: "user", "pid", "mount", "ipc"
        self.host_userns: int | None = None  # inode of the user namespace the launcher started in (pid_namespace)
        self.no_userns_why = ""  # why root's kernel has no user namespace of its own (pid_namespace layer)
        self.pids_limited = False  # the kernel's own cgroup has pids.max (cgroup layer)
        self.subordinate_plan = None  # user_namespace.host_uid: subordinate (layers.subuid.Plan, pid_namespace)
        self.memfd_noexec = False  # vm.memfd_noexec=2 is in force (pid_namespace layer)
        self.jupyter_parent_fd: int | None = None  # pidfd of the Jupyter process (launcher, at its start)
        self.listen_channel = None  # socket to the supervisor, which decides listen() (pid_namespace layer)
        # what the kernel may write for the audit trail: the FIFO to its supervisor (which writes
        # audit.log), or audit.log itself where no supervisor runs (pid_namespace layer; trail.py)
        self.audit_fifo: str | None = None
        self.audit_target: str | None = None
        self.private_tmp = False  # /tmp and /dev/shm are this kernel's own tmpfs (mount_namespace layer)
        self.mounted_readonly: list[str] = []  # set by the mount_namespace layer
        self.covered: list[str] = []  # paths the mount_namespace layer covered with this kernel's own view
        self.readonly_root = False  # every mount but the writable ones is read-only (mount_namespace layer)
        self.noexec: list[str] = []  # writable directories mounted noexec (mount_namespace layer)
        self.proc_hardened = False  # /proc/sys, /proc/sysrq-trigger, ... read-only (root)
        self.gpu_tools: list | None = None  # GPU tool paths judged by the environment layer (accelerators.tool_verdicts)
        self.handoff: dict = {}  # for the kernel, apart from the report (handoff_from_env): seccomp, environment
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
        if path.startswith("{system}"):
            return [d + path[len("{system}"):] for d in SYSTEM_EXEC_DIRS if os.path.exists(d)]
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
        return _dedupe([e for p in paths for e in self.expand(p)])

    def protected_paths(self, policy) -> list[str]:
        """Read-only even inside writable directories: what the next start trusts, and every
        directory programs may run from (W^X: no directory is both writable and executable)."""
        out = jupyter_path(self.env, "kernels")
        out += self.connection_dirs(policy)
        out += search_path(self.env)
        out += trusted_paths()
        if self.policy_cache:
            out.append(os.path.dirname(os.path.abspath(self.policy_cache)))
        if policy.audit_log:
            out.append(policy.audit_log)
        out += self.expand_paths(policy.data["filesystem"]["protected"])
        out += self.exec_dirs_in_writable(policy)
        out += self.startup_landmarks(policy)
        return _dedupe(out)

    def startup_landmarks(self, policy) -> list[str]:
        """Where the next start's interpreter would find a planted standard library, inside a
        writable directory: Python's start looks for ``lib/pythonXY.zip`` in every directory above
        its own before it finds its standard library (``zip_landmarks``), so a cell that wrote
        ``~/lib/python311.zip`` (pyenv or conda under the home) would run its code in the next
        launcher before any layer. Protected: the installation's tree where it lies in a writable
        directory (the pyenv or conda root), and each landmark outside it (the launcher creates an
        empty directory there, which no file can replace)."""
        writable = [os.path.realpath(w) for w in self.expand_paths(policy.data["filesystem"]["writable"])]
        roots = []
        for d in dict.fromkeys(os.path.realpath(p) for p in
                               (os.path.dirname(os.path.realpath(sys.executable)), sys.base_prefix)):
            for w in writable:
                if d != w and d.startswith(w.rstrip("/") + "/"):
                    top = d
                    while os.path.dirname(top) != w:
                        top = os.path.dirname(top)
                    roots.append(top)
        out = list(roots)
        for lm in zip_landmarks():
            inside = any(lm.startswith(w.rstrip("/") + "/") for w in writable)
            if inside and not any(lm.startswith(r + "/") for r in roots):
                out.append(lm)
        return _dedupe(out)

    def connection_dirs(self, policy) -> list[str]:
        """Directories holding kernels' connection files (Jupyter's runtime directory, and the one
        this kernel's file is in) that the kernel may see only its own file of: each, unless it is
        a directory the tenant writes anyway (or holds one), where nothing can be hidden."""
        candidates = [self.runtime_dir] + ([os.path.dirname(self.connection.path)] if self.connection else [])
        writable = [os.path.realpath(w) for w in self.expand_paths(policy.data["filesystem"]["writable"])]
        out = []
        for d in dict.fromkeys(os.path.realpath(c) for c in candidates):
            if d == "/" or any(w == d or w.startswith(d.rstrip("/") + "/") for w in writable + ["/tmp", "/dev/shm"]):
                continue
            out.append(d)
        return out

    def connection_dir_problem(self, policy, private_tmp: bool, ownership: bool = True) -> str | None:
        """Why the directory holding this kernel's connection file is not private to it (another
        kernel or account could read the HMAC key there, or replace the file or plant one that a
        later start reads), or None. Private: owned by this account or root and writable by no one
        else (a sticky directory such as /tmp: no one else can replace this account's files), no
        ancestor that others may rename it in, and not at or inside a directory the profile makes
        writable, except under the host's /tmp or /dev/shm when the kernel gets its own
        (`private_tmp`: the mount namespace covers them) and Jupyter's runtime directory inside one
        (the mount namespace covers it, or Landlock leaves it out, in every kernel that Jupyter
        server starts). Without `ownership`, owners and modes are not looked at (asked again
        inside the kernel's user namespace, where root's files belong to the overflow uid)."""
        if self.connection is None:
            return None
        d = os.path.realpath(os.path.dirname(self.connection.path))
        try:
            st = os.stat(d)
        except OSError as e:
            return f"cannot stat its directory {d} ({e.strerror})"
        me = os.geteuid()
        if not ownership:
            st = None
        if st is not None and st.st_uid not in (0, me):
            return (f"its directory {d} belongs to uid {st.st_uid}, who can replace the file or plant one that a "
                    f"later start reads")
        if st is not None and st.st_mode & 0o022 and not st.st_mode & 0o1000:
            by = "its group" if st.st_mode & 0o020 else "everyone"
            return (f"its directory {d} (mode {st.st_mode & 0o7777:o}) is writable by {by}: another account can "
                    f"replace the file or plant one that a later start reads")
        a = os.path.dirname(d)
        while st is not None:
            try:
                sa = os.stat(a)
            except OSError:
                break
            if sa.st_uid not in (0, me) or (sa.st_mode & 0o002 and not sa.st_mode & 0o1000):
                return (f"its directory {d} lies in {a} (uid {sa.st_uid}, mode {sa.st_mode & 0o7777:o}), where "
                        f"another account can rename it away and put its own in its place")
            if a == "/":
                break
            a = os.path.dirname(a)
        shared = [t for t in ("/tmp", "/dev/shm") if d == t or d.startswith(t + "/")]
        if shared and not private_tmp:
            return (f"its directory {d} is under {shared[0]}, which without a mount namespace this kernel shares "
                    f"with the host and the account's other kernels: they could read its key or plant a file")
        writable = [os.path.realpath(w) for w in self.expand_paths(policy.data["filesystem"]["writable"])]
        if private_tmp:  # {tmp} and /dev/shm are then the kernel's own tmpfs, not the host's (but a home or
            # working directory under the host's /tmp is the host's, brought back into that tmpfs)
            own = {"/tmp", "/dev/shm", os.path.realpath(self.tmp)}
            writable = [w for w in writable if w not in own]
        roots = [w for w in dict.fromkeys(writable) if d == w or d.startswith(w.rstrip("/") + "/")]
        if not roots:
            return None
        w = max(roots, key=len)
        if d != w and d == os.path.realpath(self.runtime_dir) and d in self.connection_dirs(policy):
            return None
        where = "is" if d == w else f"lies inside {w}, which is"
        return (f"its directory {d} {where} writable by the tenant (filesystem.writable): a kernel that writes "
                f"there could read this kernel's key or plant a connection file that a later start reads")

    def readable_paths(self, policy) -> list[str]:
        """What Landlock lets the tenant read: filesystem.readable, plus what the kernel itself
        must read (the protected paths: kernelspecs, profiles, this package, the guard hook, the
        policy cache); writable and exec.allow directories are granted with their own rights, and
        the resolver files (read_kept) file by file, even inside a hidden directory."""
        out = self.expand_paths(policy.data["filesystem"]["readable"])
        out += self.protected_paths(policy)
        if self.audit_fifo and policy.audit_log:  # the supervisor writes the trail: the kernel reads none of it
            out = [p for p in out if p != policy.audit_log]
        return _dedupe(out)

    def read_kept(self) -> list[str]:
        """READ_KEPT as the real files they name."""
        return list(dict.fromkeys(os.path.realpath(p) for p in READ_KEPT if os.path.exists(p)))

    def exec_dirs_in_writable(self, policy) -> list[str]:
        """exec.allow directories that lie strictly inside a writable directory: these become
        read-only (a directory equal to a writable one stays writable; with noexec_writable it
        runs nothing)."""
        writable = [os.path.realpath(w) for w in self.expand_paths(policy.data["filesystem"]["writable"])]
        out = []
        for d in self.expand_paths(policy.data["exec"]["allow"]):
            r = os.path.realpath(d)
            if any(r != w and r.startswith(w.rstrip("/") + "/") for w in writable):
                out.append(r)
        return out


CONNECTION_DIR_FIX = ("Keep connection files in Jupyter's runtime directory (the default; JUPYTER_RUNTIME_DIR) or "
                      "another directory that only this account can write and the profile does not make writable")


def check_connection_dir(ctx: "LaunchContext", policy, private_tmp: bool, ownership: bool = True) -> None:
    """The directory holding the connection file is private to this kernel, or start-up stops
    here (see LaunchContext.connection_dir_problem). The mount_namespace layer asks again with
    `private_tmp` False where it could not give the kernel its own /tmp (owners and modes were
    checked by the launcher, outside any user namespace)."""
    why = ctx.connection_dir_problem(policy, private_tmp, ownership)
    if why:
        from ..errors import SandboxError

        e = SandboxError(f"connection file {ctx.connection.path}: {why}; refusing to start. {CONNECTION_DIR_FIX}")
        e.no_refusal_kernel = True  # its key may be known where the tenant writes: nothing is served on its ports
        raise e


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


def env_paths() -> list[str]:
    """{env}: the Python environment's directories (its prefix, its base interpreter's prefix,
    their real paths), where the standard library and site-packages live, and the directories
    that site-packages' .pth files put on sys.path (an editable install's checkout: where this
    package is imported from). Never "/". Computed once per process (the mount and Landlock
    layers both ask; the answer depends only on this interpreter)."""
    global _ENV_PATHS
    if _ENV_PATHS is None:
        _ENV_PATHS = _env_paths()
    return list(_ENV_PATHS)


_ENV_PATHS: list[str] | None = None


def _env_paths() -> list[str]:
    out = []
    for p in (sys.prefix, sys.exec_prefix, sys.base_prefix, sys.base_exec_prefix):
        out += [p, os.path.realpath(p)]
    for sp in site_dirs():
        out += [sp] + pth_dirs(sp)
    return _dedupe([p for p in out if p and p != "/"])


def zip_landmarks() -> list[str]:
    """Every ``lib/pythonXY.zip`` that Python's start (getpath's prefix search, on POSIX) looks
    for, in every directory from the interpreter's own (the base interpreter's ``bin`` for a
    venv, and its library's directory) up to /: the first one found becomes sys.prefix and its
    zip the standard library, before the real one is looked for."""
    name = f"python{sys.version_info[0]}{sys.version_info[1]}.zip"
    lib = getattr(sys, "platlibdir", "lib") or "lib"
    base = os.path.realpath(sys.base_prefix)
    out = []
    for start in dict.fromkeys([os.path.dirname(os.path.realpath(sys.executable)), os.path.join(base, "bin"),
                                os.path.join(base, lib)]):
        d = start
        while True:
            out.append(os.path.join(d, lib, name))
            if d == "/":
                break
            d = os.path.dirname(d)
    return _dedupe(out)


def site_dirs() -> list[str]:
    """The environment's site-packages directories, as its `site` module names them (a
    distribution's patched `site` knows its dist-packages layout). The launcher runs with -S:
    importing `site` then changes nothing (site.main() is not called)."""
    import site

    return [d for d in site.getsitepackages() if os.path.isdir(d)]


def pth_dirs(site_packages: str) -> list[str]:
    """The directories that `site` adds to sys.path from the .pth files in `site_packages` (path
    lines only: lines starting with `import` run code and add nothing by themselves)."""
    out = []
    try:
        names = sorted(n for n in os.listdir(site_packages) if n.endswith(".pth"))
    except OSError:
        return out
    for name in names:
        try:
            with open(os.path.join(site_packages, name), encoding="utf-8", errors="replace") as fh:
                lines = fh.read().splitlines()
        except OSError:
            continue
        for line in lines:
            line = line.strip()
            if line and not line.startswith(("#", "import ", "import\t")):
                d = os.path.realpath(os.path.join(site_packages, line))
                if os.path.isdir(d):
                    out.append(d)
    return out


def is_interpreter_name(name: str) -> bool:
    """python, python3, python3.11 (and a d/m/t build suffix); not python3-config or pythonw.
    (Written without re: the launcher's start-up imports as little as it can.)"""
    if not name.startswith("python"):
        return False
    rest = name[len("python"):]
    if rest[-1:] in ("d", "m", "t"):
        rest = rest[:-1]
    if not rest:
        return True
    major, dot, minor = rest.partition(".")
    return major.isascii() and major.isdigit() and (not dot or (minor.isascii() and minor.isdigit()))


def _interpreter_files(bin_dir: str) -> list[str]:
    """The interpreter entries of `bin_dir` (python, python3, python3.11: not python3-config, a
    shell script, nor any other program there), as the real files they resolve to."""
    try:
        names = sorted(os.listdir(bin_dir))
    except OSError:
        return []
    out = []
    for n in names:
        if is_interpreter_name(n):
            real = os.path.realpath(os.path.join(bin_dir, n))
            if os.path.isfile(real) and os.access(real, os.X_OK):
                out.append(real)
    return out


def environment_bin() -> str | None:
    """The virtual environment's own bin directory, when this interpreter runs in one (sys.prefix
    holds pyvenv.cfg) and that directory is not one other programs share: a venv's bin holds its
    interpreter links and the console scripts installed into it, nothing else. None for a base
    installation (/usr, a conda or pyenv prefix), whose bin directory other programs share."""
    if os.path.realpath(sys.prefix) == os.path.realpath(sys.base_prefix):
        return None
    if not os.path.isfile(os.path.join(sys.prefix, "pyvenv.cfg")):
        return None
    d = os.path.realpath(os.path.join(sys.prefix, "bin"))
    shared = {os.path.realpath(x) for x in PROGRAM_DIRS + SYSTEM_EXEC_DIRS}
    shared.add(os.path.realpath(os.path.join(sys.base_prefix, "bin")))
    if d in shared or not os.path.isdir(d):
        return None
    return d


def python_paths() -> list[str]:
    """{python}: the interpreter, not its directory.

    - the interpreter file: sys.executable (and the base interpreter a venv was made from) as
      the real file it resolves to: a venv's bin/python -> /usr/bin/python3 -> python3.11
      grants /usr/bin/python3.11 alone, never /usr/bin;
    - in a virtual environment, the python* entries of its bin and the real files they resolve
      to, and that bin directory itself (``environment_bin``: the environment's own, holding its
      interpreter links and console scripts); never a directory other programs share (/usr/bin,
      /usr/local/bin, a conda or pyenv prefix's bin);
    - the ELF loader (the kernel runs it for every dynamic program, the interpreter included;
      what it may map is what the mount namespace leaves executable).
    """
    exe = sys.executable
    out = [os.path.realpath(exe)]
    base_exe = getattr(sys, "_base_executable", None)
    if base_exe and os.path.isfile(base_exe):
        out.append(os.path.realpath(base_exe))
    env_bin = environment_bin()
    if env_bin:
        for d in (os.path.dirname(exe), os.path.join(sys.prefix, "bin")):
            if os.path.realpath(d) == env_bin:
                out += _interpreter_files(d)
    out += [os.path.realpath(p) for p in ELF_LOADERS if os.path.exists(p)]
    if env_bin:
        out.append(env_bin)
    return _dedupe(out)


def python_program_dirs() -> list[str]:
    """Directories that hold a {python} interpreter file but are not granted whole: other programs
    there (a conda prefix's bash or curl) must not be mapped by the ELF loader either, so the mount
    namespace mounts them noexec like PROGRAM_DIRS (binding the interpreter files back)."""
    env_bin = environment_bin()
    out = []
    for p in python_paths():
        if p == env_bin or p in (os.path.realpath(x) for x in ELF_LOADERS if os.path.exists(x)):
            continue
        d = os.path.dirname(p)
        if d != env_bin:
            out.append(d)
    return _dedupe(out)


def stdlib_dir() -> str:
    return os.path.dirname(os.__file__)


def trusted_paths() -> list[str]:
    """What the trusted start runs or reads, and what the kernel maps as code: the
    interpreter (and its real path), the environment (sys.prefix: pyvenv.cfg, bin,
    site-packages with its extension modules) and the base installation (the standard
    library, lib-dynload, libpython), this package and the child-process guard hook.
    Inside the sandbox each is read-only wherever it lies in a writable directory (and so
    keeps exec: W^X)."""
    exe = sys.executable
    real = os.path.realpath(exe)
    out = [exe, real, os.path.dirname(real), sys.prefix, sys.base_prefix, stdlib_dir(),
           resources.PACKAGE_DIR, resources.guard_hook_path()]
    for d in (sys.prefix, os.path.dirname(os.path.dirname(exe))):
        cfg = os.path.join(d, "pyvenv.cfg")
        if os.path.exists(cfg):
            out.append(cfg)
    return _dedupe(out)


# Jupyter's directories, as jupyter_core.paths computes them on Linux. Written out with the
# standard library because the launcher runs before confinement and must not import
# third-party code (jupyter_core, platformdirs) from a place the tenant may write.

def jupyter_data_dir(env) -> str:
    if env.get("JUPYTER_DATA_DIR"):
        return env["JUPYTER_DATA_DIR"]
    home = env.get("HOME") or os.path.expanduser("~")
    return os.path.join(env.get("XDG_DATA_HOME") or os.path.join(home, ".local", "share"), "jupyter")


def jupyter_runtime_dir(env) -> str:
    return env.get("JUPYTER_RUNTIME_DIR") or os.path.join(jupyter_data_dir(env), "runtime")


def jupyter_path(env, *subdirs: str) -> list[str]:
    """Every directory jupyter_core.paths.jupyter_path may search (order does not matter here)."""
    paths = [p.rstrip(os.sep) for p in env.get("JUPYTER_PATH", "").split(os.pathsep) if p]
    home = env.get("HOME") or os.path.expanduser("~")
    paths.append(jupyter_data_dir(env))
    paths.append(os.path.join(env.get("PYTHONUSERBASE") or os.path.join(home, ".local"), "share", "jupyter"))
    paths.append(os.path.join(sys.prefix, "share", "jupyter"))
    paths += ["/usr/local/share/jupyter", "/usr/share/jupyter"]
    return _dedupe([os.path.join(p, *subdirs) for p in paths])


def _dedupe(items):
    seen, out = set(), []
    for i in items:
        if i not in seen:
            seen.add(i)
            out.append(i)
    return out
