"""Trusted start: nothing the tenant can write runs or is read before confinement.

Enforcement: hard, in two parts.

- Outside the sandbox (DAC): every file the launcher has executed or read so far (the
  interpreter, ``pyvenv.cfg``, each imported module and its cached bytecode, this
  package, the guard hook, the policy cache and the profile directories) and every
  directory above it must not be writable by a non-root tenant uid: such a uid could
  plant code there from an unconfined process (its Jupyter server, a terminal) that
  the next start would run unconfined. The launcher refuses to start naming the file.
  For root, ordinary permissions mean nothing: the sandbox's view is what counts.
- Inside the sandbox: the same paths are protected (``LaunchContext.protected_paths``):
  where one lies inside a writable directory, the mount namespace makes it a read-only
  mount, or Landlock leaves it out of the writable grant.

What makes the launch path small enough to check: ``boot.py`` runs with ``python -I
-S`` (no ``site``, no ``.pth``, no ``sitecustomize``) and imports only the standard
library and this package; see docs/architecture.md.
"""

from __future__ import annotations

import os
import stat
import sys

from .. import init_helper, resources
from ..errors import LayerUnavailable
from ..identity import is_root
from ..profile_files import search_path
from .python_files import trusted_paths
from .status import simulated_missing

NAME = "trusted_start"
# What this layer is (the facts every layer declares; layers/registry.py derives every list from them)
HARD = True  # enforced by the OS kernel (True) or by in-process hooks (False)
CONFIGURABLE = False  # the profile's enforcement.trusted_start can make it best-effort or off
CHECKED_BY_KERNEL = False  # the kernel refuses to run without the launcher's report of it
# HINT: what makes the layer available, for doctor (None: its refusal says)
HINT = None
DESCRIPTION = ("nothing the tenant can write is run or read before the layers apply (the interpreter, the "
               "environment, this package, the policy cache, the profiles)")
# DEFAULT: its enforcement level where a profile names none (None: not configurable)
DEFAULT = None
# README: what README.md's list of layers says of it (generated there: python -m sandbox_kernel.layer_doc --write)
README = ("the launch path above; every file it ran or read (the interpreter, `pyvenv.cfg`, each imported "
          "module, the package, the guard hook, the policy cache, the profiles) must not be writable by a "
          "non-root tenant uid, or start-up stops naming the file. The environment, the base installation and "
          "every `exec.allow` directory that lies inside a writable directory become protected (read-only) "
          "paths.")
NEEDS = ()  # the earlier layers whose results apply() reads (given[NAME])
RESULT = None  # the class of what apply() returns for later layers (None: nothing)


def _ancestors(path: str) -> list[str]:
    out = []
    p = os.path.dirname(path)
    while True:
        out.append(p)
        if p == "/":
            return out
        p = os.path.dirname(p)


class DacCheck:
    """Whether a uid (not root) could change a path by ordinary permissions."""

    def __init__(self, uid: int, gids: set[int]):
        self.uid, self.gids = uid, gids
        self._dirs: dict[str, str | None] = {}

    def _writable(self, st: os.stat_result) -> bool:
        if st.st_uid == self.uid:
            return True  # the owner can always chmod it writable
        if st.st_gid in self.gids and st.st_mode & stat.S_IWGRP:
            return True
        return bool(st.st_mode & stat.S_IWOTH)

    def why(self, path: str) -> str | None:
        """Why `path` (or a directory above it, or its real path) is changeable by the uid, or None."""
        for p in dict.fromkeys([os.path.abspath(path), os.path.realpath(path)]):
            try:
                st = os.lstat(p)
            except OSError:
                continue
            if self._writable(st) and not stat.S_ISLNK(st.st_mode):
                return (f"{p} is writable by uid {self.uid}" if st.st_uid != self.uid else
                        f"{p} is writable by uid {self.uid} (its owner)")
            # (a symbolic link cannot be changed, only replaced through its directory: checked below)
            child = p
            for d in _ancestors(p):
                why = self._dir_why(d, child)
                if why:
                    return why
                child = d
        return None

    def _dir_why(self, d: str, child: str) -> str | None:
        key = d + "\0" + child
        if key not in self._dirs:
            self._dirs[key] = None
            try:
                st = os.stat(d)
            except OSError:
                return None
            if self._writable(st):
                # A sticky directory (/tmp) lets the uid replace only entries it owns.
                sticky_ok = False
                if st.st_mode & stat.S_ISVTX and st.st_uid != self.uid:
                    try:
                        sticky_ok = os.lstat(child).st_uid != self.uid
                    except OSError:
                        sticky_ok = False
                if not sticky_ok:
                    self._dirs[key] = f"{d} (a directory above {child}) is writable by uid {self.uid}"
        return self._dirs[key]


def launch_files(ctx) -> list[str]:
    """Every file the launch path has run or read, and those it will read before confining."""
    out = list(trusted_paths())
    for m in list(sys.modules.values()):
        for attr in ("__file__", "__cached__"):
            f = getattr(m, attr, None)
            if isinstance(f, str) and os.path.exists(f):
                out.append(f)
    if ctx.policy_cache:
        out.append(ctx.policy_cache)
        helper = init_helper.beside(ctx.policy_cache)  # the namespace's init execs it (supervisor.fork_chain)
        if helper:
            out.append(helper)
    out += [d for d in search_path(ctx.env) if os.path.isdir(d)]
    lib = ctx.env.get("SANDBOX_KERNEL_LIBSECCOMP")
    if lib and os.path.isabs(lib):
        out.append(lib)
    return list(dict.fromkeys(out))


def check(paths: list[str], uid: int | None = None) -> list[str]:
    """The reasons why a non-root uid could change any of `paths` (empty: trusted)."""
    uid = os.getuid() if uid is None else uid
    if uid == 0:
        return []
    dac = DacCheck(uid, set(os.getgroups()) | {os.getgid()})
    return [w for w in (dac.why(p) for p in paths) if w]


def prepare(policy, ctx) -> None:
    """Nothing to do before any layer narrows the process."""


def apply(policy, ctx, status, given) -> None:
    files = launch_files(ctx)
    problems = check(files)
    if simulated_missing(NAME):
        problems = [f"{resources.PACKAGE_DIR} is writable by the tenant (simulated)"]
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise LayerUnavailable(NAME, (
            f"{problems[0]}{more}: the launcher runs and reads these files before any layer applies, so the "
            f"tenant could make the next start run its code unconfined. Install the kernel's Python environment, "
            f"this package and the kernelspecs where uid {os.getuid()} cannot write (e.g. root-owned, "
            f"`chown -R root: {sys.prefix}`)"), optional=False)
    where = "the mount namespace or Landlock" if policy.enforcement("landlock") != "off" else "nothing (landlock is off)"
    detail = (f"launcher ran with `python -I -S` (no site, .pth or sitecustomize); {len(files)} files "
              f"checked" + ("" if is_root() else f", none writable by uid {os.getuid()}")
              + f"; kept read-only inside the sandbox by {where}")
    if policy.enforcement("landlock") == "off":
        status.partial(NAME, detail)
    else:
        status.active(NAME, detail)
