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


_remembered: dict[str, str] | None = None


def realpath(path: str) -> str:
    """``os.path.realpath``, answered from memory while ``remembered_realpaths`` is open."""
    if _remembered is None:
        return os.path.realpath(path)
    real = _remembered.get(path)
    if real is None:
        real = _remembered[path] = os.path.realpath(path)
    return real


class remembered_realpaths:
    """While open, ``realpath`` resolves each path once: for one pass that plans over a view no
    one changes meanwhile (the Landlock plan resolves some 300 paths, 75 of them distinct, in the
    launcher, before any tenant code runs). Closing it forgets them (the next layer may mount)."""

    def __enter__(self):
        global _remembered
        self._outer = _remembered
        if _remembered is None:
            _remembered = {}
        return self

    def __exit__(self, *exc) -> None:
        global _remembered
        _remembered = self._outer


def real_exec_allowed(policy, ctx) -> list[str]:
    """``exec.allow`` expanded for this launch and resolved with realpath, in the profile's order."""
    return [realpath(d) for d in ctx.expand_paths(policy.data["exec"]["allow"])]


def real_writable(policy, ctx) -> list[str]:
    """``filesystem.writable`` expanded for this launch (``{home}``, ``{cwd}``, ``{tmp}``: the
    LaunchContext `ctx`) and resolved with realpath, in the profile's order."""
    return [realpath(w) for w in ctx.expand_paths(policy.data["filesystem"]["writable"])]


__all__ = ["below", "real_writable", "realpath", "remembered_realpaths", "within"]
