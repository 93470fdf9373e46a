"""Where the files shipped with the package live.

In a wheel, ``profiles/`` and ``kernelspec/`` are installed inside the package as
``_data/``; in a source checkout (editable install) they are beside the package.
"""

from __future__ import annotations

import sysconfig
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
GUARD_HOOK_NAME = "sandbox_kernel_guard.pth"


def _data_dir(name: str) -> Path:
    installed = PACKAGE_DIR / "_data" / name
    if installed.is_dir():
        return installed
    return PACKAGE_DIR.parent / name


def shipped_profiles_dir() -> Path:
    return _data_dir("profiles")


def schema_path() -> Path:
    return shipped_profiles_dir() / "schema.json"


def kernelspec_template_dir() -> Path:
    return _data_dir("kernelspec")


def guard_hook_source() -> Path:
    """The .pth file that arms the import guard in child interpreters: beside the package
    (the repository root of a source checkout; site-packages itself for a wheel, which
    installs it there)."""
    return PACKAGE_DIR.parent / GUARD_HOOK_NAME


_purelib: str | None = None


def guard_hook_path() -> Path:
    """Where the hook must be installed: this environment's site-packages."""
    global _purelib
    if _purelib is None:  # sysconfig expands its install scheme on every call: ~1 ms each
        _purelib = sysconfig.get_paths()["purelib"]
    return Path(_purelib) / GUARD_HOOK_NAME
