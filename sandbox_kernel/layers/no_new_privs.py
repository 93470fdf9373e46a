"""no_new_privs: execve can never grant privileges again (setuid bits, file capabilities).

Enforcement: hard, irreversible, inherited. Also what lets an unprivileged process
install seccomp filters and Landlock rulesets.
"""

from __future__ import annotations

import ctypes
import os

from .status import level_or_off, simulated_missing

NAME = "no_new_privs"
# What this layer is (the facts every layer declares; layers/registry.py derives every list from them)
HARD = True  # enforced by the OS kernel (True) or by in-process hooks (False)
CONFIGURABLE = True  # the profile's enforcement.no_new_privs can make it best-effort or off
CHECKED_BY_KERNEL = True  # the kernel refuses to run without the launcher's report of it
# HINT: what makes the layer available, for doctor (None: its refusal says)
HINT = "run on Linux 3.5+ (prctl PR_SET_NO_NEW_PRIVS)"
DESCRIPTION = "execve can never grant privileges again (set-id bits, file capabilities)"
# DEFAULT: its enforcement level where a profile names none (None: not configurable)
DEFAULT = "required"
# README: what README.md's list of layers says of it (generated there: python -m sandbox_kernel.layer_doc --write)
README = ""
NEEDS = ()  # the earlier layers whose results apply() reads (given[NAME])
RESULT = None  # the class of what apply() returns for later layers (None: nothing)
PR_SET_NO_NEW_PRIVS, PR_GET_NO_NEW_PRIVS = 38, 39
_libc = ctypes.CDLL(None, use_errno=True)


def plan(policy, host=None) -> list[tuple[int, int]]:
    """The prctl calls `policy` makes (pure): PR_SET_NO_NEW_PRIVS 1, unless enforcement.no_new_privs
    is off. Nothing about the host changes it (`host` is unused: Linux 3.5+ has the call)."""
    return [] if policy.enforcement(NAME) == "off" else [(PR_SET_NO_NEW_PRIVS, 1)]


def is_set() -> bool:
    return _libc.prctl(PR_GET_NO_NEW_PRIVS, 0, 0, 0, 0) == 1


def prepare(policy, ctx) -> None:
    """Nothing to do before any layer narrows the process."""


def apply(policy, ctx, status, given) -> None:
    level = level_or_off(policy, NAME, status)
    if level is None:
        return
    calls = plan(policy)
    if simulated_missing(NAME) or any(_libc.prctl(op, arg, 0, 0, 0) != 0 for op, arg in calls) or not is_set():
        why = "prctl(PR_SET_NO_NEW_PRIVS) failed" + (f": {os.strerror(ctypes.get_errno())}" if ctypes.get_errno() else "")
        status.cannot(NAME, level, why)
        return
    status.active(NAME, "set; execve cannot gain privileges")
