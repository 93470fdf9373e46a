"""The floor of having any seccomp filter: ``python -I -S seccomp_floor.py CMD ARGS...``.

Sets no_new_privs, loads the smallest seccomp filter there is (one classic-BPF
instruction: ``RET ALLOW``, so every system call is allowed) and execs CMD; the
filter stays in force across exec. Every system call of CMD then pays the seccomp
entry (the kernel answers an allow-all filter from its per-filter bitmap cache)
and nothing else: the benchmark's ``floor`` variant runs plain ipykernel this way,
so that the syscall figures can show our filter against the cost of having any.

Standard library only (ctypes and the prctl(2) interface), so it works whatever
binding of libseccomp is installed, or none.
"""

from __future__ import annotations

import ctypes
import os
import sys

PR_SET_NO_NEW_PRIVS = 38
PR_SET_SECCOMP = 22
SECCOMP_MODE_FILTER = 2
BPF_RET, BPF_K = 0x06, 0x00
SECCOMP_RET_ALLOW = 0x7FFF0000


class SockFilter(ctypes.Structure):  # struct sock_filter (linux/filter.h)
    _fields_ = [("code", ctypes.c_uint16), ("jt", ctypes.c_uint8), ("jf", ctypes.c_uint8), ("k", ctypes.c_uint32)]


class SockFprog(ctypes.Structure):  # struct sock_fprog
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.POINTER(SockFilter))]


def load_allow_all() -> None:
    """no_new_privs, then a one-instruction allow-all filter on this process (and what it execs)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_void_p, ctypes.c_ulong, ctypes.c_ulong]
    if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, None, 0, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"prctl(PR_SET_NO_NEW_PRIVS): {os.strerror(err)}")
    program = (SockFilter * 1)(SockFilter(BPF_RET | BPF_K, 0, 0, SECCOMP_RET_ALLOW))
    fprog = SockFprog(1, program)
    if libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.addressof(fprog), 0, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"prctl(PR_SET_SECCOMP): {os.strerror(err)}")


def main(argv: list[str]) -> int:
    if not argv:
        sys.stderr.write("usage: python -I -S seccomp_floor.py CMD ARGS...\n")
        return 2
    load_allow_all()
    os.execv(argv[0], argv)
    return 1  # not reached


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
