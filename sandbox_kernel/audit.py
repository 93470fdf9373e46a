"""Audit events of the in-process hooks: one JSON line per refusal.

Where the kernel has a supervisor (``supervisor.py``), an event goes to it over the FIFO
named in ``SANDBOX_KERNEL_AUDIT_FIFO`` and the supervisor writes the trail (``trail.py``):
the kernel cannot open ``audit.log`` at all. Without a supervisor (no PID namespace and no
cgroup) the event is appended to ``audit.log`` directly, as described below.

Each event is written with a single ``write(2)`` on a file opened with ``O_APPEND``,
so concurrent writers (the kernel and its child interpreters) never interleave
within a line, and a ``kill -9`` loses at most the event being written. A failing
log never raises into the kernel or user code: the failure is reported once on
stderr and the refusal itself still happens.

Enforcement: soft. The events are written by in-process code, which hostile code
can stop; the refusals they record by the OS layers still happen regardless.
"""

from __future__ import annotations

import json
import os
import sys
import time

KERNEL_ID_ENV = "SANDBOX_KERNEL_ID"
_warned: set[str] = set()


def _utc_now() -> str:
    """ISO 8601 UTC with milliseconds (without importing datetime: child start-up cost)."""
    t = time.time()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int(t % 1 * 1000):03d}+00:00"


def kernel_id() -> str:
    return os.environ.get(KERNEL_ID_ENV, "")


def record(log_path: str | None, *, profile: str, layer: str, what: str, detail: str, **extra) -> dict:
    """Append one event to ``log_path`` (if set) and return it."""
    event = {
        "time": _utc_now(),
        "kernel_id": kernel_id(),
        "profile": profile,
        "layer": layer,
        "what": what,
        "detail": detail,
        "pid": os.getpid(),
        **extra,
    }
    from . import trail

    if trail.send(event):
        return event
    if not log_path:
        return event
    line = (json.dumps(event, ensure_ascii=False, default=str) + "\n").encode("utf-8", "replace")
    try:
        fd = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, line)
        finally:
            os.close(fd)
    except Exception as e:  # never let the audit log break the kernel
        if log_path not in _warned:
            _warned.add(log_path)
            try:
                print(f"sandbox-kernel: cannot write audit log {log_path}: {e}", file=sys.__stderr__)
            except Exception:
                pass
    return event
