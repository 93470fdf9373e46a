"""Where the files shipped with the package live.

In a wheel, ``profiles/`` and ``kernelspec/`` are installed inside the package as
``_data/``; in a source checkout (editable install) they are beside the package.

Paths are plain strings (``os.path``), not ``pathlib.Path``: this module is on the
launcher's path, where importing pathlib (with urllib.parse, ipaddress, fnmatch and re)
cost about 15 ms of every kernel's start on a 2-core machine.
"""

from __future__ import annotations

import os

PACKAGE_DIR = os.path.dirname(os.path.realpath(__file__))
GUARD_HOOK_NAME = "sandbox_kernel_guard.pth"


def _data_dir(name: str) -> str:
    installed = os.path.join(PACKAGE_DIR, "_data", name)
    if os.path.isdir(installed):
        return installed
    return os.path.join(os.path.dirname(PACKAGE_DIR), name)


def shipped_profiles_dir() -> str:
    return _data_dir("profiles")


def schema_path() -> str:
    return os.path.join(shipped_profiles_dir(), "schema.json")


def kernelspec_template_dir() -> str:
    return _data_dir("kernelspec")


def guard_hook_source() -> str:
    """The .pth file that arms the import guard in child interpreters: beside the package
    (the repository root of a source checkout; site-packages itself for a wheel, which
    installs it there)."""
    return os.path.join(os.path.dirname(PACKAGE_DIR), GUARD_HOOK_NAME)


_purelib: str | None = None


def guard_hook_path() -> str:
    """Where the hook must be installed: this environment's site-packages."""
    global _purelib
    if _purelib is None:  # sysconfig expands its install scheme on every call: ~1 ms each
        import sysconfig

        _purelib = sysconfig.get_paths()["purelib"]
    return os.path.join(_purelib, GUARD_HOOK_NAME)


def remember_guard_hook_path(path: str) -> None:
    """guard_hook_path() as the validated-policy cache recorded it for this interpreter
    (policy_cache: written by `install` with sysconfig, checked against sys.executable, sys.prefix
    and sys.version), so that the launcher need not import sysconfig."""
    global _purelib
    if os.path.basename(path) == GUARD_HOOK_NAME:
        _purelib = os.path.dirname(path)
