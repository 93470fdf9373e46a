"""JupyterLab end to end in a real browser: Playwright drives Debian's Chromium (headless,
no browser download) against `jupyter lab` on 127.0.0.1. From the launcher it opens a
notebook on "Python 3 (sandbox: free)", runs a cell importing a refused module and a
cell of normal work, and checks what the page shows. A screenshot is saved in the
test's directory (and into $SANDBOX_KERNEL_E2E_SCREENSHOTS when set, which is how
docs/images/jupyterlab-sandbox-free.png was made).
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path

import kernelutil
import pytest
import servers

from sandbox_kernel import install

CHROMIUM = "/usr/bin/chromium"
# As root Chromium needs --no-sandbox; the rest keep it from calling home (refused here).
CHROMIUM_ARGS = ["--no-sandbox", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--disable-gpu"]
DISPLAY_NAME = "Python 3 (sandbox: free)"
TOKEN = "lab-test-token-" + os.urandom(8).hex()

pytestmark = [pytest.mark.kernel, pytest.mark.slow, pytest.mark.e2e, pytest.mark.usefixtures("no_orphaned_specs")]


def _requirements():
    missing = []
    if not os.access(CHROMIUM, os.X_OK):
        missing.append(f"{CHROMIUM} (as root: apt-get install chromium; scripts/setup-e2e.sh does it)")
    for mod, pkg in (("playwright", "playwright"), ("jupyterlab", "jupyterlab")):
        try:
            __import__(mod)
        except ImportError:
            missing.append(f"the Python package {pkg} (pip install -e '.[e2e]')")
    if missing:
        pytest.skip("missing: " + "; ".join(missing))


@pytest.fixture
def lab(tmp_path, who):
    _requirements()
    install.install("free", prefix=str(kernelutil.PREFIX))
    root = Path(kernelutil.user_workdir(who)) if who else tmp_path / "notebooks"
    root.mkdir(exist_ok=True)
    # JupyterLab's user settings for this server only: no "Jupyter news?" question (it would fetch from the internet)
    # (under the suite's prefix: readable by the ordinary user too)
    settings = Path(tempfile.mkdtemp(prefix="lab-settings-", dir=kernelutil.PREFIX))
    (settings / "@jupyterlab" / "apputils-extension").mkdir(parents=True)
    (settings / "@jupyterlab" / "apputils-extension" / "notification.jupyterlab-settings").write_text(
        '{"fetchNews": "false"}')
    for d in (settings, settings / "@jupyterlab", settings / "@jupyterlab" / "apputils-extension"):
        os.chmod(d, 0o755)
    port = servers.free_port()
    env = dict(os.environ, JUPYTERLAB_SETTINGS_DIR=str(settings))
    env.pop("SANDBOX_KERNEL_CEILING", None)
    if who:
        env.update(HOME=who.pw_dir, USER=who.pw_name, LOGNAME=who.pw_name)
        env.pop("TMPDIR", None)
    argv = [sys.executable, "-m", "jupyterlab", "--no-browser", "--ip=127.0.0.1", f"--port={port}",
            "--port-retries=0", f"--IdentityProvider.token={TOKEN}", f"--ServerApp.root_dir={root}",
            "--LabApp.news_url=None", "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"]
    if not who:
        argv.append("--allow-root")
    srv = servers.Server("jupyterlab", argv, env=env, cwd=str(root), log_dir=tmp_path, user=who)
    base = f"http://127.0.0.1:{port}"
    try:
        srv.wait_http(f"{base}/api/status", headers={"Authorization": f"token {TOKEN}"})
        yield srv, base, root
    finally:
        srv.stop()
        shutil.rmtree(settings, ignore_errors=True)
        if who:
            shutil.rmtree(root, ignore_errors=True)


def run_cell(page, index: int, code: str) -> None:
    cell = page.locator(".jp-NotebookPanel:not(.lm-mod-hidden) .jp-Notebook .jp-Cell").nth(index)
    cell.locator(".cm-content").click()
    page.keyboard.insert_text(code)   # no key events: the editor's auto-closing brackets stay out of it
    page.keyboard.press("Shift+Enter")


def output_of(page, index: int, text: str, timeout_ms: int = 120_000):
    out = page.locator(".jp-NotebookPanel:not(.lm-mod-hidden) .jp-Notebook .jp-Cell").nth(index).locator(
        ".jp-OutputArea-output")
    out.filter(has_text=text).first.wait_for(timeout=timeout_ms)
    return out.all_inner_texts()


def test_notebook_in_jupyterlab_refuses_and_runs(lab, tmp_path, who):
    from playwright.sync_api import sync_playwright

    srv, base, root = lab
    shot = tmp_path / "jupyterlab-sandbox-free.png"
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 800})
            page.set_default_timeout(120_000)
            page.goto(f"{base}/lab?token={TOKEN}")
            card = page.locator(f'.jp-LauncherCard[data-category="Notebook"][title="{DISPLAY_NAME}"]')
            card.first.click()
            # the notebook's kernel is ours, and it became idle (started through the sandbox launcher)
            page.locator(".jp-NotebookPanel .jp-Toolbar-kernelName", has_text=DISPLAY_NAME).first.wait_for()
            page.locator('.jp-NotebookPanel .jp-Notebook-ExecutionIndicator[data-status="idle"]').first.wait_for()

            run_cell(page, 0, "import roop")
            refused = output_of(page, 0, "ProhibitedImportError")
            run_cell(page, 1, "import os, sys\n"
                              "total = sum(i * i for i in range(1000))\n"
                              "print('sum of squares:', total)\n"
                              "print('kernel uid:', os.getuid())")
            normal = output_of(page, 1, "sum of squares: 332833500")
            page.screenshot(path=str(shot))
        finally:
            browser.close()
    text = "\n".join(refused)
    assert "import of 'roop' is refused by sandbox profile 'free'" in text, text
    assert "category deepfake" in text, text
    assert f"kernel uid: {who.pw_uid if who else 0}" in "\n".join(normal), normal
    assert shot.stat().st_size > 10_000
    if os.environ.get("SANDBOX_KERNEL_E2E_SCREENSHOTS"):
        dest = Path(os.environ["SANDBOX_KERNEL_E2E_SCREENSHOTS"])
        dest.mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, dest / (shot.stem + ("-user" if who else "") + ".png"))


NOTICE = "You may be executing code that is prohibited, which may limit your ability to use this platform."
# refused at run time by the import guard (the pre-execution check cannot see the name), then a
# pause so that the supervisor's notice reaches the cell while it still runs
BANNED_CELL = ("try:\n    __import__(''.join(chr(c) for c in (114, 111, 111, 112)))\n"
               "except ImportError as e:\n    print('refused:', type(e).__name__)\n"
               "import time\ntime.sleep(3)\n")


@pytest.fixture
def violation_tenant(monkeypatch, who):
    """A profile with a violation policy (notice, stop at the 2nd violation, block), and a
    tenant name of this test's own (the block is per tenant)."""
    tenant = "lab-" + os.urandom(4).hex()
    log = kernelutil.AUDIT_DIR / f"{tenant}.jsonl"
    kernelutil.write_profile("lab-violations", f"""
        extends: free
        audit:
          log: {log}
          violations:
            notice: "{NOTICE}"
            stop_after: 2
            block_seconds: 600
        """)
    monkeypatch.setenv("SANDBOX_KERNEL_TENANT", tenant)
    return tenant, log


