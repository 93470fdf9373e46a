"""`sandbox-kernel check`: static scan of notebooks before they are shared or scheduled."""

from __future__ import annotations

import json
import os
import sys

from .errors import SandboxError
from .policy import effective
from .precheck import scan_cell


def _cells(path: str) -> list[tuple[int, str]]:
    """(execution-order cell number, source) of each code cell; a clear error for a broken file."""
    try:
        with open(path, encoding="utf-8") as fh:
            nb = json.load(fh)
    except OSError as e:
        raise SandboxError(f"{path}: cannot read the notebook ({e.strerror})") from None
    except ValueError as e:
        raise SandboxError(f"{path}: not a notebook (invalid JSON: {e})") from None
    if not isinstance(nb, dict) or not isinstance(nb.get("cells"), list):
        raise SandboxError(f"{path}: not a notebook (no 'cells' list); expected an .ipynb file (nbformat 4)")
    out = []
    for i, cell in enumerate(nb["cells"], 1):
        if not isinstance(cell, dict) or cell.get("cell_type") != "code":
            continue
        src = cell.get("source", "")
        out.append((i, "".join(src) if isinstance(src, list) else str(src)))
    return out


def check_notebooks(paths: list[str], profile: str, *, as_json: bool = False) -> int:
    policy = effective(profile)
    results = []
    for path in paths:
        cwd = os.path.dirname(os.path.abspath(path))
        for number, source in _cells(path):
            for f in scan_cell(source, policy, cwd=cwd):
                results.append({"notebook": path, "cell": number, "line": f.line, "kind": f.kind, "what": f.what,
                                "category": f.rule["category"], "message": f.message(policy.label)})
    if as_json:
        print(json.dumps(results, indent=1))
    else:
        for r in results:
            print(f"{r['notebook']}: cell {r['cell']}: {r['message']}")
        found = len(results)
        print(f"{found} finding{'s' if found != 1 else ''} under profile '{policy.label}' "
              f"in {len(paths)} notebook{'s' if len(paths) != 1 else ''}", file=sys.stderr)
    return 1 if results else 0
