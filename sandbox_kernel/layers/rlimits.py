"""rlimits: per-process ceilings from ``limits``, and no core dumps.

Enforcement: hard for the process and its children (inherited across fork and
exec). Root cannot raise them again because the capabilities layer drops
CAP_SYS_RESOURCE. RLIMIT_NPROC does not bind root at all (the kernel exempts uid 0):
the cgroup layer's pids.max is what stops a root fork bomb.

``limits.memory`` maps to RLIMIT_DATA (heap and private writable mappings), which
leaves CUDA's large PROT_NONE reservations alone; ``limits.address_space`` is
RLIMIT_AS for those who want it (it breaks CUDA).
"""

from __future__ import annotations

import resource

from ..resolved import parse_size
from .base import level_or_off, simulated_missing

NAME = "rlimits"
MAPPING = [  # (limits key, resource, parse)
    ("memory", resource.RLIMIT_DATA, parse_size),
    ("address_space", resource.RLIMIT_AS, parse_size),
    ("processes", resource.RLIMIT_NPROC, int),
    ("open_files", resource.RLIMIT_NOFILE, int),
    ("file_size", resource.RLIMIT_FSIZE, parse_size),
    ("cpu_seconds", resource.RLIMIT_CPU, int),
]


def planned(policy) -> list[tuple[str, int, int]]:
    out = [("core dumps", resource.RLIMIT_CORE, 0)]
    for key, res, conv in MAPPING:
        v = policy.limits.get(key)
        if v is not None:
            out.append((key, res, conv(v)))
    return out


def apply(policy, ctx, status) -> None:
    level = level_or_off(policy, NAME, status)
    if level is None:
        return
    done = []
    try:
        if simulated_missing(NAME):
            raise OSError(0, "setrlimit is not available (simulated)")
        for label, res, value in planned(policy):
            soft, hard = resource.getrlimit(res)
            if hard != resource.RLIM_INFINITY:
                value = min(value, hard)
            resource.setrlimit(res, (value, value))
            done.append(f"{label}={value}")
    except (OSError, ValueError, OverflowError) as e:
        why = f"setrlimit failed: {getattr(e, 'strerror', None) or e}"
        status.cannot(NAME, level, why)
        return
    status.active(NAME, ", ".join(done))
