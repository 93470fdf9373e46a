"""The `kernel` marker is enforced: what a test may start only when marked (tests/conftest.py
records the running test; kernelutil checks it), so the fast tier `pytest -m "not kernel"`
starts no kernel."""

from __future__ import annotations

import subprocess
import sys

import kernelutil
import pytest

from sandbox_kernel.install import kernel_argv, launch_argv


@pytest.mark.parametrize("argv", [
    kernel_argv("free"),
    ["setpriv", "--reuid=1000", "--"] + launch_argv("offline") + ["--", "/usr/bin/true"],
    [sys.executable, "-I", "-m", "sandbox_kernel.cli", "run", "--profile", "offline", "--", "true"],
    ["/opt/venv/bin/sandbox-kernel", "run", "--profile", "free"],
    [sys.executable, "-m", "sandbox_kernel.cli", "doctor", "--json"],
    ["sandbox-kernel", "doctor", "--profile", "offline"],
    [sys.executable, "-P", "-m", "sandbox_kernel", "-f", "k.json"],
    [sys.executable, "-m", "ipykernel_launcher", "-f", "k.json"],
    [sys.executable, "-m", "benchmarks", "run", "--tiny"],
    ["/venv/bin/jupyter-lab", "--no-browser"],
    ["jupyter", "lab", "--port", "0"],
    ["/venv/bin/jupyterhub", "-f", "config.py"],
    ["papermill", "in.ipynb", "out.ipynb"],
    ["sbatch", "--wait", "job.sh"],
    f"{sys.executable} -m sandbox_kernel.cli run --profile free -- true",
    [sys.executable, "-c", f"import subprocess; subprocess.Popen({launch_argv('free') + ['--', 'sleep', '1']!r})"],
    [sys.executable, "-c", f"import runpy, sys; sys.argv = [{kernel_argv('free')[3]!r}, 'run', '--profile', 'free']"],
])
def test_what_starts_a_kernel_is_recognised(argv):
    assert kernelutil.kernel_command(argv)


@pytest.mark.parametrize("argv", [
    [sys.executable, "-m", "sandbox_kernel.cli", "doctor", "--json", "--no-try"],
    [sys.executable, "-m", "sandbox_kernel.cli", "profiles", "validate", "x.yaml"],
    [sys.executable, "-m", "sandbox_kernel.cli", "install", "--profile", "offline", "--prefix", "/tmp/p"],
    ["sandbox-kernel", "check", "--json", "nb.ipynb"],
    [sys.executable, "-c", "print(1)"],
    ["unshare", "-p", "-f", "--mount-proc", sys.executable, "-c", "pass"],
    ["docker", "run", "--rm", "img", "sandbox-kernel", "export", "--profile", "free"],
    f"{sys.executable} -m sandbox_kernel.cli check --json nb.ipynb | head -n 2",
])
def test_what_starts_no_kernel_is_let_through(argv):
    assert kernelutil.kernel_command(argv) is None


def test_an_unmarked_test_that_starts_a_kernel_fails_before_anything_runs(request, tmp_path):
    """This test is not marked `kernel`: the launcher's argv is refused at Popen, before the
    process exists (the marker file the command would write is never made)."""
    assert request.node.get_closest_marker("kernel") is None and kernelutil.current_test is request.node
    made = tmp_path / "ran"
    with pytest.raises(pytest.fail.Exception, match="is not marked `kernel`"):
        subprocess.run(launch_argv("free") + ["--", "/usr/bin/touch", str(made)], timeout=60)
    with pytest.raises(pytest.fail.Exception, match="is not marked `kernel`"):
        kernelutil.Kernel("free", cwd=str(tmp_path))
    assert not made.exists()


@pytest.mark.kernel
def test_a_marked_test_may(request):
    """The check reads the running test's own markers (here: `kernel`)."""
    assert kernelutil.current_test is request.node
    kernelutil.require_kernel_marker("nothing, really")  # does not fail
