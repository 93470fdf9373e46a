"""Rewrite the attempts table of docs/security.md from the red-team suite and a run of it.

    python -m pytest tests/redteam --junitxml=/tmp/redteam.xml
    python tests/redteam/security_table.py /tmp/redteam.xml "main at <commit>" [/tmp/before.xml]

The optional third argument is a run of new attempts on the code before their fix: it fills
the "before the fixes" cell of rows that have none yet.

Rows keep their hand-written attempt text; an attempt without a row gets one from its test's
docstring (edit it afterwards); the layer and hard/soft columns come from the @attempt
markers; the "today" column from the run: holds (the effect did not happen), **fails** (it
did), skipped (the host itself refuses the resource). test_security_doc.py checks that the
table and the suite stay in step.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]  # (run as a script: the red-team and the tests directory)
from testenv import REPO  # noqa: E402
from test_security_doc import normalize  # noqa: E402

DOC = REPO / "docs" / "security.md"


def attempts() -> dict[str, dict]:
    with tempfile.TemporaryDirectory() as d:
        out = Path(d) / "attempts.json"
        subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", str(HERE)],
                       cwd=REPO, env=dict(os.environ, SBX_RT_LIST_ATTEMPTS=str(out)), check=True, capture_output=True)
        rows = json.loads(out.read_text())
    return {normalize(r["nodeid"]): r for r in rows}


def results(junit: str) -> dict[str, dict[str, str]]:
    """normalized test id -> {"root"|"user": "holds"|"**fails**"|"skipped"}"""
    out: dict[str, dict[str, str]] = {}
    for case in ET.parse(junit).getroot().iter("testcase"):
        name = case.get("name", "")
        params = name.partition("[")[2].rstrip("]").split("-") if "[" in name else []
        who = "user" if "user" in params else "root"
        path = case.get("classname", "").replace(".", "/") + ".py"
        tid = normalize(f"{path}::{name}")
        state = ("**fails**" if case.find("failure") is not None or case.find("error") is not None else
                 "skipped" if case.find("skipped") is not None else "holds")
        out.setdefault(tid, {})[who] = state
    return out


def main(junit: str, label: str, before_junit: str | None = None) -> None:
    tests, ran = attempts(), results(junit)
    earlier = results(before_junit) if before_junit else {}
    text = DOC.read_text()
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("| attempt |"))
    end = start + 2
    while end < len(lines) and lines[end].startswith("|"):
        end += 1
    described: dict[str, str] = {}
    before: dict[str, str] = {}
    has_before = "before" in lines[start]
    for line in lines[start + 2:end]:
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        for tid in re.findall(r"`(test_[a-z_]+\.py::[^`]+)`", cells[-1]):
            described[tid] = cells[0]
            before[tid] = cells[3]  # the results on the code before the fixes (failing first)
    rows = []
    for tid in sorted(tests, key=lambda t: (t.split("::")[0], list(tests).index(t))):
        row = tests[tid]
        what = described.get(tid) or (row.get("doc") or tid).split(". ")[0].rstrip(".")
        layer = " + ".join(row["layer"].split("+"))
        got = ran.get(tid, {})
        today = f"{got.get('root', 'not run')} / {got.get('user', 'not run')}"
        was = before.get(tid, "—")
        if was == "—" and tid in earlier:  # a new attempt, run on the code before its fix
            was = f"{earlier[tid].get('root', 'not run')} / {earlier[tid].get('user', 'not run')}"
        rows.append(f"| {what} | {layer} | {'hard' if row['hard'] else 'soft'} | {was} | "
                    f"{today} | `{tid}` |")
    lines[start:end] = ["| attempt | layer | | before the fixes (root / user) | now (root / user) | test |",
                        "|---|---|---|---|---|---|"] + rows
    del has_before
    text = "\n".join(lines) + "\n"
    text = re.sub(r"- \*\*(today|now)\*\*: [^\n]*(\n  [^\n]*)*", "- **before the fixes**: the run of branch "
                  "`redteam` on `main` at e165f97 (before the trusted-start, PID-namespace, private-view and seccomp "
                  "work of issues 8 and 9); `—` for attempts written with their fix (the seccomp helper's, whose "
                  "failing-first runs are in the message of commit d9d7f8b).\n"
                  f"- **now**: a run on {label}, on Linux 6.18, Landlock ABI 7, as root and as the ordinary user "
                  "`sbxtest`. **fails** means the attack worked; `skipped` means the host itself refuses the "
                  "resource (the attempt would prove nothing here).", text, count=1)
    DOC.write_text(text)
    print(f"{len(rows)} rows; {sum('**fails**' in r for r in rows)} with a failure")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else "main", sys.argv[3] if len(sys.argv) > 3 else None)
