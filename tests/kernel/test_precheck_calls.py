"""The pre-execution check (soft) on calls it must recognise whatever their spelling: a module
reached through __import__ or importlib.import_module is the module (a denied
command in user_expressions once went through `__import__('os').system(...)`)."""

from __future__ import annotations

import pytest

from sandbox_kernel import precheck
from sandbox_kernel.policy import resolve


@pytest.mark.parametrize("code", [
    "__import__('os').system('touch x magnet:?xt=urn:btih:0')",
    "__import__('subprocess').run(['touch', 'x', 'magnet:?xt=urn:btih:0'])",
    "import importlib\nimportlib.import_module('os').popen('touch x magnet:?xt=urn:btih:0')",
    "get_ipython().getoutput('touch x magnet:?xt=urn:btih:0')",
])
def test_shell_calls_through_an_imported_module(code):
    findings = precheck.scan_cell(code, resolve("free"))
    assert [f.kind for f in findings] == ["shell"], findings


def test_innocent_calls_stay_quiet():
    assert precheck.scan_cell("__import__('os').system('echo hello')", resolve("free")) == []
