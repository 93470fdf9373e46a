"""no_new_privs: execve can never grant privileges again (setuid bits, file capabilities).

Enforcement: hard, irreversible, inherited. Also what lets an unprivileged process
install seccomp filters and Landlock rulesets.
"""

from __future__ import annotations

import ctypes
import os

from .base import level_or_off, simulated_missing

NAME = "no_new_privs"
PR_SET_NO_NEW_PRIVS, PR_GET_NO_NEW_PRIVS = 38, 39
_libc = ctypes.CDLL(None, use_errno=True)


def is_set() -> bool:
    return _libc.prctl(PR_GET_NO_NEW_PRIVS, 0, 0, 0, 0) == 1


def apply(policy, ctx, status) -> None:
    level = level_or_off(policy, NAME, status)
    if level is None:
        return
    if simulated_missing(NAME) or _libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 or not is_set():
        why = "prctl(PR_SET_NO_NEW_PRIVS) failed" + (f": {os.strerror(ctypes.get_errno())}" if ctypes.get_errno() else "")
        status.cannot(NAME, level, why)
        return
    status.active(NAME, "set; execve cannot gain privileges")