def test_violation_policy_in_jupyterlab_warns_then_stops(violation_tenant, lab, tmp_path, who):
    """JupyterLab, a kernel under a violation policy: the first refusal of a banned category
    shows the platform's notice in the cell; the second stops the kernel, and the cell says why;
    the trail holds both violations and the stop."""
    import json

    from playwright.sync_api import sync_playwright

    tenant, log = violation_tenant
    install.install("lab-violations", prefix=str(kernelutil.PREFIX))
    display = "Python 3 (sandbox: lab-violations)"
    srv, base, root = lab
    shot = tmp_path / "jupyterlab-violation-policy.png"
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 800})
            page.set_default_timeout(120_000)
            page.goto(f"{base}/lab?token={TOKEN}")
            page.locator(f'.jp-LauncherCard[data-category="Notebook"][title="{display}"]').first.click()
            page.locator(".jp-NotebookPanel .jp-Toolbar-kernelName", has_text=display).first.wait_for()
            page.locator('.jp-NotebookPanel .jp-Notebook-ExecutionIndicator[data-status="idle"]').first.wait_for()
            run_cell(page, 0, BANNED_CELL)
            output_of(page, 0, NOTICE)
            first = output_of(page, 0, "refused: ProhibitedImportError")
            run_cell(page, 1, BANNED_CELL)
            second = output_of(page, 1, "this kernel was stopped by the platform's violation policy")
            page.screenshot(path=str(shot))
        finally:
            browser.close()
    assert "refused: ProhibitedImportError" in "\n".join(first), first
    assert "new kernels are refused for 600 s" in "\n".join(second), second
    events = [json.loads(line) for line in log.read_text().splitlines()]
    assert [e["what"] for e in events if e["what"] in ("violation", "kernel stopped")][:3] == \
        ["violation", "violation", "kernel stopped"]
    assert all(e["tenant"] == tenant for e in events)
    assert shot.stat().st_size > 10_000
    if os.environ.get("SANDBOX_KERNEL_E2E_SCREENSHOTS"):
        dest = Path(os.environ["SANDBOX_KERNEL_E2E_SCREENSHOTS"])
        dest.mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, dest / (shot.stem + ("-user" if who else "") + ".png"))


