"""The start-up boundary: what may be imported before confinement.

``python -I -S boot.py run ...`` (docs/architecture.md, "The trusted start") runs the
launcher before any layer applies: everything it imports runs unconfined, so it must come
from files the tenant cannot write (layers/trusted_start.py checks them), and every module
costs every kernel's start. The launch path may import the standard library and this
package's modules declared here, nothing else; tests/kernel/test_launch_path.py reads Python's
import log of a real launch and fails on any module missing from these sets, naming this
file. To add an import on that path, declare it here, and say in the pull request why the
launch path needs it (a standard module whose own imports are heavy has a stand-in in
sandbox_kernel/standins.py instead).

Declarations only: the launcher does not import this module.
"""

from __future__ import annotations

# Packages all of whose modules are on the launch path: every module of sandbox_kernel/layers/
# (layers/registry.py imports every layer, and the layers' shared modules live beside them), so
# that adding a layer needs no line here; like every launch-path module they import only the
# standard library declared below.
PACKAGES = frozenset({"sandbox_kernel.layers"})

# This package's other modules on the launch path (``sandbox_kernel`` itself is registered by boot.py).
PACKAGE = frozenset({
    "sandbox_kernel.accelerators",
    "sandbox_kernel.cgroupfs",
    "sandbox_kernel.childguard",
    "sandbox_kernel.cli",
    "sandbox_kernel.connection",
    "sandbox_kernel.errors",
    "sandbox_kernel.identity",
    "sandbox_kernel.init_helper",
    "sandbox_kernel.launcher",
    "sandbox_kernel.libseccomp",
    "sandbox_kernel.listen_broker",
    "sandbox_kernel.paths",
    "sandbox_kernel.policy_cache",
    "sandbox_kernel.profile_files",
    "sandbox_kernel.resolved",
    "sandbox_kernel.resources",
    "sandbox_kernel.standins",
    "sandbox_kernel.supervisor",
    "sandbox_kernel.timing",
})

# Standard-library modules the launch path imports beyond what the interpreter's own start
# (``python -I -S``) has imported. ``_sysconfigdata_*`` (named after the platform) is
# sysconfig's, declared with it.
STANDARD_LIBRARY = frozenset({
    "__future__", "_collections_abc", "_ctypes", "_json", "_sha256", "_signal", "_sitebuiltins", "_socket",
    "_stat", "_struct", "ctypes", "ctypes._endian", "errno", "fcntl", "genericpath", "importlib",
    "importlib._bootstrap", "os", "posixpath", "pwd", "resource", "select", "site", "stat", "struct", "sysconfig",
    "types", "warnings",
})

# CPython-private modules above, and the public module that sandbox_kernel.standins imports
# instead where an interpreter lacks one (slower, and only there).
PRIVATE_FALLBACKS = {"_json": "json", "_sha256": "hashlib", "_signal": "signal", "_socket": "socket"}

# Never on the launch path, each a few ms of every kernel start on a 2-core machine (what they
# import: re with enum, functools and collections; json's Python layer; pathlib with
# urllib.parse and ipaddress; shutil with bz2, lzma and fnmatch; signal's enum wrappers):
# standins.py has what the launch path uses instead.
TOO_HEAVY = frozenset({
    "re", "enum", "functools", "collections", "json", "json.decoder", "pathlib", "urllib.parse", "ipaddress", "glob",
    "fnmatch", "argparse", "shutil", "signal", "hashlib", "subprocess", "threading", "typing", "dataclasses",
    "tempfile", "contextlib",
})


def undeclared(imported: set[str], baseline: set[str]) -> list[str]:
    """The modules of `imported` (an import log of a launch) that are neither in `baseline`
    (the bare interpreter's own start) nor declared above."""
    def declared(name: str) -> bool:
        if name.startswith("sandbox_kernel.") or name == "sandbox_kernel":
            return name in PACKAGE or name in PACKAGES or name.rpartition(".")[0] in PACKAGES \
                or name == "sandbox_kernel"
        if name.startswith("_sysconfigdata_"):
            return "sysconfig" in STANDARD_LIBRARY
        return name in STANDARD_LIBRARY

    return sorted(n for n in imported if n not in baseline and not declared(n))
