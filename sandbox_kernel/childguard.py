"""Arms the import guard in every Python process started inside the sandbox.

The launcher exports the effective policy as ``SANDBOX_KERNEL_POLICY``; the hook
``sandbox_kernel_guard.pth`` in this environment's site-packages calls ``arm()``
while ``site`` runs, before any user code, in the kernel and in every child
interpreter of this environment (``!python``, ``subprocess``, ``os.system``,
multiprocessing spawn/forkserver workers; forked workers inherit the finder).

Enforcement: soft. ``python -I``/``-S`` skip site-packages hooks, an interpreter
installed elsewhere has no hook, and a child can drop the variable; the OS layers
(network, exec, devices, syscalls) still apply to all of them.
"""

from __future__ import annotations

import os
import sys

POLICY_ENV = "SANDBOX_KERNEL_POLICY"  # the effective policy as JSON, set by the launcher
_EXIT_GUARD_FAILED = 70


def arm() -> None:
    from .guard import current_guard

    if current_guard() is not None:
        return
    try:
        from .guard import ImportGuard
        from . import accelerators
        from .resolved import Policy

        policy = Policy.from_json(os.environ[POLICY_ENV])
        guard = ImportGuard(policy, layer="import_guard")
        accelerators.install_runtime_hooks(guard, policy)
        guard.install()
    except Exception as e:  # never run unguarded: a broken policy stops the process
        sys.stderr.write(f"sandbox-kernel: cannot arm the import guard ({type(e).__name__}: {e}); "
                         f"refusing to run this interpreter unguarded\n")
        sys.stderr.flush()
        os._exit(_EXIT_GUARD_FAILED)
