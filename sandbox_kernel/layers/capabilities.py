"""Capabilities: a root tenant is not host root.

Enforcement: hard. The bounding set is reduced, so no later execve (root's included)
can regain a dropped capability; the current sets are reduced with capset(2).
What stays is ``capabilities.keep`` of the profile (data, each with the platform's
reason; shown by ``profiles show`` and ``%sandbox``): by default nothing. So a root
tenant owns its own files and nothing else: without CAP_CHOWN, CAP_DAC_OVERRIDE,
CAP_FOWNER and CAP_FSETID it can neither chown, chmod, utime or read another account's
file, nor (without CAP_SETUID, CAP_SETGID) become another uid. The capabilities that
other layers rely on are never kept, whatever the profile says: CAP_SYS_RESOURCE
(rlimits could be raised again), CAP_SYS_ADMIN (mounts), CAP_NET_ADMIN, CAP_NET_RAW,
CAP_SYS_PTRACE, CAP_SYS_MODULE, CAP_MKNOD, CAP_SETFCAP (file capabilities),
CAP_DAC_READ_SEARCH (open_by_handle_at), CAP_SYS_CHROOT and the rest. An ordinary
user's kernel holds capabilities only inside its own user namespace (over its own
files); they are dropped the same way.
"""

from __future__ import annotations

import ctypes
import os

from ..identity import is_root
from .status import level_or_off, simulated_missing

NAME = "capabilities"
# What this layer is (the facts every layer declares; layers/registry.py derives every list from them)
HARD = True  # enforced by the OS kernel (True) or by in-process hooks (False)
CONFIGURABLE = True  # the profile's enforcement.capabilities can make it best-effort or off
CHECKED_BY_KERNEL = True  # the kernel refuses to run without the launcher's report of it
# HINT: what makes the layer available, for doctor (None: its refusal says)
HINT = "let the launcher hold CAP_SETPCAP to reduce the bounding set (Docker grants it by default)"
DESCRIPTION = "a root tenant keeps only capabilities.keep; the bounding set is reduced so no exec regains the rest"
# DEFAULT: its enforcement level where a profile names none (None: not configurable)
DEFAULT = "required"
# README: what README.md's list of layers says of it (generated there: python -m sandbox_kernel.layer_doc --write)
README = ("a root tenant keeps only what `capabilities.keep` names, by default nothing: it owns its files and "
          "nothing else (no chown, no chmod or read of other accounts' files, no change of uid); the bounding "
          "set is reduced so no exec regains the rest.")
NEEDS = ()  # the earlier layers whose results apply() reads (given[NAME])
RESULT = None  # the class of what apply() returns for later layers (None: nothing)
PR_CAPBSET_READ, PR_CAPBSET_DROP = 23, 24
PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL = 47, 4
LINUX_CAPABILITY_VERSION_3 = 0x20080522
# The only capabilities a profile may keep (the schema's capabilities.keep names): a subset of
# Docker's defaults that no other layer relies on having dropped.
KEEPABLE = {0: "CAP_CHOWN", 1: "CAP_DAC_OVERRIDE", 3: "CAP_FOWNER", 4: "CAP_FSETID", 5: "CAP_KILL",
            6: "CAP_SETGID", 7: "CAP_SETUID", 10: "CAP_NET_BIND_SERVICE"}
NUMBER = {name: cap for cap, name in KEEPABLE.items()}

_libc = ctypes.CDLL(None, use_errno=True)


class _Header(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _Data(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]


def last_cap() -> int:
    try:
        return int(open("/proc/sys/kernel/cap_last_cap").read())
    except (OSError, ValueError):
        return 40


def current_sets() -> dict[str, int]:
    out = {}
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(("CapInh:", "CapPrm:", "CapEff:", "CapBnd:", "CapAmb:")):
                k, v = line.split(":")
                out[k] = int(v.strip(), 16)
    return out


def kept(policy) -> dict[int, str]:
    """{capability number: name} of what the profile keeps (unknown names never: the schema
    refuses them, and this refuses them again for hand-built policies)."""
    names = policy.data.get("capabilities", {}).get("keep", {})
    return {NUMBER[n]: n for n in names if n in NUMBER}


def keep_mask(keep: dict[int, str]) -> int:
    return sum(1 << c for c in keep)


class Host:
    """What the capabilities plan depends on besides the profile: this process's capability
    sets (current_sets), whether it runs as root and the highest capability number of the
    running kernel."""

    def __init__(self, sets: dict[str, int], root: bool, last: int):
        self.sets = sets
        self.root = root
        self.last = last


class Plan:
    """What apply will do: nothing where the process holds no capability and is not root
    (`needed` False); else drop every capability in `drop` from the bounding set (those it still
    holds), clear the ambient set, and reduce the current sets to `mask` (what `keep` names)."""

    def __init__(self, keep: dict[int, str], needed: bool, last: int):
        self.keep = keep
        self.mask = keep_mask(keep)
        self.needed = needed
        self.drop = [cap for cap in range(last + 1) if cap not in keep]


def plan(policy, host: Host) -> Plan:
    """The capabilities `policy` leaves a process on `host` (pure: reads nothing, changes nothing)."""
    holds = any(host.sets.get(k) for k in ("CapPrm", "CapEff", "CapInh", "CapAmb"))
    return Plan(kept(policy), holds or host.root, host.last)


def prepare(policy, ctx) -> None:
    """Nothing to do before any layer narrows the process."""


def apply(policy, ctx, status, given) -> None:
    level = level_or_off(policy, NAME, status)
    if level is None:
        return
    p = plan(policy, Host(current_sets(), is_root(), last_cap()))
    keep = p.keep
    if not p.needed:
        status.active(NAME, "the process holds no capabilities")
        return
    try:
        if simulated_missing(NAME):
            raise OSError(0, "capability changes are not available (simulated)")
        _libc.prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0)
        for cap in p.drop:
            if _libc.prctl(PR_CAPBSET_READ, cap, 0, 0, 0) == 1:
                if _libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
                    e = ctypes.get_errno()
                    raise OSError(e, f"dropping capability {cap} from the bounding set: {os.strerror(e)}")
        hdr = _Header(LINUX_CAPABILITY_VERSION_3, 0)
        data = (_Data * 2)()
        if _libc.capget(ctypes.byref(hdr), data) != 0:
            raise OSError(ctypes.get_errno(), "capget failed")
        mask = p.mask
        for i in range(2):
            m = (mask >> (32 * i)) & 0xFFFFFFFF
            data[i].effective &= m
            data[i].permitted &= m
            data[i].inheritable &= m
        if _libc.capset(ctypes.byref(hdr), data) != 0:
            raise OSError(ctypes.get_errno(), "capset failed")
    except OSError as e:
        why = e.strerror or str(e)
        status.cannot(NAME, level, why)
        return
    if keep:
        reasons = policy.data["capabilities"]["keep"]
        held = "; ".join(f"{n} ({reasons[n]})" for n in keep.values())
        status.active(NAME, f"bounding set and current sets reduced to what capabilities.keep names: {held}")
    else:
        status.active(NAME, "every capability dropped (bounding, effective, permitted, inheritable, ambient): "
                            "a root tenant owns its files and nothing else")
