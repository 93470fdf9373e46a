"""Program directories kept in packages' own trees below the library directories
(``/usr/lib/jvm/*/bin``, ``/usr/lib/llvm-*/bin``, ``/usr/lib/postgresql/*/bin``,
``/usr/local/cuda-*/bin``, ``/opt/*/bin``): the ELF loader maps a program there as readily as
one in /usr/bin, so the mount namespace mounts each ``noexec`` where ``exec.allow`` does not
name it, like ``system_dirs.PROGRAM_DIRS``.

Finding them means reading every directory one and two levels below ``ROOTS`` (8 to 20 ms on
a 2-core host whose /usr/lib/x86_64-linux-gnu has 1,228 entries): too slow for every start.
``sandbox-kernel install`` scans once and stores the list in the validated-policy cache
(``facts``), with what ``program_files`` finds elsewhere (ELF programs beside libraries, in
directories of programs only, in the Python environment: seconds to find, a host cache keeps
them); the launcher takes both from there (``policy_cache.lookup`` calls ``remember``) and
scans at start only where it has no valid cache (``sandbox-kernel run`` without
``--policy-cache``; ``program_files`` then takes the host cache's list where there is one):
slower, never fewer mounts. A tree installed after ``install`` is not covered until
``install`` runs again; ``sandbox-kernel doctor`` names it (``doctor.program_trees_check``).

Standard library only: the launcher imports this before any layer is applied.
"""

from __future__ import annotations

import os

from ..paths import within
from . import program_files
from .system_dirs import PROGRAM_DIRS

# Where packages keep a tree of their own (the FHS's add-on and local trees, and the library
# directories where distributions put a JDK, LLVM, PostgreSQL, ...); /lib and /lib64 are the
# same directories as /usr/lib and /usr/lib64 on a merged-/usr host (deduplicated by real path).
ROOTS = ["/usr/lib", "/usr/lib64", "/lib", "/lib64", "/usr/local/lib", "/usr/local", "/opt"]
NAMES = ("bin", "sbin")
DEPTH = 2  # a bin directory directly in a root, or in a directory one or two levels below it


def scan(roots: list[str] | None = None, skip: list[str] | None = None) -> list[str]:
    """The directories named ``bin`` or ``sbin`` in each of `roots` or in a directory one or two
    levels below it (``/usr/lib/jvm/java-17-openjdk-amd64/bin``), as real paths, sorted, leaving
    out those within `skip` (``PROGRAM_DIRS``: mounted noexec anyway). Symbolic links below a
    root are not followed (a link to /usr/lib named bin must not make the libraries noexec;
    the directory it names is found where it really lies, if that is in a root); unreadable
    directories are passed over. Reads directory entries only (scandir's d_type: no stat per
    entry where the filesystem reports types)."""
    roots = ROOTS if roots is None else roots
    skip = [os.path.realpath(s) for s in (PROGRAM_DIRS if skip is None else skip)]
    found: set[str] = set()
    seen: set[str] = set()
    for root in roots:
        real = os.path.realpath(root)
        if real in seen or not os.path.isdir(real):
            continue
        seen.add(real)
        level = [real]
        for depth in range(DEPTH + 1):
            deeper = []
            for d in level:
                try:
                    entries = os.scandir(d)
                except OSError:
                    continue
                with entries:
                    for e in entries:
                        try:
                            if not e.is_dir(follow_symlinks=False):
                                continue
                        except OSError:
                            continue
                        if e.name in NAMES:
                            found.add(e.path)
                        elif depth < DEPTH:
                            deeper.append(e.path)
            level = deeper
    return sorted(d for d in found if not any(within(d, s) for s in skip))


def env_roots() -> list[str]:
    """The Python environment of this interpreter and its base installation (readable by the
    kernel: {env}), where packages keep programs too (``site-packages/playwright/driver/node``)."""
    import sys

    return list(dict.fromkeys(os.path.realpath(p) for p in (sys.prefix, sys.base_prefix)))


def file_roots() -> list[str]:
    """Where ``program_files`` looks for programs outside the program directories."""
    return program_files.ROOTS + env_roots()


def files(dirs: list[str], *, check: bool = True) -> list[str]:
    """The programs outside the program directories (``PROGRAM_DIRS`` and `dirs`), and the
    program-only trees, for the mount namespace to mount noexec (``program_files.programs``)."""
    from .python_files import environment_bin

    env_bin = environment_bin()  # granted whole by {python}: its ELF programs (ruff, uv) one by one
    return program_files.programs(file_roots(), sorted(PROGRAM_DIRS + dirs), [env_bin] if env_bin else [],
                                  check=check)


def facts(dirs: list[str] | None = None, found: list[str] | None = None) -> dict:
    """What install stores in the policy cache: the scans' parameters and their results."""
    dirs = scan() if dirs is None else dirs
    return {"roots": ROOTS, "names": list(NAMES), "depth": DEPTH, "dirs": dirs,
            "files": {"scan": program_files.SCAN, "roots": file_roots(),
                      "paths": files(dirs) if found is None else found}}


def cached_dirs(cached) -> list[str] | None:
    """What a cache's `facts` lists (the bin directories, then the programs elsewhere), or None
    where they were not scanned the way this code scans (another version's roots, another
    interpreter's environment) or are malformed."""
    if not isinstance(cached, dict) or cached.get("roots") != ROOTS or cached.get("names") != list(NAMES) \
            or cached.get("depth") != DEPTH:
        return None
    dirs, more = cached.get("dirs"), cached.get("files")
    if not isinstance(more, dict) or more.get("scan") != program_files.SCAN or more.get("roots") != file_roots():
        return None
    paths = more.get("paths")
    if not all(isinstance(x, list) and all(isinstance(d, str) and d.startswith("/") for d in x) for x in (dirs, paths)):
        return None
    return dirs + paths


_DIRS: list[str] | None = None  # taken from the policy cache (remember), or scanned once


def remember(cached) -> bool:
    """Take the list from a valid policy cache's facts (policy_cache.lookup): True where taken."""
    global _DIRS
    dirs = cached_dirs(cached)
    if dirs is None:
        return False
    _DIRS = list(dirs)
    return True


def current(*, check: bool = True) -> list[str]:
    """What a scan finds now: the bin directories, then the programs elsewhere (taken from the
    host cache where it is current, or, without `check`, as it was written)."""
    dirs = scan()
    return dirs + files(dirs, check=check)


def program_tree_dirs() -> list[str]:
    """What the mount namespace mounts noexec beside the system's program directories: the bin
    directories of packages' trees and the programs elsewhere (directories or single files), as
    install wrote them into the policy cache where the launcher was given a valid one, else
    scanned now (once a process; the host cache's list as written where there is one)."""
    global _DIRS
    if _DIRS is None:
        _DIRS = current(check=False)
    return list(_DIRS)
