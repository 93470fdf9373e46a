"""The interpreter's files: what {python} and {env} grant, what the trusted start runs or reads
(the interpreter, the environment, the base installation, this package), and where Python's
start looks for a standard library before the real one."""

from __future__ import annotations

import os
import sys

from .. import resources
from ..paths import realpath
from .system_dirs import ELF_LOADERS, PROGRAM_DIRS, SYSTEM_EXEC_DIRS


def env_paths() -> list[str]:
    """{env}: the Python environment's directories (its prefix, its base interpreter's prefix,
    their real paths), where the standard library and site-packages live, and the directories
    that site-packages' .pth files put on sys.path (an editable install's checkout: where this
    package is imported from). Never "/". Computed once per process (the mount and Landlock
    layers both ask; the answer depends only on this interpreter)."""
    global _ENV_PATHS
    if _ENV_PATHS is None:
        _ENV_PATHS = _env_paths()
    return list(_ENV_PATHS)


_ENV_PATHS: list[str] | None = None


def _env_paths() -> list[str]:
    out = []
    for p in (sys.prefix, sys.exec_prefix, sys.base_prefix, sys.base_exec_prefix):
        out += [p, realpath(p)]
    for sp in site_dirs():
        out += [sp] + pth_dirs(sp)
    return list(dict.fromkeys([p for p in out if p and p != "/"]))


def zip_landmarks() -> list[str]:
    """Every ``lib/pythonXY.zip`` that Python's start (getpath's prefix search, on POSIX) looks
    for, in every directory from the interpreter's own (the base interpreter's ``bin`` for a
    venv, and its library's directory) up to /: the first one found becomes sys.prefix and its
    zip the standard library, before the real one is looked for."""
    name = f"python{sys.version_info[0]}{sys.version_info[1]}.zip"
    lib = getattr(sys, "platlibdir", "lib") or "lib"
    base = realpath(sys.base_prefix)
    out = []
    for start in dict.fromkeys([os.path.dirname(realpath(sys.executable)), os.path.join(base, "bin"),
                                os.path.join(base, lib)]):
        d = start
        while True:
            out.append(os.path.join(d, lib, name))
            if d == "/":
                break
            d = os.path.dirname(d)
    return list(dict.fromkeys(out))


def site_dirs() -> list[str]:
    """The environment's site-packages directories, as its `site` module names them (a
    distribution's patched `site` knows its dist-packages layout). The launcher runs with -S:
    importing `site` then changes nothing (site.main() is not called)."""
    import site

    return [d for d in site.getsitepackages() if os.path.isdir(d)]


def pth_dirs(site_packages: str) -> list[str]:
    """The directories that `site` adds to sys.path from the .pth files in `site_packages` (path
    lines only: lines starting with `import` run code and add nothing by themselves)."""
    out = []
    try:
        names = sorted(n for n in os.listdir(site_packages) if n.endswith(".pth"))
    except OSError:
        return out
    for name in names:
        try:
            with open(os.path.join(site_packages, name), encoding="utf-8", errors="replace") as fh:
                lines = fh.read().splitlines()
        except OSError:
            continue
        for line in lines:
            line = line.strip()
            if line and not line.startswith(("#", "import ", "import\t")):
                d = realpath(os.path.join(site_packages, line))
                if os.path.isdir(d):
                    out.append(d)
    return out


def is_interpreter_name(name: str) -> bool:
    """python, python3, python3.11 (and a d/m/t build suffix); not python3-config or pythonw.
    (Written without re: the launcher's start-up imports as little as it can.)"""
    if not name.startswith("python"):
        return False
    rest = name[len("python"):]
    if rest[-1:] in ("d", "m", "t"):
        rest = rest[:-1]
    if not rest:
        return True
    major, dot, minor = rest.partition(".")
    return major.isascii() and major.isdigit() and (not dot or (minor.isascii() and minor.isdigit()))


def _interpreter_files(bin_dir: str) -> list[str]:
    """The interpreter entries of `bin_dir` (python, python3, python3.11: not python3-config, a
    shell script, nor any other program there), as the real files they resolve to."""
    try:
        names = sorted(os.listdir(bin_dir))
    except OSError:
        return []
    out = []
    for n in names:
        if is_interpreter_name(n):
            real = realpath(os.path.join(bin_dir, n))
            if os.path.isfile(real) and os.access(real, os.X_OK):
                out.append(real)
    return out


_shared: dict[str, frozenset[str]] = {}


