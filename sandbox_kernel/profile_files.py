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

from . import resources
from .errors import ProfileError
from .standins import valid_profile_name

PROFILE_PATH_ENV = "SANDBOX_KERNEL_PROFILE_PATH"
CEILING_ENV = "SANDBOX_KERNEL_CEILING"
SYSTEM_PROFILE_DIR = "/etc/sandbox-kernel/profiles"
DEFAULT_PROFILE = "default"
def search_path(env: dict[str, str] | None = None) -> list[str]:
    env = os.environ if env is None else env
    dirs = [p for p in env.get(PROFILE_PATH_ENV, "").split(":") if p]
    dirs.append(SYSTEM_PROFILE_DIR)
    dirs.append(resources.shipped_profiles_dir())
    return dirs


def is_path_like(name: str) -> bool:
    return "/" in name or name.endswith((".yaml", ".yml"))


def chain_dirs(name: str, env: dict[str, str] | None = None) -> list[str]:
    """Where the ``extends`` parents of profile `name` are looked up.

    The search path; for a profile given as a file, the file's own directory first.
    Raises ProfileError when `name` is a path to no file.
    """
    dirs = search_path(env)
    if is_path_like(name):
        beside = os.path.dirname(find_profile(name, env))
        dirs = [beside] + [d for d in dirs if os.path.normpath(d) != beside]
    return dirs


def find_profile(name: str, env: dict[str, str] | None = None, dirs: list[str] | None = None) -> str:
    """Return the file (an absolute, resolved path) for a profile name or path, or raise ProfileError.

    ``dirs``: where to look a name up (default: the search path).
    """
    if is_path_like(name):
        p = os.path.expanduser(name)  # `~nosuchuser/...` stays as it is
        if not os.path.isfile(p):
            raise ProfileError.one(name, "", "profile file not found; give an existing .yaml file or a profile name")
        return os.path.realpath(p)
    if not valid_profile_name(name):
        raise ProfileError.one(name, "", "not a valid profile name (letters, digits, '.', '_', '-')")
    dirs = search_path(env) if dirs is None else dirs
    for d in dirs:
        p = os.path.join(d, f"{name}.yaml")
        if os.path.isfile(p):
            return os.path.realpath(p)
    raise ProfileError.one(
        name, "", "no such profile" + _did_you_mean(name, dirs) + "; looked in " + ", ".join(dirs)
        + f" (add a directory with {PROFILE_PATH_ENV}, or run `sandbox-kernel profiles list`)")


def _did_you_mean(name: str, dirs: list[str]) -> str:
    """` (did you mean 'free'?)` for a near miss among the profiles in `dirs`, else ''."""
    import difflib  # an error path only: not imported when a profile is found

    names = sorted({n for d in dirs for n, _ in profiles_in(d)})
    close = difflib.get_close_matches(name, names, n=3, cutoff=0.6)
    return f" (did you mean {' or '.join(repr(c) for c in close)}?)" if close else ""


def profile_stem(path: str) -> str:
    """A profile file's name without its suffix (``/x/lab.yaml`` -> ``lab``)."""
    return os.path.splitext(os.path.basename(path))[0]


def profiles_in(directory: str) -> list[tuple[str, str]]:
    """(name, file) of each ``*.yaml`` in `directory`, sorted; none where it cannot be listed."""
    try:
        names = sorted(os.listdir(directory))
    except OSError:
        return []
    return [(profile_stem(f), os.path.join(directory, f)) for f in names if f.endswith(".yaml") and f != ".yaml"]


def list_profiles(env: dict[str, str] | None = None) -> list[tuple[str, str]]:
    """Every profile name on the search path, first one of each name wins."""
    seen: dict[str, str] = {}
    for d in search_path(env):
        for name, path in profiles_in(d):
            seen.setdefault(name, path)
    return sorted(seen.items())
