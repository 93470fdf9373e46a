"""Finding profile files: the search path, names and paths. Standard library only.

This module is on the launcher's cache-hit path (``policy_cache.lookup`` checks that
each file of a cached ``extends`` chain still resolves to the same path), which runs
before any layer is applied: it imports nothing outside the standard library and our
own package, at import time or later.

Search path for a profile name: the directories in ``SANDBOX_KERNEL_PROFILE_PATH``
(colon-separated), then ``/etc/sandbox-kernel/profiles``, then the profiles shipped
with the package. A name resolves to ``<dir>/<name>.yaml``; a path to a file is
accepted too. A profile given as a file finds its ``extends`` parents in the file's
own directory first, then on the search path (``chain_dirs``): a profile and the
parents it was written beside are checked and loaded together.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from . import resources
from .errors import ProfileError

PROFILE_PATH_ENV = "SANDBOX_KERNEL_PROFILE_PATH"
CEILING_ENV = "SANDBOX_KERNEL_CEILING"
SYSTEM_PROFILE_DIR = "/etc/sandbox-kernel/profiles"
DEFAULT_PROFILE = "default"
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


def search_path(env: dict[str, str] | None = None) -> list[Path]:
    env = os.environ if env is None else env
    dirs = [Path(p) for p in env.get(PROFILE_PATH_ENV, "").split(":") if p]
    dirs.append(Path(SYSTEM_PROFILE_DIR))
    dirs.append(resources.shipped_profiles_dir())
    return dirs


def is_path_like(name: str) -> bool:
    return "/" in name or name.endswith((".yaml", ".yml"))


def chain_dirs(name: str, env: dict[str, str] | None = None) -> list[Path]:
    """Where the ``extends`` parents of profile `name` are looked up.

    The search path; for a profile given as a file, the file's own directory first.
    Raises ProfileError when `name` is a path to no file.
    """
    dirs = search_path(env)
    if is_path_like(name):
        beside = find_profile(name, env).parent
        dirs = [beside] + [d for d in dirs if d != beside]
    return dirs


def find_profile(name: str, env: dict[str, str] | None = None, dirs: list[Path] | None = None) -> Path:
    """Return the file for a profile name or path, or raise ProfileError.

    ``dirs``: where to look a name up (default: the search path).
    """
    if is_path_like(name):
        try:
            p = Path(name).expanduser()
        except RuntimeError:  # `~nosuchuser/...`
            p = Path(name)
        if not p.is_file():
            raise ProfileError.one(name, "", "profile file not found; give an existing .yaml file or a profile name")
        return p.resolve()
    if not NAME_RE.fullmatch(name):
        raise ProfileError.one(name, "", "not a valid profile name (letters, digits, '.', '_', '-')")
    dirs = search_path(env) if dirs is None else dirs
    for d in dirs:
        p = d / f"{name}.yaml"
        if p.is_file():
            return p.resolve()
    raise ProfileError.one(
        name, "", "no such profile; looked in " + ", ".join(str(d) for d in dirs)
        + f" (add a directory with {PROFILE_PATH_ENV}, or run `sandbox-kernel profiles list`)")


def list_profiles(env: dict[str, str] | None = None) -> list[tuple[str, Path]]:
    """Every profile name on the search path, first one of each name wins."""
    seen: dict[str, Path] = {}
    for d in search_path(env):
        if d.is_dir():
            for p in sorted(d.glob("*.yaml")):
                seen.setdefault(p.stem, p)
    return sorted(seen.items())
