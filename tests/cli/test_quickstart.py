"""docs/quickstart.md, run in order: its shell blocks, line by line, and the profiles its YAML
blocks write, in a scratch directory standing in for /opt/sandbox, /etc and /var/log.

What is left out, and why: creating the virtual environment and `pip install` (this test runs
in the checkout's environment), `jupyter lab` (a browser: tests/deploy/test_jupyterlab_browser.py),
and `doctor`'s trial starts (`--no-try`: tests/cli/test_doctor.py starts every profile). After
each shell block, every kernelspec installed so far that a reader would open next (step 3's
`free`, and the tenant profiles of step 4) is started as the kernelspec starts it, from a
Jupyter server's environment: a step that leaves a kernel unable to start fails here.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import kernelutil
import pytest
from testenv import REPO
from test_install_modes import _launch_from_spec

from sandbox_kernel.install import shipped_profile_names

QUICKSTART = REPO / "docs" / "quickstart.md"
BLOCK_RE = re.compile(r"^```(\w*)\n(.*?)^```", re.S | re.M)
SKIP = [
    (re.compile(r"^python3 -m venv "), "this test runs in the checkout's environment"),
    (re.compile(r"\bpip install\b"), "the checkout's environment has the package and torch"),
    (re.compile(r"\bjupyter lab\b"), "needs a browser (tests/deploy/test_jupyterlab_browser.py)"),
]


def blocks(text: str) -> list[tuple[str, str]]:
    """(language, body) of every fenced code block, in order."""
    return [(m.group(1), m.group(2)) for m in BLOCK_RE.finditer(text)]


def test_the_blocks_are_found():
    langs = [lang for lang, _ in blocks(QUICKSTART.read_text())]
    assert langs.count("sh") >= 4 and "yaml" in langs, langs


@pytest.mark.kernel
@pytest.mark.skipif(os.geteuid() != 0, reason="the quickstart's platform steps are run as root")
def test_quickstart_commands_run_in_order():
    base = kernelutil.PREFIX / f"quickstart-{os.urandom(4).hex()}"
    (base / "etc-profiles").mkdir(parents=True)
    os.chmod(base, 0o755)
    os.chmod(base / "etc-profiles", 0o755)
    prefix = base / "prefix"
    subst = [("/opt/sandbox/bin/", str(Path(sys.executable).parent) + "/"),
             ("/etc/sandbox-kernel/profiles", str(base / "etc-profiles")),
             ("/var/log/sandbox-kernel", str(base / "log")),
             ("--sys-prefix", f"--prefix {prefix}"),
             ("sandbox-kernel doctor", "sandbox-kernel doctor --no-try"),
             ("-o acme ", "-o root ")]  # (the tenant's uid: the kernels here run as root)
    env = {k: v for k, v in os.environ.items() if k != "SANDBOX_KERNEL_CEILING"}
    env.update(PATH=str(Path(sys.executable).parent) + ":" + env["PATH"], HOME=str(base / "home"),
               SANDBOX_KERNEL_PROFILE_PATH=str(base / "etc-profiles"),
               JUPYTER_PATH=str(prefix / "share" / "jupyter"), JUPYTER_DATA_DIR=str(base / "home" / "jupyter"))
    (base / "home").mkdir()
    started: set[str] = set()
    ran = []
    try:
        for lang, body in blocks(QUICKSTART.read_text()):
            for old, new in subst:
                body = body.replace(old, new)
            if lang == "yaml":
                first = body.splitlines()[0]
                if first.startswith("# /"):
                    Path(first[2:].strip()).write_text(body)
                    ran.append(f"wrote {first[2:].strip()}")
                continue
            if lang != "sh":
                continue
            for line in body.splitlines():
                line = line.strip()
                if not line or line.startswith("#"):
                    continue
                if any(r.search(line) for r, _ in SKIP):
                    continue
                p = subprocess.run(["bash", "-c", line], env=env, cwd=str(base / "home"), capture_output=True,
                                   text=True, timeout=300)
                ran.append(line)
                assert p.returncode == 0, f"quickstart line failed: {line}\n{p.stdout}\n{p.stderr}\nafter:\n" + \
                    "\n".join(ran)
            # A reader opens the kernels now: step 3's `free`, step 4's tenant profiles.
            kernels = prefix / "share" / "jupyter" / "kernels"
            for spec_dir in sorted(kernels.iterdir()) if kernels.is_dir() else []:
                profile = json.loads((spec_dir / "kernel.json").read_text())["metadata"]["sandbox_kernel"]["profile"]
                if spec_dir.name in started or (profile in shipped_profile_names() and profile != "free"):
                    continue
                started.add(spec_dir.name)
                p = _launch_from_spec(spec_dir, None, code="pass")
                assert p.returncode == 0, (f"after the block ending `{ran[-1]}`, kernelspec {spec_dir.name} does "
                                           f"not start:\n{p.stderr}\nran:\n" + "\n".join(ran))
        assert {"sandbox-free", "sandbox-acme"} <= started, started
        assert any("profiles validate" in r for r in ran) and any("--ceiling" in r for r in ran), ran
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_the_torch_advice_agrees_with_setup_sh_and_the_readme():
    """PyPI's torch pin is the CUDA build on Linux x86_64 (README, setup.sh): the quick start
    takes the CPU build from the same index setup.sh uses, and does not say the pin avoids CUDA."""
    setup = (REPO / "scripts" / "setup.sh").read_text()
    cpu_index = re.search(r'TORCH_CPU_INDEX="([^"]+)"', setup).group(1)
    text = QUICKSTART.read_text()
    pip_torch = [ln for _, body in blocks(text) for ln in body.splitlines() if "pip install torch" in ln]
    assert pip_torch and all(f"--extra-index-url {cpu_index}" in ln for ln in pip_torch), pip_torch
    assert "pulls a multi-GB CUDA build" not in text
    assert "*is* the CUDA build" in text and "scripts/setup.sh" in text
