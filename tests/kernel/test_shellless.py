"""`!` lines without a shell where the profile lets none run (sandbox_kernel.shellless): which
lines are one plain command, and under which profiles the shell is bypassed. The kernels that
run them are in tests/redteam/test_exec_python.py (offline, three environments, root and user)."""

from __future__ import annotations

import pytest

from sandbox_kernel.policy import resolve
from sandbox_kernel.shellless import plain_argv, shell_allowed


@pytest.mark.parametrize("line, argv", [
    ('python -c "print(1)"', ["python", "-c", "print(1)"]),
    ("python run.py --n 3", ["python", "run.py", "--n", "3"]),
    ("pip install x==1.0", ["pip", "install", "x==1.0"]),
    ("echo 'a $b | c > d'", ["echo", "a $b | c > d"]),  # single quotes: literal
    ('echo "a b"', ["echo", "a b"]),
])
def test_plain_lines(line, argv):
    assert plain_argv(line) == argv


@pytest.mark.parametrize("line", [
    "ls | wc -l", "echo x > f", "cat < f", "a; b", "a && b", "sleep 1 &", "echo $HOME", "echo ${HOME}",
    'echo "$HOME"', "echo `id`", 'echo "`id`"', "echo $(id)", "rm *.txt", "ls ?", "ls [ab]", "cd ~",
    "echo a\\ b", 'echo "a\\"b"', "A=1 python", "echo 'unclosed", "python # comment", "", "   ", "a\nb",
])
def test_lines_that_need_a_shell(line):
    assert plain_argv(line) is None


def test_bypassed_only_where_the_shell_may_not_run():
    assert not shell_allowed(resolve("offline"))
    assert shell_allowed(resolve("free"))
