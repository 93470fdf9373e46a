"""Environment: what the kernel and its children are told.

Enforcement: soft (user code can change its own environment; the hard layers do
not depend on it). It carries the resolved policy to the kernel and to every child
interpreter (``SANDBOX_KERNEL_POLICY``, read by the guard hook in site-packages),
points TMPDIR at a granted directory, puts this environment's interpreter first on
PATH (so ``!python`` and ``!pip`` are the guarded ones), and sets the accelerator
variables so that frameworks see exactly the devices the profile allows (and use
them: ``JAX_PLATFORMS=cpu`` only where no GPU or TPU is granted).
"""

from __future__ import annotations

import os
import sys

from ..childguard import POLICY_ENV
from . import accelerators

NAME = "environment"


def variables(policy, ctx) -> dict[str, str | None]:
    """What to set in the kernel's environment (None: remove the variable)."""
    env = {POLICY_ENV: policy.to_json(), "TMPDIR": ctx.tmp}
    if policy.network["mode"] != "full" or policy.network.get("listen_ports") != "any":
        # debugpy cannot work without TCP servers: no warnings about it
        env["PYDEVD_DISABLE_FILE_VALIDATION"] = "1"
    if ctx.kernel_id:
        env["SANDBOX_KERNEL_ID"] = ctx.kernel_id
    bindir = os.path.dirname(sys.executable)
    path = ctx.env.get("PATH", os.defpath).split(os.pathsep)
    env["PATH"] = os.pathsep.join([bindir] + [p for p in path if p and p != bindir])
    if policy.network["mode"] == "restricted" and not policy.network["udp"]:
        env["RES_OPTIONS"] = (ctx.env.get("RES_OPTIONS", "") + " use-vc").strip()  # DNS over TCP
    env.update(accelerators.environment(policy, ctx.env))
    return env


def apply(policy, ctx, status) -> None:
    env = variables(policy, ctx)
    for k, v in env.items():
        if v is None:
            ctx.env.pop(k, None)
        else:
            ctx.env[k] = v
    # GPU tool paths are judged now, while file owners are seen as they are: inside the user
    # namespace of an ordinary user (mount_namespace layer) root's files show as nobody's.
    ctx.gpu_tools = accelerators.tool_verdicts(policy, ctx)
    shown = {k: v for k, v in env.items() if k != POLICY_ENV}
    status.active(NAME, ", ".join(f"{k}={v!r}" if v is not None else f"{k} unset" for k, v in sorted(shown.items())),
                  gpu_tools=ctx.gpu_tools)
