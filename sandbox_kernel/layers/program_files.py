"""ELF programs kept outside every program directory: among libraries (``/usr/lib/chromium/chromium``,
gcc's ``cc1plus``, ``/usr/lib/systemd/*``, ``/usr/lib/apt/methods/http``), in data trees, and in
the Python environment (``site-packages/playwright/driver/node``, ``torch/test/*``). ``ld.so`` runs
any ELF file it can map, whatever its mode and wherever it lies, unless its mount is ``noexec``; so
where ``exec.allow`` does not name them, the mount namespace mounts each such program ``noexec``,
like ``system_dirs.PROGRAM_DIRS`` and ``program_trees``' bin directories: a directory whose whole
tree holds programs and no library as one mount, other programs one file each (a bind mount of
the file onto itself), so libraries beside them still load.

A program, here: an ELF executable or position-independent executable with an entry point
(``e_type`` EXEC or DYN, ``e_entry`` not 0) whose name is not a library's (``*.so``, ``*.so.N``).
A library with an entry point (``ld.so libc.so.6`` prints glibc's version) stays: code every
process maps anyway. Files are recognised by their first 64 bytes, so the scan opens every
regular file of the roots except those named like data (``DATA_SUFFIXES``: ``.py``, ``.h``,
``.png``, ...); a program named like data would be missed (no package names one so; the roots
are the platform's, not the tenant's).

Cost: reading every file's header takes seconds (2 to 25 s for /usr and a torch environment on
a 2-core host, cold caches the most); ``sandbox-kernel install`` scans (``program_trees.facts``),
the launcher takes the list from the policy cache. A host cache (``HOST_CACHE``, root's, written
by a root install) lets later installs and launchers without a policy cache skip the scan: an
entry is reused while no directory below its root has changed (each directory's mtime, ~0.5 s to
check) and, for a launcher, as written (a program installed since is named by ``doctor``).

Standard library only: the launcher imports this before any layer is applied.
"""

from __future__ import annotations

import os
import stat

from .. import standins
from ..init_helper import FILE_NAME as INIT_PROGRAM
from ..paths import within

# What a kernel may read and map from, beside the writable directories (noexec anyway): the
# system and library directories and /etc (filesystem.readable's defaults), /opt (readable where a
# profile adds it), and the Python environment (added per interpreter: environment_roots).
ROOTS = ["/usr", "/lib", "/lib32", "/lib64", "/libx32", "/etc", "/opt"]
DATA_SUFFIXES = (".py", ".pyc", ".pyi", ".pyx", ".pxd", ".h", ".hpp", ".hh", ".c", ".cc", ".cpp", ".cu",
                 ".cuh", ".json", ".txt", ".md", ".rst", ".html", ".htm", ".css", ".js", ".mjs", ".ts", ".map",
                 ".xml", ".svg", ".png", ".jpg", ".gif", ".ico", ".ttf", ".otf", ".woff", ".woff2", ".gz",
                 ".xz", ".bz2", ".zst", ".zip", ".jar", ".mo", ".po", ".pm", ".pl", ".rb", ".sh", ".cfg",
                 ".conf", ".ini", ".yaml", ".yml", ".toml", ".csv", ".pc", ".cmake", ".la", ".a", ".o",
                 ".typed", ".desktop", ".service", ".mk", ".in", ".tcl", ".el", ".elc", ".hwdb", ".rules",
                 ".pem", ".crt", ".key", ".def", ".inc", ".ipynb", ".pth", ".dat", ".npy", ".npz")
SCAN = 2  # the version of what scan() finds: a cache written by another is not taken
HOST_CACHE = "/var/cache/sandbox-kernel/program-files.json"


def is_library_name(name: str) -> bool:
    """``libfoo.so``, ``libfoo.so.1.2``, ``x.cpython-311-x86_64-linux-gnu.so``."""
    if name.endswith(".so"):
        return True
    head, sep, tail = name.rpartition(".so.")
    return bool(sep and head and tail and all(part.isdigit() for part in tail.split(".")))


