"""Paths written once: is a path a directory or below it (``within``, ``below``), and the
profile's writable directories as real paths (``real_writable``).

``within`` and ``below`` are plain string tests on paths already made absolute and real
(``os.path.realpath``) or normalised by the caller. Standard library only: the launcher and
the layers use this before confinement.
"""

from __future__ import annotations

import os


def within(path: str, top: str) -> bool:
    """`path` is `top` itself or lies below it (``/a/b`` and ``/a`` are within ``/a``; ``/ab`` is not).
    Every absolute path is within ``/``."""
    return path == top or path.startswith(top.rstrip("/") + "/")


def below(path: str, top: str) -> bool:
    """`path` lies below `top`, not `top` itself (``/a/b`` is below ``/a``; ``/a`` is not). The one
    exception is ``/``: every absolute path starts with it, so ``below("/", "/")`` is true."""
    return path.startswith(top.rstrip("/") + "/")


def real_writable(policy, ctx) -> list[str]:
    """``filesystem.writable`` expanded for this launch (``{home}``, ``{cwd}``, ``{tmp}``: the
    LaunchContext `ctx`) and resolved with realpath, in the profile's order."""
    return [os.path.realpath(w) for w in ctx.expand_paths(policy.data["filesystem"]["writable"])]


__all__ = ["below", "real_writable", "within"]
