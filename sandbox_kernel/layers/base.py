"""What every layer shares: the launch context and the status report.

A layer is a module with ``NAME`` and ``apply(policy, ctx, status)``. ``apply``
either enforces its rules and reports ``active``/``partial``, reports ``off`` when
the profile turns it off explicitly, or, when the machine cannot give it, raises
``LayerUnavailable`` (enforcement ``required``, the default) or reports
``unavailable`` (enforcement ``best-effort``). Nothing fails open silently.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import sys

from .. import resources
from ..errors import LayerUnavailable
from ..policy import search_path

SIMULATE_ENV = "SANDBOX_KERNEL_SIMULATE_MISSING"
STATUS_ENV = "SANDBOX_KERNEL_LAYERS"

# hard: enforced by the OS kernel, inherited by children, not removable from user code.
HARDNESS = {
    "import_guard": "soft", "environment": "soft", "no_new_privs": "hard", "capabilities": "hard",
    "rlimits": "hard", "cgroup": "hard", "mount_namespace": "hard", "landlock": "hard", "seccomp": "hard",
}

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
        return json.dumps(self.layers, separators=(",", ":"), sort_keys=True)

    @classmethod
    def from_env(cls, env=None) -> "Status | None":
        text = (os.environ if env is None else env).get(STATUS_ENV)
        return cls(json.loads(text)) if text else None


class LaunchContext:
    """Facts about this launch that a profile's placeholders and rules refer to.

    (A plain class: importing dataclasses costs the launcher ~5 ms at every kernel start.)
    """

    def __init__(self, env: dict[str, str], command: list[str] | None = None):
        self.env = env
        self.command = list(command or [])
        self.kernel_ports: list[int] = []  # from the connection file
        self.ipc_dir: str | None = None  # where ipc-transport sockets are bound
        self.kernel_id = ""
        self.transport = "tcp"
        self.memfd_noexec = False  # vm.memfd_noexec=2 is in force (pid_namespace layer)
        self.mounted_readonly: list[str] = []  # set by the mount_namespace layer
        self.proc_hardened = False  # /proc/sys, /proc/sysrq-trigger, ... read-only (root)

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
        return self.env.get("TMPDIR") or "/tmp"

    def python_paths(self) -> list[str]:
        """{python}: this environment's bin, its interpreter's real dir, the ELF loader."""
        exe = sys.executable
        out = [os.path.dirname(exe), os.path.dirname(os.path.realpath(exe)),
               os.path.join(sys.prefix, "bin"), os.path.join(sys.base_prefix, "bin")]
        if self.command:
            cmd = shutil.which(self.command[0], path=self.env.get("PATH")) or self.command[0]
            out += [os.path.dirname(os.path.abspath(cmd)), os.path.dirname(os.path.realpath(cmd))]
        out += [os.path.realpath(p) for p in ELF_LOADERS if os.path.exists(p)]
        return _dedupe(out)

    def expand(self, path: str) -> list[str]:
        if path.startswith("{system}"):
            return [d + path[len("{system}"):] for d in SYSTEM_EXEC_DIRS if os.path.exists(d)]
        if path.startswith("{python}"):
            return [d + path[len("{python}"):] for d in self.python_paths()]
        for name in ("home", "cwd", "tmp"):
            tag = "{" + name + "}"
            if path.startswith(tag):
                return [getattr(self, name) + path[len(tag):]]
        return [path]

    def expand_paths(self, paths: list[str]) -> list[str]:
        return _dedupe([e for p in paths for e in self.expand(p)])

    def protected_paths(self, policy) -> list[str]:
        """Read-only even inside writable directories: what the next start trusts."""
        from jupyter_core.paths import jupyter_path

        out = list(jupyter_path("kernels"))
        out += [str(d) for d in search_path(self.env)]
        out.append(str(resources.PACKAGE_DIR))
        out.append(str(resources.guard_hook_path()))
        if policy.audit_log:
            out.append(policy.audit_log)
        out += self.expand_paths(policy.data["filesystem"]["protected"])
        return _dedupe(out)


def _dedupe(items):
    seen, out = set(), []
    for i in items:
        if i not in seen:
            seen.add(i)
            out.append(i)
    return out
