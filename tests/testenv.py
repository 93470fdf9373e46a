"""Facts about the test environment that every test module shares, defined once: where the
repository is and whether the suite runs as root (tests that need root skip otherwise; run the
suite as root to cover both). (Not sandbox_kernel.paths, the package's path-containment test.)"""

from __future__ import annotations

import os
from pathlib import Path

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent
IS_ROOT = os.geteuid() == 0
