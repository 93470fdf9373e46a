"""cgroup: one control group per kernel, with pids.max and a memory limit.

Enforcement: hard, and for the whole process tree of the kernel (rlimits are per
process). It is *needed* when the kernel runs as root with ``limits.processes``,
because RLIMIT_NPROC does not bind root: a root fork bomb is stopped only here.
Otherwise it is applied where the launcher may create cgroups (root, or a
delegated subtree) and reported "not needed" where it may not.

The group is created beside the launcher's current group (cgroup v2: a sibling,
which respects the no-internal-processes rule; cgroup v1: a child in the pids and
memory hierarchies). /sys is read-only under Landlock, so user code cannot raise
the limits. Empty groups left by earlier kernels are removed at each start.
"""

from __future__ import annotations

import os
import time

from ..errors import LayerUnavailable
from .base import level_or_off
from ..policy import parse_size
from .base import simulated_missing

NAME = "cgroup"
ROOT = "/sys/fs/cgroup"
PREFIX = "sandbox-kernel-"


def _own_paths() -> dict[str, str]:
    """controller (or '' for v2) -> path of this process's group, from /proc/self/cgroup."""
    out = {}
    with open("/proc/self/cgroup") as fh:
        for line in fh:
            _, controllers, path = line.rstrip("\n").split(":", 2)
            for c in (controllers.split(",") if controllers else [""]):
                out[c] = path
    return out


def _targets(limits: dict) -> list[tuple[str, dict[str, str]]]:
    """(directory under which to create our group, {file: value}) per hierarchy."""
    own = _own_paths()
    settings_v2, settings_pids, settings_mem = {}, {}, {}
    if limits.get("processes"):
        settings_v2["pids.max"] = settings_pids["pids.max"] = str(limits["processes"])
    if limits.get("memory"):
        mem = str(parse_size(limits["memory"]))
        settings_v2["memory.max"] = mem
        settings_v2["memory.swap.max"] = "0"
        settings_mem["memory.limit_in_bytes"] = mem
    if os.path.exists(os.path.join(ROOT, "cgroup.controllers")):  # unified (v2)
        own_v2 = own.get("", "/")
        parent = ROOT if own_v2 == "/" else os.path.dirname(os.path.join(ROOT, own_v2.strip("/")))
        return [(parent, settings_v2)]
    out = []
    if settings_pids and "pids" in own:
        out.append((os.path.join(ROOT, "pids", own["pids"].lstrip("/")), settings_pids))
    if settings_mem and "memory" in own:
        out.append((os.path.join(ROOT, "memory", own["memory"].lstrip("/")), settings_mem))
    return out


def _sweep(parent: str) -> None:
    """Remove empty groups of earlier kernels."""
    try:
        names = [n for n in os.listdir(parent) if n.startswith(PREFIX)]
    except OSError:
        return
    for n in names:
        try:
            os.rmdir(os.path.join(parent, n))  # fails (EBUSY) while processes are in it
        except OSError:
            pass


def _create(parent: str, settings: dict[str, str], name: str) -> str:
    _sweep(parent)
    group = os.path.join(parent, name)
    os.mkdir(group, 0o755)
    try:
        for file, value in settings.items():
            path = os.path.join(group, file)
            if file == "memory.swap.max" and not os.path.exists(path):
                continue
            with open(path, "w") as fh:
                fh.write(value)
        with open(os.path.join(group, "cgroup.procs"), "w") as fh:
            fh.write(str(os.getpid()))
    except OSError:
        try:
            os.rmdir(group)
        except OSError:
            pass
        raise
    return group


def needed(policy) -> bool:
    return os.getuid() == 0 and bool(policy.limits.get("processes"))


def apply(policy, ctx, status) -> None:
    level = level_or_off(policy, NAME, status)
    if level is None:
        return
    must = needed(policy) and level == "required"
    targets = [t for t in _targets(policy.limits) if t[1]] if not simulated_missing(NAME) else []
    if not policy.limits.get("processes") and not policy.limits.get("memory"):
        status.not_needed(NAME, "the profile sets no process or memory limit")
        return
    name = f"{PREFIX}{ctx.kernel_id or os.getpid()}-{int(time.time())}"
    groups, errors = [], []
    for parent, settings in targets:
        try:
            groups.append(_create(parent, settings, name))
        except OSError as e:
            errors.append(f"{parent}: {e.strerror}")
    ctx.cgroups = list(groups)
    if groups and not errors:
        status.active(NAME, "groups " + ", ".join(groups), groups=groups)
        return
    why = ("; ".join(errors) if errors else
           "no writable pids/memory cgroup hierarchy (cgroup v2 delegation or root is needed)")
    if must:
        raise LayerUnavailable(NAME, why + "; as root, RLIMIT_NPROC does not limit processes, so a cgroup must")
    if needed(policy):
        status.unavailable(NAME, why + "; a root fork bomb is NOT limited")
    elif groups:
        status.partial(NAME, "groups " + ", ".join(groups) + "; failed: " + why, groups=groups)
    else:
        status.not_needed(NAME, why + "; RLIMIT_NPROC and RLIMIT_DATA apply (not root)")
