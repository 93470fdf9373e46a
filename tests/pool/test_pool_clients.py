"""Pooled kernels (docs/pool.md) under the clients that use kernelspecs unchanged: jupyter_kernel_test
(jupyter_client's start_new_kernel) and papermill (nbclient's AsyncKernelManager)."""

from __future__ import annotations

import os
import unittest

import nbformat
import poolutil
import pytest
from jupyter_client.manager import KernelManager
from test_kernel_tests import _SandboxKernelTests

from sandbox_kernel import pool as pool_mod

pytestmark = pytest.mark.kernel  # every test here starts a real kernel


@pytest.fixture
def fresh_pool():
    poolutil.reset_pool()
    yield pool_mod.get_pool()
    poolutil.reset_pool()


@pytest.mark.parametrize("profile", ["default", "offline"])
def test_jupyter_kernel_test_passes_on_a_pooled_kernel(profile, fresh_pool):
    spec = poolutil.pooled_spec(profile)
    os.chdir("/tmp")  # where the suite's setUpClass starts its kernel (the pool's key)
    arm = KernelManager(kernel_name=spec)
    arm.start_kernel()  # cold: arms the pool for (spec, /tmp, this environment)
    try:
        assert poolutil.wait_ready(1), fresh_pool.stats
        seen = {}

        class Pooled(_SandboxKernelTests):
            kernel_name = spec

            @classmethod
            def setUpClass(cls):
                super().setUpClass()
                seen["pooled_from"] = cls.km.provisioner.pooled_from

        Pooled.profile = profile
        suite = unittest.defaultTestLoader.loadTestsFromTestCase(Pooled)
        result = unittest.TextTestRunner(verbosity=0).run(suite)
        problems = [f"{t}: {tb}" for t, tb in result.failures + result.errors]
        assert result.wasSuccessful() and result.testsRun >= 13, "\n".join(problems)
        assert seen["pooled_from"], "the suite's kernel was started cold, not taken from the pool"
    finally:
        arm.shutdown_kernel(now=True)


NOTEBOOK_CELLS = [
    "import os, sys\nprint(os.environ.get('SANDBOX_KERNEL_POOLED', 'cold'))",
    "import socket\ntry:\n    socket.socket().connect(('127.0.0.1', 9))\nexcept OSError as e:\n    print('refused', e.errno)",
    "print(sum(range(10)))",
]


def _notebook(path):
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(c) for c in NOTEBOOK_CELLS]
    nbformat.write(nb, path)


def test_papermill_runs_a_notebook_on_a_pooled_kernel(tmp_path, fresh_pool):
    papermill = pytest.importorskip("papermill")
    spec = poolutil.pooled_spec("offline")
    nb = tmp_path / "in.ipynb"
    _notebook(nb)
    outs = []
    for i in range(2):  # the first run arms the pool; the second gets a pooled kernel
        out = tmp_path / f"out{i}.ipynb"
        papermill.execute_notebook(str(nb), str(out), kernel_name=spec, cwd=str(tmp_path), progress_bar=False)
        outs.append(nbformat.read(out, as_version=4))
        if i == 0:
            assert poolutil.wait_ready(1), fresh_pool.stats
    texts = [["".join(o.get("text", "") for o in c.outputs) for c in nb_.cells] for nb_ in outs]
    assert texts[0][0].strip() == "cold"
    assert poolutil.UUID.fullmatch(texts[1][0].strip()), texts[1]
    for t in texts:
        assert t[1].startswith("refused") and t[2].strip() == "45"  # network mode none, as cold
