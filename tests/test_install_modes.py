"""Kernelspecs installed for a whole system or environment must be readable by every
user whose Jupyter server lists them (a root-only 0700 directory hides the kernel
from everyone else's JupyterLab launcher)."""

import os
import shutil
import stat
import subprocess
import sys

import kernelutil

from sandbox_kernel import install


def test_installed_kernelspec_is_readable_by_everyone(tmp_path):
    old = os.umask(0o077)  # a strict administrator's umask must not make it private either
    try:
        d = install.install("free", prefix=str(tmp_path / "prefix"))
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(d).st_mode) == 0o755
    for f in os.listdir(d):
        assert stat.S_IMODE(os.stat(os.path.join(d, f)).st_mode) == 0o644, f


def test_ordinary_user_lists_a_root_installed_kernelspec(unprivileged):
    prefix = kernelutil.PREFIX / "modes-test"  # every directory above it is searchable by others
    shutil.rmtree(prefix, ignore_errors=True)
    install.install("free", prefix=str(prefix))
    code = "from jupyter_client.kernelspec import KernelSpecManager as K; print(sorted(K().find_kernel_specs()))"
    env = dict(os.environ, JUPYTER_PATH=str(prefix / "share" / "jupyter"), HOME=unprivileged.pw_dir)
    proc = subprocess.run(["setpriv", f"--reuid={unprivileged.pw_uid}", f"--regid={unprivileged.pw_gid}",
                           "--init-groups", "--", sys.executable, "-c", code], env=env, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "sandbox-free" in proc.stdout, proc.stdout
    shutil.rmtree(prefix, ignore_errors=True)