def test_a_refused_start_says_why_in_the_notebook(lab, tmp_path, who):
    """A kernelspec whose profile was deleted: JupyterLab still offers it; opening it
    gives a kernel that answers (no "No Kernel", no five restarts in the server log), and a cell
    shows why the start was refused instead of running."""
    from playwright.sync_api import sync_playwright

    srv, base, root = lab
    kernelutil.write_profile("lab-gone", "extends: free\ndescription: deleted before the notebook opens\n")
    install.install("lab-gone", prefix=str(kernelutil.PREFIX))
    (kernelutil.PROFILES / "lab-gone.yaml").unlink()
    marker = Path(root) / "ran"
    shot = tmp_path / "jupyterlab-refused-start.png"
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 800})
            page.set_default_timeout(120_000)
            page.goto(f"{base}/lab?token={TOKEN}")
            name = "Python 3 (sandbox: lab-gone)"
            page.locator(f'.jp-LauncherCard[data-category="Notebook"][title="{name}"]').first.click()
            page.locator(".jp-NotebookPanel .jp-Toolbar-kernelName", has_text=name).first.wait_for()
            try:
                page.locator('.jp-NotebookPanel .jp-Notebook-ExecutionIndicator[data-status="idle"]').first.wait_for()
            except Exception as e:  # (once in a CI-like run, not reproduced: say what the server saw)
                status = page.locator(".jp-NotebookPanel .jp-Notebook-ExecutionIndicator").first.get_attribute(
                    "data-status", timeout=5_000)
                raise AssertionError(f"the refusal kernel never became idle (indicator: {status}); "
                                     f"server log:\n{srv.log(tail=6000)}") from e
            run_cell(page, 0, f"open({str(marker)!r}, 'w').write('x')")
            refused = output_of(page, 0, "SandboxStartRefused")
            page.screenshot(path=str(shot))
        finally:
            browser.close()
    text = "\n".join(refused)
    assert "refused to start" in text and "lab-gone: no such profile" in text, text
    assert not marker.exists(), "the refused kernel ran the cell"
    log = srv.log(tail=200_000)
    assert "lab-gone: no such profile" in log and "serving this refusal" in log, log[-3000:]
    assert "restarting kernel" not in log.lower() and "KernelRestarter" not in log, log[-3000:]
    assert shot.stat().st_size > 10_000
    if os.environ.get("SANDBOX_KERNEL_E2E_SCREENSHOTS"):
        dest = Path(os.environ["SANDBOX_KERNEL_E2E_SCREENSHOTS"])
        dest.mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, dest / (shot.stem + ("-user" if who else "") + ".png"))