def _shared_bins(base_prefix: str) -> frozenset[str]:
    """The bin directories other programs share, as real paths: the host's program directories
    and the base installation's bin. Resolved once per process (host directories, which a tenant
    cannot change; the launcher asks some 20 times per start, 23 realpaths each)."""
    got = _shared.get(base_prefix)
    if got is None:
        got = _shared[base_prefix] = frozenset(
            [realpath(x) for x in PROGRAM_DIRS + SYSTEM_EXEC_DIRS] + [realpath(os.path.join(base_prefix, "bin"))])
    return got


def environment_bin() -> str | None:
    """The virtual environment's own bin directory, when this interpreter runs in one (sys.prefix
    holds pyvenv.cfg) and that directory is not one other programs share: a venv's bin holds its
    interpreter links and the console scripts installed into it, nothing else. None for a base
    installation (/usr, a conda or pyenv prefix), whose bin directory other programs share."""
    if realpath(sys.prefix) == realpath(sys.base_prefix):
        return None
    if not os.path.isfile(os.path.join(sys.prefix, "pyvenv.cfg")):
        return None
    d = realpath(os.path.join(sys.prefix, "bin"))
    if d in _shared_bins(sys.base_prefix) or not os.path.isdir(d):
        return None
    return d


def python_paths() -> list[str]:
    """{python}: the interpreter, not its directory.

    - the interpreter file: sys.executable (and the base interpreter a venv was made from) as
      the real file it resolves to: a venv's bin/python -> /usr/bin/python3 -> python3.11
      grants /usr/bin/python3.11 alone, never /usr/bin;
    - in a virtual environment, the python* entries of its bin and the real files they resolve
      to, and that bin directory itself (``environment_bin``: the environment's own, holding its
      interpreter links and console scripts); never a directory other programs share (/usr/bin,
      /usr/local/bin, a conda or pyenv prefix's bin);
    - the ELF loader (the kernel runs it for every dynamic program, the interpreter included;
      what it may map is what the mount namespace leaves executable).
    """
    exe = sys.executable
    out = [realpath(exe)]
    base_exe = getattr(sys, "_base_executable", None)
    if base_exe and os.path.isfile(base_exe):
        out.append(realpath(base_exe))
    env_bin = environment_bin()
    if env_bin:
        for d in (os.path.dirname(exe), os.path.join(sys.prefix, "bin")):
            if realpath(d) == env_bin:
                out += _interpreter_files(d)
    out += [realpath(p) for p in ELF_LOADERS if os.path.exists(p)]
    if env_bin:
        out.append(env_bin)
    return list(dict.fromkeys(out))


def python_program_dirs() -> list[str]:
    """Directories that hold a {python} interpreter file but are not granted whole: other programs
    there (a conda prefix's bash or curl) must not be mapped by the ELF loader either, so the mount
    namespace mounts them noexec like PROGRAM_DIRS (binding the interpreter files back)."""
    env_bin = environment_bin()
    out = []
    for p in python_paths():
        if p == env_bin or p in (realpath(x) for x in ELF_LOADERS if os.path.exists(x)):
            continue
        d = os.path.dirname(p)
        if d != env_bin:
            out.append(d)
    return list(dict.fromkeys(out))


def python_only_bin(policy, ctx) -> str | None:
    """A virtual environment's own bin where exec.allow grants it only through {python}, for its
    interpreter links and console scripts: the ELF programs a wheel put there (ruff, uv) are not
    granted (mounted noexec, left out of Landlock's exec grant). None where there is no such bin,
    or where the profile names it by another entry ({system}, the path itself): granted whole."""
    env_bin = environment_bin()
    if env_bin is None or "{python}" not in policy.data["exec"]["allow"]:
        return None
    others = ctx.expand_paths([e for e in policy.data["exec"]["allow"] if e != "{python}"])
    return None if env_bin in (realpath(d) for d in others) else env_bin


def stdlib_dir() -> str:
    return os.path.dirname(os.__file__)


def trusted_paths() -> list[str]:
    """What the trusted start runs or reads, and what the kernel maps as code: the
    interpreter (and its real path), the environment (sys.prefix: pyvenv.cfg, bin,
    site-packages with its extension modules) and the base installation (the standard
    library, lib-dynload, libpython), this package and the child-process guard hook.
    Inside the sandbox each is read-only wherever it lies in a writable directory (and so
    keeps exec: W^X)."""
    exe = sys.executable
    real = realpath(exe)
    out = [exe, real, os.path.dirname(real), sys.prefix, sys.base_prefix, stdlib_dir(),
           resources.PACKAGE_DIR, resources.guard_hook_path()]
    for d in (sys.prefix, os.path.dirname(os.path.dirname(exe))):
        cfg = os.path.join(d, "pyvenv.cfg")
        if os.path.exists(cfg):
            out.append(cfg)
    return list(dict.fromkeys(out))
