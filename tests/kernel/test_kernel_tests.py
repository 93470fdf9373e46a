"""jupyter_kernel_test's KernelTests, every sample filled in, under every shipped profile."""

import os
import unittest

import jupyter_kernel_test
import kernelutil
import pytest

pytestmark = pytest.mark.kernel  # every test here starts a real kernel

SHIPPED = ["base", "default", "free", "gpu", "offline", "research"]


class _SandboxKernelTests(jupyter_kernel_test.KernelTests):
    __test__ = False  # run below, once per profile, by unittest
    language_name = "python"
    file_extension = ".py"
    code_hello_world = "print('hello, world')"
    code_stderr = "import sys; print('test', file=sys.stderr)"
    completion_samples = [{"text": "zi", "matches": {"zip"}}, {"text": "import codeo", "matches": {"codeop"}}]
    complete_code_samples = ["1", "print('hello, world')", "def f(x):\n  return x*2\n\n\n"]
    incomplete_code_samples = ["print('''hello", "def f(x):\n  x*2"]
    invalid_code_samples = ["import = 7q"]
    code_page_something = "zip?"
    code_generate_error = "raise ValueError('boom')"
    code_execute_result = [{"code": "1+2+3", "result": "6"}, {"code": "[n*n for n in range(1, 4)]", "result": "[1, 4, 9]"}]
    code_display_data = [
        {"code": "from IPython.display import HTML, display; display(HTML('<b>test</b>'))", "mime": "text/html"},
        {"code": "from IPython.display import Math, display; display(Math('\\\\frac{1}{2}'))", "mime": "text/latex"},
    ]
    code_history_pattern = "1?2*"
    # "range" is left out: stock ipykernel (IPython's HistoryManager) answers it with
    # session 0 for the current session, which jupyter_kernel_test rejects.
    supported_history_operations = ("tail", "search")
    code_inspect_sample = "zip"
    code_clear_output = "from IPython.display import clear_output; clear_output()"

    @classmethod
    def setUpClass(cls):
        os.chdir("/tmp")
        super().setUpClass()

    def test_implementation_and_banner(self):
        self.flush_channels()
        msg_id = self.kc.kernel_info()
        reply = self.kc.get_shell_msg(timeout=15)
        assert reply["parent_header"]["msg_id"] == msg_id
        content = reply["content"]
        assert content["implementation"] == "sandbox_kernel"
        assert f"profile '{self.profile}'" in content["banner"]


def _make(profile):
    spec = kernelutil.install_spec(profile)
    return type(f"TestKernelTests_{profile}", (_SandboxKernelTests,), {"kernel_name": spec, "profile": profile})


@pytest.mark.parametrize("profile", SHIPPED)
def test_jupyter_kernel_test_passes(profile):
    suite = unittest.defaultTestLoader.loadTestsFromTestCase(_make(profile))
    result = unittest.TextTestRunner(verbosity=0).run(suite)
    problems = [f"{t}: {tb}" for t, tb in result.failures + result.errors]
    assert result.wasSuccessful() and result.testsRun >= 13, "\n".join(problems)
    reasons = {reason for _, reason in result.skipped}
    assert reasons <= {"History range not supported"}, f"every sample is filled in: {result.skipped}"
