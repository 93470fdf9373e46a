"""The launcher's hand-off to the kernel: what the kernel's own steps need from the layers
(seccomp's stage 2, the GPU tool verdicts), apart from the human-facing status report.

The layers write ``LaunchContext.handoff``; the launcher exports it as JSON in HANDOFF_ENV; the
kernel reads it with ``handoff_from_env`` before any user code runs, as it reads the report.
"""

from __future__ import annotations

import os

from .. import standins

HANDOFF_ENV = "SANDBOX_KERNEL_HANDOFF"
HANDOFF_MODES = ("none", "restricted", "full")  # network.mode (tests: the schema's)
HANDOFF_LISTEN = ("allow", "notify", "later", "refuse")  # seccomp.listen_plan (tests: seccomp.LISTEN_DETAIL's)


def handoff_from_env(env=None) -> dict:
    """The launcher's hand-off to the kernel ({} without one): JSON in HANDOFF_ENV, written by the
    launcher from ``LaunchContext.handoff`` and read by the kernel before any user code runs, as
    SANDBOX_KERNEL_LAYERS is. ``seccomp``: what stage 2 needs (layers/seccomp.py); ``gpu_tools``:
    the environment layer's GPU tool verdicts (accelerators.tool_verdicts). Tenant code can set it
    for its children: anything but what the launcher writes raises ValueError."""
    text = (os.environ if env is None else env).get(HANDOFF_ENV)
    if not text:
        return {}
    data = standins.json_loads(text)
    if not isinstance(data, dict) or not set(data) <= {"seccomp", "gpu_tools"}:
        raise ValueError("not an object with seccomp and gpu_tools")
    facts = data.get("seccomp", {})
    kinds = {"stage_two": bool, "stage_one": str, "listen": str, "audited": bool, "memfd_noexec": bool}
    if not isinstance(facts, dict) or set(facts) != (set(kinds) if facts else set()) or not all(
            isinstance(facts[k], t) for k, t in kinds.items() if k in facts):
        raise ValueError(f"seccomp is not an object of {', '.join(kinds)}")
    if facts and (facts["stage_one"] not in HANDOFF_MODES or facts["listen"] not in HANDOFF_LISTEN):
        raise ValueError(f"seccomp's stage_one or listen is none of {', '.join(HANDOFF_MODES + HANDOFF_LISTEN)}")
    tools = data.get("gpu_tools", [])
    if not isinstance(tools, list) or not all(
            isinstance(t, list) and len(t) == 4 and all(isinstance(x, str) for x in t) for t in tools):
        raise ValueError("gpu_tools is not a list of [entry, path, state, detail]")
    return data
