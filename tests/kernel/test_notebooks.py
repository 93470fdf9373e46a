"""Notebooks run by the tools platforms schedule them with: papermill (and so nbclient),
through real sandboxed kernels; and the tour's own runner (examples/run_tour.py)."""

from __future__ import annotations

import importlib.util
import json
import os
import pwd
import subprocess
import sys
from pathlib import Path

import kernelutil
import nbformat
import pytest
from testenv import REPO
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

TOUR = REPO / "examples" / "tour.ipynb"
TAG = "raises-exception"


def _run_tour_module():
    spec = importlib.util.spec_from_file_location("run_tour", REPO / "examples" / "run_tour.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def papermill(src: Path, out: Path, kernel: str, cwd: str, user: pwd.struct_passwd | None = None):
    """`papermill -k KERNEL SRC OUT --cwd CWD`, as root or (setpriv) as an ordinary user."""
    env = dict(os.environ)
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
    argv = [sys.executable, "-m", "papermill", "-k", kernel, str(src), str(out), "--cwd", cwd,
            "--no-progress-bar", "--start-timeout", "120"]
    if user is not None:
        env.update(HOME=user.pw_dir, USER=user.pw_name, LOGNAME=user.pw_name)
        env.pop("TMPDIR", None)
        argv = ["setpriv", f"--reuid={user.pw_uid}", f"--regid={user.pw_gid}", "--init-groups", "--"] + argv
    return subprocess.run(argv, capture_output=True, text=True, env=env, cwd=cwd, timeout=600)


def _workdir(tmp_path: Path, who) -> Path:
    return Path(kernelutil.user_workdir(who)) if who else tmp_path


def _errors(cell) -> list:
    return [o for o in cell.get("outputs", []) if o.get("output_type") == "error"]


def _text(cell) -> str:
    return "".join(o.get("text", "") for o in cell.get("outputs", []) if o.get("output_type") == "stream")


# --------------------------------------------------------------------------- the tour


def test_tour_tags_exactly_the_cells_that_raise():
    """Every intended refusal that raises carries `raises-exception`, and nothing else does;
    the `sandbox` metadata run_tour.py reads is kept."""
    nb = nbformat.read(str(TOUR), as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(c.metadata["sandbox"]["expect"] in ("allowed", "refused") and c.metadata["sandbox"]["why"]
               for c in code)
    for c in code:
        if TAG in c.metadata.get("tags", []):
            assert c.metadata["sandbox"]["expect"] == "refused", c.source
    # refused in a child process's output (no exception in the cell): the only untagged refusal
    untagged = [c.source for c in code if c.metadata["sandbox"]["expect"] == "refused"
                and TAG not in c.metadata.get("tags", [])]
    assert untagged == ["!cd {workdir}/cloned && python run.py"]


@pytest.mark.kernel
@pytest.mark.slow  # a notebook run through a real kernel: 10 to 25 s each
def test_papermill_runs_the_tour_to_the_end(tmp_path, who):
    """`papermill -k <free kernelspec> examples/tour.ipynb out.ipynb`: every cell runs; the
    intended refusals are error outputs; no other cell fails."""
    kernel = kernelutil.install_spec("free")
    work = _workdir(tmp_path, who)
    src = work / "tour.ipynb"
    src.write_text(TOUR.read_text())
    out = work / "out.ipynb"
    if who:
        os.chown(src, who.pw_uid, who.pw_gid)
    proc = papermill(src, out, kernel, str(work), who)
    assert out.exists(), proc.stderr[-3000:]
    nb = nbformat.read(str(out), as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert len(code) == 15
    assert all(c.execution_count is not None for c in code), "a cell did not run"
    for c in code:
        meta = c.metadata["sandbox"]  # kept in the output for run_tour.py
        errors = _errors(c)
        if TAG in c.metadata.get("tags", []):
            assert len(errors) == 1, (c.source, c.outputs)
            # (a write outside the writable directories: EACCES from Landlock, or EROFS, an
            # OSError, from the read-only view of / where the mount namespace is first)
            assert errors[0]["ename"] in ("ProhibitedImportError", "ProhibitedCommandError", "PermissionError") \
                or (errors[0]["ename"] == "OSError" and "[Errno 30]" in errors[0]["evalue"]), errors
        else:
            assert not errors, (c.source, errors)
            if meta["expect"] == "refused":  # the child interpreter's refusal, in its output
                assert "ProhibitedImportError" in _text(c), c.outputs
    assert _text(code[1]).startswith("profile: free")        # !sandbox-kernel doctor | head -8 ...
    assert "Traceback" not in _text(code[1]) and "BrokenPipeError" not in _text(code[1])  # ... quietly
    assert "CUDA available: False" in _text(code[-1])
    # papermill (2.7 and earlier) fails a run on any error output, tagged or not: its one
    # complaint must be an intended refusal, never another cell.
    if proc.returncode != 0:
        assert "PapermillExecutionError" in proc.stderr, proc.stderr[-3000:]
        last_tagged = [c for c in code if TAG in c.metadata.get("tags", [])][-1]
        assert f'Exception encountered at "In [{last_tagged.execution_count}]"' in proc.stderr, proc.stderr[-3000:]


@pytest.mark.kernel
@pytest.mark.slow  # a notebook run through a real kernel: 10 to 25 s each
def test_jupyter_execute_runs_the_tour_and_succeeds(tmp_path):
    """nbclient's own command honours the tag all the way: every cell runs and the run succeeds."""
    kernel = kernelutil.install_spec("free")
    (tmp_path / "tour.ipynb").write_text(TOUR.read_text())
    env = dict(os.environ)
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
    proc = subprocess.run([os.path.join(os.path.dirname(sys.executable), "jupyter-execute"),
                           f"--kernel_name={kernel}", "--output=out.ipynb", "tour.ipynb"],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    code = [c for c in nbformat.read(str(tmp_path / "out.ipynb"), as_version=4).cells if c.cell_type == "code"]
    assert all(c.execution_count is not None for c in code)
    assert [bool(_errors(c)) for c in code] == [TAG in c.metadata.get("tags", []) for c in code]
    assert "CUDA available: False" in _text(code[-1])
    # the tour leaves nothing beside the notebook (its "cloned repository" goes to a temporary directory)
    assert sorted(os.listdir(tmp_path)) == ["out.ipynb", "tour.ipynb"], os.listdir(tmp_path)
    # what run_tour.py (scripts/demo.sh) prints for each allowed cell is a whole line, not a fragment
    classify = _run_tour_module().classify
    for c in code:
        got, detail = classify(c)
        if got == "allowed" and detail:
            assert detail.count("[") == detail.count("]") and detail.count("(") == detail.count(")"), detail
    assert classify(code[-1]) == ("allowed", "torch works: ones(2, 2) @ ones(2, 2) = [[2.0, 2.0], [2.0, 2.0]]")


# --------------------------------------------------------------------------- a plain notebook


@pytest.mark.kernel
@pytest.mark.slow  # a notebook run through a real kernel: 10 to 25 s each
def test_papermill_fails_a_notebook_with_a_refused_import(tmp_path, who):
    """No tags: the refusal fails the run, stops it there, and is recorded in the output."""
    kernel = kernelutil.install_spec("free")
    work = _workdir(tmp_path, who)
    src = work / "job.ipynb"
    nbformat.write(new_notebook(cells=[
        new_markdown_cell("# nightly job"),
        new_code_cell("print('loading data')"),
        new_code_cell("import json\nimport roop"),
        new_code_cell("print('after the refusal')"),
    ], metadata={"kernelspec": {"name": kernel, "display_name": kernel, "language": "python"}}), str(src))
    if who:
        os.chown(src, who.pw_uid, who.pw_gid)
    out = work / "job-out.ipynb"
    proc = papermill(src, out, kernel, str(work), who)
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "PapermillExecutionError" in proc.stderr
    assert "ProhibitedImportError: import of 'roop' is refused by sandbox profile 'free'" in proc.stderr
    nb = nbformat.read(str(out), as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert "loading data" in _text(code[0])
    (err,) = _errors(code[1])
    assert err["ename"] == "ProhibitedImportError"
    assert "import of 'roop' is refused by sandbox profile 'free'" in err["evalue"]
    assert code[2].execution_count is None and not code[2].outputs, "the run went on after the refusal"
    # papermill marks the failure at the top of the output notebook
    assert any("papermill-error-cell-tag" in c.metadata.get("tags", []) for c in nb.cells if c.cell_type == "markdown")


# --------------------------------------------------------------------------- run_tour.py


def test_run_tour_wraps_messages_at_word_boundaries():
    rt = _run_tour_module()
    words = [f"word{i:03}" for i in range(120)]
    detail = "ProhibitedImportError: " + " ".join(words)
    lines = rt.detail_lines(detail)
    assert len(lines) == rt.DETAIL_LINES
    assert lines[0].startswith(rt.INDENT + "-> ProhibitedImportError: word000 ")
    assert all(line.startswith(rt.INDENT + "   ") for line in lines[1:])
    assert lines[-1].endswith(" …")
    shown = " ".join(line[len(rt.INDENT) + 3:] for line in lines).removesuffix(" …").split()
    assert shown[0] == "ProhibitedImportError:" and shown[1:] == words[:len(shown) - 1], "a word was cut"
    assert all(len(line) <= len(rt.INDENT) + 3 + rt.DETAIL_WIDTH for line in lines)
    # a short message is shown whole, on one line; a long path is never split
    assert rt.detail_lines("PermissionError: [Errno 1] mount refused by seccomp") == [
        rt.INDENT + "-> PermissionError: [Errno 1] mount refused by seccomp"]
    path = "/very/long/" + "x" * 150 + "/kernel.py"
    assert any(path in line for line in rt.detail_lines(f"Permission denied: {path} is read-only"))
    assert rt.detail_lines("") == []


@pytest.mark.kernel
@pytest.mark.slow  # a notebook run through a real kernel: 10 to 25 s each
def test_papermill_under_a_violation_policy_warns_then_stops(tmp_path, who, monkeypatch):
    """papermill on a kernel whose profile stops at the 2nd violation: the first banned import's
    cell holds the platform's notice, the second's the reason the kernel was stopped; papermill
    reports the dead kernel; the trail holds the stop; the tenant's next run is refused."""
    tenant = "pm-" + os.urandom(4).hex()
    log = kernelutil.AUDIT_DIR / f"{tenant}.jsonl"
    kernelutil.write_profile("pm-violations", f"""
        extends: free
        audit:
          log: {log}
          violations:
            notice: "NOTICE: prohibited code"
            stop_after: 2
            block_seconds: 600
        """)
    monkeypatch.setenv("SANDBOX_KERNEL_TENANT", tenant)
    kernel = kernelutil.install_spec("pm-violations")
    cell = ("try:\n    __import__(''.join(chr(c) for c in (114, 111, 111, 112)))\n"
            "except ImportError as e:\n    print('refused:', type(e).__name__)\nimport time\ntime.sleep(3)\n")
    work = _workdir(tmp_path, who)
    src, out = work / "v.ipynb", work / "v-out.ipynb"
    nbformat.write(new_notebook(cells=[new_code_cell(cell), new_code_cell(cell), new_code_cell("print('after')")]),
                   str(src))
    if who:
        os.chown(src, who.pw_uid, who.pw_gid)
    proc = papermill(src, out, kernel, str(work), who)
    assert proc.returncode != 0
    nb = nbformat.read(str(out), as_version=4)
    first, second, third = nb.cells
    assert "NOTICE: prohibited code" in _text(first) and "refused: ProhibitedImportError" in _text(first)
    assert "this kernel was stopped by the platform's violation policy" in _text(second), second.outputs
    assert "after" not in _text(third)
    events = [json.loads(line) for line in log.read_text().splitlines()]
    assert any(e["what"] == "kernel stopped" and e["tenant"] == tenant for e in events)
    again = papermill(src, work / "v-again.ipynb", kernel, str(work), who)
    assert again.returncode != 0
    assert any(e["what"] == "kernel refused" and e["tenant"] == tenant
               for e in (json.loads(line) for line in log.read_text().splitlines()))
