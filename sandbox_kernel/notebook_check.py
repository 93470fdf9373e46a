"""`sandbox-kernel check`: static scan of notebooks before they are shared or scheduled."""

from __future__ import annotations

import json
import os
import sys

from .errors import SandboxError
from .policy import effective
from .precheck import scan_cell


def _cells(path: str) -> list[tuple[int, str]]:
    """(cell number, source) of each code cell; a clear error for a broken file.

    The number is the cell's 1-based position in the notebook, markdown and raw cells
    included, as a reader counts them.
    """
    try:
        with open(path, encoding="utf-8") as fh:
            nb = json.load(fh)
    except OSError as e:
        raise SandboxError(f"{path}: cannot read the notebook ({e.strerror})") from None
    except UnicodeDecodeError:
        raise SandboxError(f"{path}: not a notebook (not UTF-8 text); expected an .ipynb file (nbformat 4)") from None
    except ValueError as e:
        raise SandboxError(f"{path}: not a notebook (invalid JSON: {e})") from None
    except RecursionError:
        raise SandboxError(f"{path}: not a notebook (JSON nested too deeply)") from None
    if not isinstance(nb, dict) or not isinstance(nb.get("cells"), list):
        raise SandboxError(f"{path}: not a notebook (no 'cells' list); expected an .ipynb file (nbformat 4)")
    out = []
    for i, cell in enumerate(nb["cells"], 1):
        if not isinstance(cell, dict) or cell.get("cell_type") != "code":
            continue
        src = cell.get("source", "")
        if isinstance(src, list) and all(isinstance(s, str) for s in src):
            src = "".join(src)
        if not isinstance(src, str):
            raise SandboxError(f"{path}: cell {i}: 'source' is not text (a string or a list of strings)")
        out.append((i, src))
    return out


def check_notebooks(paths: list[str], profile: str, *, as_json: bool = False) -> int:
    """Print the findings; 1 when something is found or a file is not a notebook."""
    policy = effective(profile)
    results = []
    broken = 0
    for path in paths:
        cwd = os.path.dirname(os.path.abspath(path))
        try:
            cells = _cells(path)
        except SandboxError as e:  # report it, and still scan the other notebooks
            broken += 1
            print(f"sandbox-kernel: error: {e}", file=sys.stderr)
            continue
        for number, source in cells:
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
              f"in {len(paths)} notebook{'s' if len(paths) != 1 else ''}"
              + (f"; {broken} could not be read" if broken else ""), file=sys.stderr)
    return 1 if results or broken else 0
