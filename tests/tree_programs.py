"""ELF programs kept outside the system's program directories, run through the ELF loader from a
cell: in packages' own trees below the library directories (a JDK, LLVM, PostgreSQL: their bin
directories, layers/program_trees.py), among libraries or in a directory of programs only (Chromium
beside its libraries, systemd's helpers: layers/program_files.py), and in the Python environment's
bin directory, which {python} grants for its console scripts (ruff, an ELF program a wheel put
there). The red-team attempt under `offline` (tests/redteam/test_exec.py) and its control where
exec.allow names the directory (tests/layers/test_mount_namespace.py) run the same cell and judge
it the same way."""

from __future__ import annotations

import glob
import json
import os
import re
import sys

import pytest

LOADER = "/lib64/ld-linux-x86-64.so.2"
# kind -> (where it is installed, the argument, a pattern of what it prints when it ran)
TREES = {"jvm": ("/usr/lib/jvm/*/bin/java", "-version", r'(openjdk|java) version "\d+'),
         "llvm": ("/usr/lib/llvm-*/bin/llvm-config", "--version", r"^\d+\.\d+\.\d+"),
         "postgresql": ("/usr/lib/postgresql/*/bin/postgres", "--version", r"\(PostgreSQL\) \d+"),
         "chromium": ("/usr/lib/chromium/chromium", "--version", r"^Chromium \d+"),
         "systemd": ("/usr/lib/systemd/systemd-socket-proxyd", "--version", r"^systemd \d+"),
         "venv": (os.path.join(sys.prefix, "bin", "ruff"), "--version", r"^ruff \d+")}
TAG = "TREE-RUN:"

CELL = r"""
import json as _tj, os as _to, subprocess as _ts
try:
    _p = _ts.run([_to.path.realpath({loader!r}), {program!r}, {arg!r}], capture_output=True, timeout=120)
    _r = [_p.returncode, (_p.stdout + _p.stderr).decode(errors="replace")[-2000:]]
except Exception as e:
    _r = [None, repr(e)]
print({tag!r} + _tj.dumps(_r), flush=True)
"""


def installed(kind: str) -> bool:
    return os.path.exists(LOADER) and any(os.path.isfile(p) and os.access(p, os.X_OK)
                                          for p in glob.glob(TREES[kind][0]))


def find(kind: str) -> tuple[str, str, str]:
    """(program, argument, pattern) of the first `kind` installed here; skips where none is,
    or where this is not an x86-64 glibc system."""
    if not os.path.exists(LOADER):
        pytest.skip(f"not an x86-64 glibc system ({LOADER} is missing)")
    pattern, arg, expect = TREES[kind]
    found = sorted(p for p in glob.glob(pattern) if os.path.isfile(p) and os.access(p, os.X_OK))
    if not found:
        pytest.skip(f"no {pattern} is installed here")
    return found[0], arg, expect


def cell(program: str, arg: str) -> str:
    """A cell running `LOADER program arg` that prints [exit status, output] on a TAG line."""
    return CELL.format(loader=LOADER, program=program, arg=arg, tag=TAG)


def result(stdout: str) -> list:
    """[exit status (None: it could not be started), output] from what `cell` printed."""
    lines = [line for line in stdout.splitlines() if line.startswith(TAG)]
    assert lines, f"the cell reported nothing:\n{stdout}"
    return json.loads(lines[-1][len(TAG):])


def ran(res: list, expect: str) -> bool:
    """The program ran: exit status 0 and what it prints (never a loader's error)."""
    rc, out = res
    return rc == 0 and re.search(expect, out, re.M) is not None and "error while loading" not in out
