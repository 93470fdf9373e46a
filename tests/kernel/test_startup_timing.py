"""The launcher's start-up timing hook (sandbox_kernel/timing.py), used by
`python -m benchmarks startup-profile`.

The launcher writes its phase marks to a descriptor it inherited, just before the exec,
and the command it execs sees neither the variable nor the descriptor. Without the
variable, or with a bad one, the launch is unchanged. As root and as an ordinary user.
"""

import json
import os
import subprocess
import sys

import kernelutil
import pytest

from sandbox_kernel import timing

pytestmark = pytest.mark.kernel  # every test here starts a real kernel

PROBE = r"""
import json, os, sys
fd = int(sys.argv[1])
try:
    os.fstat(fd)
    open_fd = True
except OSError:
    open_fd = False
print(json.dumps({"var": os.environ.get("SANDBOX_KERNEL_TIMING_FD"), "fd_open": open_fd}))
"""


def _run(who, cwd, env_extra, pass_fds=(), probe_fd=99):
    cmd = [sys.executable, "-I", "-m", "sandbox_kernel.cli", "run", "--profile", "free", "--",
           sys.executable, "-I", "-c", PROBE, str(probe_fd)]
    env = dict(os.environ, **env_extra)
    if who is not None:
        cmd = ["setpriv", f"--reuid={who.pw_uid}", f"--regid={who.pw_gid}", "--init-groups", "--"] + cmd
        env.update(HOME=who.pw_dir, USER=who.pw_name, LOGNAME=who.pw_name)
        env.pop("TMPDIR", None)
    return subprocess.run(cmd, capture_output=True, text=True, cwd=cwd, env=env, timeout=120, pass_fds=pass_fds)


def _cwd(who, tmp_path):
    return kernelutil.user_workdir(who) if who is not None else str(tmp_path)


def test_launcher_writes_its_phases_and_the_command_sees_nothing(who, tmp_path):
    out = tmp_path / "timing.jsonl"
    fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        p = _run(who, _cwd(who, tmp_path), {timing.ENV: str(fd)}, pass_fds=(fd,), probe_fd=fd)
    finally:
        os.close(fd)
    assert p.returncode == 0, p.stderr
    seen = json.loads(p.stdout.strip().splitlines()[-1])
    assert seen == {"var": None, "fd_open": False}, seen  # the kernel gets neither
    lines = out.read_text().splitlines()
    assert len(lines) == 1
    record = json.loads(lines[0])
    names = [n for n, _ in record["marks"]]
    times = [t for _, t in record["marks"]]
    assert names[0] == "interpreter start, command line" and names[-1] == "exec"
    for phase in ("launcher imports", "policy", "launch context", "prepare", "layer landlock", "layer seccomp"):
        assert phase in names, names
    assert times == sorted(times)
    assert record["clock"] == "CLOCK_MONOTONIC"


@pytest.mark.parametrize("value", ["", "not-a-number", "987"])
def test_a_bad_or_closed_descriptor_changes_nothing(who, tmp_path, value):
    p = _run(who, _cwd(who, tmp_path), {timing.ENV: value}, probe_fd=987)
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout.strip().splitlines()[-1]) == {"var": None, "fd_open": False}
