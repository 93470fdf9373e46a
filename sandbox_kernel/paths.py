"""Path containment, written once: is a path a directory or below it?

Plain string tests on paths already made absolute and real (``os.path.realpath``) or
normalised by the caller; nothing here touches the filesystem. Standard library only: the
launcher and the layers use it before confinement.
"""

from __future__ import annotations


def within(path: str, top: str) -> bool:
    """`path` is `top` itself or lies below it (``/a/b`` and ``/a`` are within ``/a``; ``/ab`` is not).
    Every absolute path is within ``/``."""
    return path == top or path.startswith(top.rstrip("/") + "/")


def below(path: str, top: str) -> bool:
    """`path` lies below `top`, not `top` itself (``/a/b`` is below ``/a``; ``/a`` is not). The one
    exception is ``/``: every absolute path starts with it, so ``below("/", "/")`` is true."""
    return path.startswith(top.rstrip("/") + "/")


__all__ = ["below", "within"]
