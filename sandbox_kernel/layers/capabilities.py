"""Capabilities: root keeps only what a notebook needs (a subset of Docker's defaults).

Enforcement: hard. The bounding set is reduced, so no later execve (root's included)
can regain a dropped capability; the current sets are reduced with capset(2).
Dropping CAP_SYS_RESOURCE is what keeps root from raising its rlimits again;
CAP_SYS_ADMIN, CAP_NET_ADMIN, CAP_SYS_PTRACE, CAP_SYS_MODULE, CAP_NET_RAW and
CAP_MKNOD go too. A process without capabilities (an ordinary user) has nothing
to drop.
"""

from __future__ import annotations

import ctypes
import os

from .base import level_or_off, simulated_missing

NAME = "capabilities"
PR_CAPBSET_READ, PR_CAPBSET_DROP = 23, 24
PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL = 47, 4
LINUX_CAPABILITY_VERSION_3 = 0x20080522
# CHOWN, DAC_OVERRIDE, FOWNER, FSETID, KILL, SETGID, SETUID, NET_BIND_SERVICE
KEEP = {0: "CAP_CHOWN", 1: "CAP_DAC_OVERRIDE", 3: "CAP_FOWNER", 4: "CAP_FSETID", 5: "CAP_KILL",
        6: "CAP_SETGID", 7: "CAP_SETUID", 10: "CAP_NET_BIND_SERVICE"}

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


def keep_mask() -> int:
    return sum(1 << c for c in KEEP)


def apply(policy, ctx, status) -> None:
    level = level_or_off(policy, NAME, status)
    if level is None:
        return
    sets = current_sets()
    if not any(sets.get(k) for k in ("CapPrm", "CapEff", "CapInh", "CapAmb")) and os.getuid() != 0:
        status.active(NAME, "the process holds no capabilities")
        return
    try:
        if simulated_missing(NAME):
            raise OSError(0, "capability changes are not available (simulated)")
        _libc.prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0)
        for cap in range(last_cap() + 1):
            if cap not in KEEP and _libc.prctl(PR_CAPBSET_READ, cap, 0, 0, 0) == 1:
                if _libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
                    e = ctypes.get_errno()
                    raise OSError(e, f"dropping capability {cap} from the bounding set: {os.strerror(e)}")
        hdr = _Header(LINUX_CAPABILITY_VERSION_3, 0)
        data = (_Data * 2)()
        if _libc.capget(ctypes.byref(hdr), data) != 0:
            raise OSError(ctypes.get_errno(), "capget failed")
        mask = keep_mask()
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
    status.active(NAME, "bounding set and current sets reduced to " + ", ".join(KEEP.values()))
