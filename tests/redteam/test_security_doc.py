"""docs/security.md and the red-team suite name the same attempts, with the same layers.

Collects tests/redteam in a child pytest (no kernel starts) and checks that every attempt
(a test id without its root/user parameter) has a row in the document's table naming the
layer and hard/soft its @attempt marker names, and that every row names a test that exists."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

from testenv import REPO
DOC = REPO / "docs" / "security.md"


def normalize(nodeid: str) -> str:
    """tests/redteam/test_x.py::test_y[root-tmp] -> test_x.py::test_y[tmp]."""
    path, _, name = nodeid.partition("::")
    base, _, params = name.partition("[")
    parts = [p for p in params.rstrip("]").split("-") if p and p not in ("root", "user")] if params else []
    return f"{Path(path).name}::{base}" + (f"[{'-'.join(parts)}]" if parts else "")


def collected(tmp_path) -> dict[str, dict]:
    out = tmp_path / "attempts.json"
    env = dict(os.environ, SBX_RT_LIST_ATTEMPTS=str(out))
    p = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider",
                        str(REPO / "tests" / "redteam")], cwd=REPO, env=env, capture_output=True, text=True)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    rows = {}
    for row in json.loads(out.read_text()):
        rows[normalize(row["nodeid"])] = row
    return rows


def doc_rows() -> dict[str, dict]:
    rows = {}
    for line in DOC.read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) < 5:
            continue
        ids = re.findall(r"`(test_[a-z_]+\.py::[^`]+)`", cells[-1])
        for i in ids:
            rows[i] = {"layer": cells[1], "hard": cells[2]}
    return rows


def test_security_doc_lists_every_attempt(tmp_path):
    tests, doc = collected(tmp_path), doc_rows()
    assert len(tests) >= 40, f"the red-team suite has {len(tests)} attempts; it must have at least 40"
    missing = sorted(set(tests) - set(doc))
    assert not missing, "attempts without a row in docs/security.md:\n" + "\n".join(missing)
    stale = sorted(set(doc) - set(tests))
    assert not stale, "rows of docs/security.md naming no test:\n" + "\n".join(stale)
    for tid, row in tests.items():
        layers = row["layer"].split("+")
        assert all(layer in doc[tid]["layer"] for layer in layers), (tid, row["layer"], doc[tid]["layer"])
        assert doc[tid]["hard"] == ("hard" if row["hard"] else "soft"), (tid, doc[tid])
