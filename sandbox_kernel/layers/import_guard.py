"""import_guard: denied modules cannot be imported, in the kernel and in its child interpreters.

Enforcement: soft (an in-process hook that determined code can remove). Not applied by the
launcher: the kernel installs the finder (sandbox_kernel.guard, kernel.py) and
``sandbox_kernel_guard.pth`` arms it in every child interpreter of the environment. The
launcher only checks, before any layer, that the hook is there (``check_hook``).
"""

from __future__ import annotations

import os

from .. import resources
from ..errors import LayerUnavailable

NAME = "import_guard"
# What this layer is (the facts every layer declares; layers/registry.py derives every list from them)
HARD = False  # enforced by the OS kernel (True) or by in-process hooks (False)
CONFIGURABLE = True  # the profile's enforcement.import_guard can make it best-effort or off
CHECKED_BY_KERNEL = False  # the kernel refuses to run without the launcher's report of it
# HINT: what makes the layer available, for doctor (None: its refusal says)
HINT = "run `sandbox-kernel install` once in this environment"
DESCRIPTION = "denied modules cannot be imported in the kernel or in the Python processes it starts"
# DEFAULT: its enforcement level where a profile names none (None: not configurable)
DEFAULT = "required"
# README: what README.md's list of layers says of it (generated there: python -m sandbox_kernel.layer_doc --write)
README = ("is armed by `sandbox_kernel_guard.pth` while `site` runs, in the kernel and every child interpreter "
          "of the environment.")


def check_hook() -> None:
    """The child-process guard hook is installed, or start-up stops (the launcher, before any layer)."""
    hook = resources.guard_hook_path()
    if not os.path.isfile(hook):
        raise LayerUnavailable(
            NAME, f"the child-process guard hook {hook} is missing, so Python processes started "
                  f"from the kernel would run unguarded; run `sandbox-kernel install` once in this environment")
