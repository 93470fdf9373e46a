"""JupyterLab in Chromium on a pooled kernel (docs/pool.md): a kernelspec written with
`install --pool 1`, the first notebook of a directory arming the pool, the second handed a pooled
kernel; then the server stops and no pooled kernel or connection file of one is left. Uses the
browser test's server fixture and helpers (tests/deploy/test_jupyterlab_browser.py)."""

from __future__ import annotations

import os
import re
import signal
from pathlib import Path

import kernelutil
import pytest

from sandbox_kernel import install
from test_jupyterlab_browser import CHROMIUM, CHROMIUM_ARGS, TOKEN, lab, output_of, run_cell  # noqa: F401

pytestmark = [pytest.mark.kernel, pytest.mark.slow, pytest.mark.e2e]


POOLED_NAME = "sandbox-free-pooled"
POOLED_DISPLAY = "Python 3 (sandbox: free, pooled)"


def _write_notebook(path: Path, who) -> None:
    import nbformat

    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": POOLED_NAME, "display_name": POOLED_DISPLAY, "language": "python"}
    nb.cells = [nbformat.v4.new_code_cell("")]
    nbformat.write(nb, str(path))
    if who:
        os.chown(path, who.pw_uid, who.pw_gid)


def test_notebook_in_jupyterlab_on_a_pooled_kernel(lab, who):  # noqa: F811 - the fixture imported above
    """A kernelspec written with `install --pool 1`; the first notebook of the directory
    starts cold and arms the pool; the second is handed a pooled kernel (SANDBOX_KERNEL_POOLED),
    which refuses what the profile denies and runs normal work."""
    import poolutil
    from playwright.sync_api import sync_playwright

    srv, base, root = lab
    name, spec = install.prepare("free", name=POOLED_NAME, display_name=POOLED_DISPLAY, pool=1)
    spec["metadata"]["kernel_provisioner"]["config"]["refill_delay"] = 0.2
    install.install_prepared(name, spec, prefix=str(kernelutil.PREFIX))
    for nb in ("first.ipynb", "second.ipynb"):
        _write_notebook(root / nb, who)
    ws = f"pooled-{os.urandom(4).hex()}"
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 800})
            page.set_default_timeout(120_000)
            # workspaces of their own: the default one would reopen what earlier runs left open
            page.goto(f"{base}/lab/workspaces/{ws}-1/tree/first.ipynb?token={TOKEN}")
            page.locator(".jp-NotebookPanel .jp-Toolbar-kernelName", has_text=POOLED_DISPLAY).first.wait_for()
            page.locator('.jp-NotebookPanel .jp-Notebook-ExecutionIndicator[data-status="idle"]').first.wait_for()
            run_cell(page, 0, "import os\nprint('pooled:', os.environ.get('SANDBOX_KERNEL_POOLED', 'cold'))")
            first = output_of(page, 0, "pooled:")
            # the server's pool now starts a kernel for this directory and environment
            assert kernelutil.wait_for(lambda: poolutil.processes_with_env("SANDBOX_KERNEL_POOL="), timeout=120)
            page2 = browser.new_page(viewport={"width": 1280, "height": 800})
            page2.set_default_timeout(120_000)
            page.close()  # (its workspace would be restored in the second page too)
            page2.goto(f"{base}/lab/workspaces/{ws}-2/tree/second.ipynb?token={TOKEN}")
            page2.locator(".jp-NotebookPanel .jp-Toolbar-kernelName", has_text=POOLED_DISPLAY).first.wait_for()
            page2.locator('.jp-NotebookPanel .jp-Notebook-ExecutionIndicator[data-status="idle"]').first.wait_for()
            # (one cell: the refused import is made at run time, past the pre-execution check, so that the
            # import guard refuses it after the prints)
            run_cell(page2, 0, "import os, importlib\nprint('pooled:', os.environ.get('SANDBOX_KERNEL_POOLED', 'cold'))\n"
                               "print('uid:', os.getuid(), 'cwd:', os.getcwd())\n"
                               "importlib.import_module(os.environ.get('SBX_NO_SUCH_VARIABLE', 'ro' + 'op'))")
            second = output_of(page2, 0, "ProhibitedImportError")
        finally:
            browser.close()
            for f in (Path(who.pw_dir if who else os.path.expanduser("~")) / ".jupyter/lab/workspaces").glob(f"{ws}-*"):
                f.unlink()
    assert "pooled: cold" in "\n".join(first), first
    text = "\n".join(second)
    found = re.search(r"pooled: (\S+)", text)
    assert found and poolutil.UUID.fullmatch(found.group(1)), text
    assert f"uid: {who.pw_uid if who else 0} cwd: {os.path.realpath(root)}" in text, text
    assert "import of 'roop' is refused by sandbox profile 'free'" in text, text
    # the server stops (SIGTERM, as its service manager would): no pooled kernel survives it,
    # and no connection file of one is left in its runtime directory
    waiting = {pid: _pool_id(pid) for pid in poolutil.processes_with_env("SANDBOX_KERNEL_POOL=")}
    ids = {i for i in waiting.values() if i}
    assert ids, "the pool kept no kernel ready after the hand-off"
    runtime = Path(who.pw_dir if who else os.path.expanduser("~")) / ".local/share/jupyter/runtime"
    assert [i for i in ids if (runtime / f"kernel-{i}.json").exists()], "the waiting kernel's file is not where expected"
    srv.proc.send_signal(signal.SIGTERM)
    srv.proc.wait(60)
    assert poolutil.wait_gone(list(waiting), timeout=60), [p for p in waiting if poolutil.alive(p)]
    assert not [i for i in ids if (runtime / f"kernel-{i}.json").exists()]


def _pool_id(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/environ", "rb") as fh:
            for item in fh.read().split(b"\0"):
                if item.startswith(b"SANDBOX_KERNEL_POOL="):
                    return item.split(b"=", 1)[1].decode()
    except OSError:
        pass
    return ""