def is_program(path: str) -> bool:
    """An ELF file the loader would start (its first 64 bytes: EXEC or DYN with an entry point)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY)
    except OSError:
        return False
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return False
        head = os.pread(fd, 64, 0)
    except OSError:
        return False
    finally:
        os.close(fd)
    if len(head) < 52 or head[:4] != b"\x7fELF" or head[4] not in (1, 2) or head[5] not in (1, 2):
        return False
    order = "little" if head[5] == 1 else "big"
    e_type = int.from_bytes(head[16:18], order)
    entry = int.from_bytes(head[24:32] if head[4] == 2 else head[24:28], order)
    return e_type in (2, 3) and entry != 0


def _walk(d: str, skip: list[str], out: list[str], split: frozenset = frozenset()) -> tuple[bool, bool]:
    """Scan `d`'s tree; append to `out` what to mount noexec. Returns (holds a program, holds a
    library). A tree with programs and no library is returned whole (its caller decides whether
    to take it as one mount); otherwise its programs and its program-only subtrees are in `out`.
    A directory in `split` is never taken whole (as if it held a library)."""
    try:
        entries = list(os.scandir(d))
    except OSError:
        return False, False
    programs, lib = [], False
    subtrees: list[str] = []
    for e in entries:
        try:
            if e.is_dir(follow_symlinks=False):
                if any(within(e.path, s) for s in skip):
                    continue
                has_prog, has_lib = _walk(e.path, skip, out, split)
                lib = lib or has_lib
                if has_prog and not has_lib:
                    subtrees.append(e.path)
            elif e.is_file(follow_symlinks=False):
                if is_library_name(e.name):
                    lib = True
                elif e.name == INIT_PROGRAM and os.path.exists(os.path.join(d, "kernel.json")):
                    continue  # a kernelspec's own init (init_helper): run as pid 1 before the view, not by the tenant
                elif not e.name.endswith(DATA_SUFFIXES) and is_program(e.path):
                    programs.append(e.path)
        except OSError:
            continue
    if not lib and d not in split:
        return bool(programs or subtrees), False
    out.extend(programs)
    out.extend(subtrees)
    return bool(programs or subtrees), lib or d in split


def scan(roots: list[str], skip: list[str], split: list[str] = ()) -> list[str]:
    """What to mount noexec below `roots` (real paths, sorted): each directory whose whole tree
    holds programs and no library, and each other program file; nothing within `skip` (mounted
    noexec anyway). A root, and a directory in `split` (one that exec.allow grants whole, such as
    a venv's bin), is never taken whole. Symbolic links are not followed."""
    out: list[str] = []
    skip = [os.path.realpath(s) for s in skip]
    split_real = frozenset(os.path.realpath(d) for d in split)
    for root in distinct_roots(roots):
        if not any(within(root, s) for s in skip):
            _walk(root, skip, out, split_real | {root})
    return sorted(dict.fromkeys(out))


def distinct_roots(roots: list[str]) -> list[str]:
    """The real paths of `roots` that exist, less those within another (/lib is /usr/lib on a
    merged-/usr host; an environment in /usr/local is scanned with /usr)."""
    real = [r for r in dict.fromkeys(os.path.realpath(r) for r in roots) if os.path.isdir(r)]
    return [r for r in real if not any(o != r and within(r, o) for o in real)]


def fingerprint(root: str, skip: list[str]) -> str:
    """The modification times of every directory below `root` (not within `skip`), hashed: a file
    added, removed or renamed anywhere in the tree changes it."""
    h = standins.sha256_constructor()()
    todo = [os.path.realpath(root)]
    skip = [os.path.realpath(s) for s in skip]
    while todo:
        d = todo.pop()
        try:
            h.update(f"{d}\0{os.stat(d).st_mtime_ns}\n".encode("utf-8", "surrogateescape"))
            with os.scandir(d) as it:
                todo += [e.path for e in it if e.is_dir(follow_symlinks=False)
                         and not any(within(e.path, s) for s in skip)]
        except OSError:
            continue
    return h.hexdigest()


def _roots_alone(path: str) -> bool:
    """`path` and every directory above it are root's and writable by root alone."""
    while True:
        try:
            st = os.lstat(path)
        except OSError:
            return False
        if st.st_uid != 0 or st.st_mode & 0o022:
            return False
        if path == "/":
            return True
        path = os.path.dirname(path)


def read_host_cache(path: str | None = None) -> dict:
    """The host cache's entries (root -> {"skip", "split", "fingerprint", "paths"}), only where the
    file and every directory above it are root's and writable by root alone (as the system
    directories are: what the launcher reads before any layer applies), else {}."""
    path = HOST_CACHE if path is None else path
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return {}
    try:
        st = os.fstat(fd)
        if st.st_uid != 0 or st.st_mode & 0o022 or not _roots_alone(os.path.dirname(os.path.abspath(path))):
            return {}
        with os.fdopen(fd, "rb", closefd=False) as fh:
            data = standins.json_loads(fh.read())
    except (OSError, ValueError):
        return {}
    finally:
        os.close(fd)
    if not isinstance(data, dict) or data.get("scan") != SCAN or not isinstance(data.get("roots"), dict):
        return {}
    return {r: e for r, e in data["roots"].items() if _valid_entry(e)}


def _valid_entry(e) -> bool:
    return isinstance(e, dict) and isinstance(e.get("fingerprint"), str) and isinstance(e.get("skip"), list) \
        and isinstance(e.get("paths"), list) and all(isinstance(p, str) and p.startswith("/") for p in e["paths"])


def write_host_cache(entries: dict, path: str | None = None) -> bool:
    """Merge `entries` into the host cache (as root only: others' caches are never trusted)."""
    path = HOST_CACHE if path is None else path
    if os.geteuid() != 0:
        return False
    merged = {r: e for r, e in read_host_cache(path).items() if os.path.isdir(r)}  # (a venv removed since: dropped)
    merged.update(entries)
    try:
        os.makedirs(os.path.dirname(path), mode=0o755, exist_ok=True)
        tmp = f"{path}.{os.getpid()}.tmp"
        with open(tmp, "w") as fh:
            fh.write(standins.json_dumps({"scan": SCAN, "roots": merged}, separators=(",", ":")))
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except OSError:
        return False
    return True


_MEMO: dict = {}


def programs(roots: list[str], skip: list[str], split: list[str] = (), *, check: bool = True,
             host_cache: str | None = None) -> list[str]:
    """What to mount noexec below `roots` (``scan``): from the host cache where its entry for a
    root was scanned with the same `skip` and `split` and (with `check`) its tree has not changed
    since, else scanned now (and, as root, written to the host cache). Kept for the life of the
    process."""
    split = sorted(split)
    key = (tuple(roots), tuple(skip), tuple(split), check, host_cache)
    if key in _MEMO:
        return list(_MEMO[key])
    cached = read_host_cache(host_cache)
    out, fresh = [], {}
    for root in distinct_roots(roots):
        inside = [d for d in split if within(d, root)]  # (one interpreter's venv bin: only its own root's entry)
        e = cached.get(root)
        if e is not None and e["skip"] == sorted(skip) and e.get("split") == inside:
            if not check:
                out += e["paths"]
                continue
            fp = fingerprint(root, skip)
            if fp == e["fingerprint"]:
                out += e["paths"]
                continue
        else:
            fp = fingerprint(root, skip) if os.geteuid() == 0 else ""
        found = scan([root], skip, inside)
        out += found
        if fp:
            fresh[root] = {"skip": sorted(skip), "split": inside, "fingerprint": fp, "paths": found}
    if fresh:
        write_host_cache(fresh, host_cache)
    result = sorted(dict.fromkeys(out))
    _MEMO[key] = result
    return list(result)
