"""Run examples/tour.ipynb through the sandboxed kernel (nbclient) and print what was
allowed and what was refused. Exit 1 when a cell did not behave as its metadata expects."""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import textwrap

import nbformat
from nbclient import NotebookClient

REFUSAL_MARKS = ("refused by sandbox", "ProhibitedImportError", "Permission denied", "Operation not permitted")
DETAIL_WIDTH = 100  # characters per line of a message
DETAIL_LINES = 4    # longer messages end at a word boundary with an ellipsis
INDENT = " " * 17


def detail_lines(detail: str) -> list[str]:
    """The message under a cell's line: wrapped at word boundaries, never cut mid-word;
    past DETAIL_LINES lines it ends with an ellipsis."""
    lines = textwrap.wrap(detail, width=DETAIL_WIDTH, max_lines=DETAIL_LINES, placeholder=" …",
                          break_long_words=False, break_on_hyphens=False)
    return [f"{INDENT}{'-> ' if i == 0 else '   '}{line}" for i, line in enumerate(lines)]


def classify(cell) -> tuple[str, str]:
    for out in cell.get("outputs", []):
        if out.get("output_type") == "error":
            first = out["evalue"].splitlines()[0] if out["evalue"] else ""
            rule = [line for line in out.get("traceback", []) if "sandbox: refused by profile" in line]
            return "refused", f"{out['ename']}: {first}" + (f" [{rule[0].split(': ', 2)[-1]}]" if rule else "")
    text = "".join(o.get("text", "") for o in cell.get("outputs", []) if o.get("output_type") == "stream")
    for line in text.splitlines():
        if any(m in line for m in REFUSAL_MARKS):
            return "refused", line.strip()
    last = text.strip().splitlines()[-1] if text.strip() else ""
    return "allowed", last


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("notebook", nargs="?", default=os.path.join(os.path.dirname(__file__), "tour.ipynb"))
    ap.add_argument("--kernel", default="sandbox-default", help="kernelspec name (default: sandbox-default)")
    args = ap.parse_args()
    nb = nbformat.read(args.notebook, as_version=4)
    workdir = tempfile.mkdtemp(prefix="sandbox-tour-")
    client = NotebookClient(nb, kernel_name=args.kernel, allow_errors=True, timeout=300,
                            resources={"metadata": {"path": workdir}})
    client.execute()
    mismatches = 0
    print(f"\nsandbox-kernel tour: kernel {args.kernel}, working directory {workdir}\n")
    for i, cell in enumerate(nb.cells, 1):
        if cell.cell_type != "code":
            continue
        got, detail = classify(cell)
        meta = cell.metadata.get("sandbox", {})
        want = meta.get("expect", got)
        mark = "ok " if got == want else "!! "
        mismatches += got != want
        src = cell.source.splitlines()[0] if cell.source else ""
        print(f"{mark}cell {i:2} {got.upper():8} {src if len(src) <= 60 else src[:59] + '…'}")
        if meta.get("why"):
            print(f"{INDENT}why: {meta['why']}")
        for line in detail_lines(detail):
            print(line)
    print(f"\n{'all cells behaved as expected' if not mismatches else f'{mismatches} cell(s) did not behave as expected'}")
    return 1 if mismatches else 0


if __name__ == "__main__":
    sys.exit(main())
