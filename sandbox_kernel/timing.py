"""Start-up timing marks of the launcher, for diagnostics (``python -m benchmarks startup-profile``).

Off unless ``SANDBOX_KERNEL_TIMING_FD`` names a file descriptor that the caller opened
for writing and let the launcher inherit. Then the launcher records a CLOCK_MONOTONIC
timestamp (``time.monotonic``, comparable across processes) at the end of each phase
(``mark``) and, just before it execs the command, writes one JSON line to that
descriptor (``emit``)::

    {"pid": 123, "clock": "CLOCK_MONOTONIC", "marks": [["launcher imports", 5012.3], ...]}

Each mark names the phase that ends there, so the harness reads the phases as the
differences between consecutive marks, the first measured from its own clock reading
when it started the process. The variable is taken out of the command's environment and
the descriptor is closed before the exec, so the kernel never sees either.

Nothing is opened or created here: the launcher only writes to a descriptor it was
handed, so the hook gives a caller nothing it did not already have. Standard library
only (it runs on the launch path, before any layer applies), and free when off.
"""

from __future__ import annotations

import os
import time

ENV = "SANDBOX_KERNEL_TIMING_FD"


def _descriptor() -> int | None:
    value = os.environ.get(ENV)
    if not value:
        return None
    try:
        fd = int(value)
        os.fstat(fd)
    except (ValueError, OSError):
        return None
    return fd


_fd = _descriptor()
_marks: list[tuple[str, float]] = []


def enabled() -> bool:
    return _fd is not None


def mark(phase: str) -> None:
    """`phase` ends now."""
    if _fd is not None:
        _marks.append((phase, time.monotonic()))


def emit(env: dict[str, str]) -> None:
    """Write the marks (plus "exec") and hand the command an environment without the variable."""
    env.pop(ENV, None)
    if _fd is None:
        return
    from .standins import json_dumps

    mark("exec")
    line = json_dumps({"pid": os.getpid(), "clock": "CLOCK_MONOTONIC", "marks": _marks}) + "\n"
    try:
        os.write(_fd, line.encode())
        if _fd > 2:
            os.close(_fd)
    except OSError:
        pass  # a diagnostic: never a reason not to start


mark("interpreter start, command line")  # the first of our modules the launcher imports
