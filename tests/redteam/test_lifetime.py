"""Nothing outlives the kernel: processes a cell
detached (start_new_session, a double fork, setsid) after shutdown and after restart, and
files left in /tmp and /dev/shm after shutdown.

Processes are found from the host by a token in their command line (pids inside a PID
namespace differ from the host's)."""

from __future__ import annotations

import os
import signal

import kernelutil
import pytest
from rtutil import attempt, probe, start, stop

pytestmark = pytest.mark.redteam

MODES = ["start_new_session", "double_fork", "setsid"]

SPAWN = r"""
import os, subprocess, sys
token = {token!r}
sleeper = "import time; time.sleep(3600)"
subprocess.Popen([sys.executable, "-c", sleeper, token + "-start_new_session"], start_new_session=True,
                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
double = ("import os, sys\n"
          "if os.fork() == 0:\n"
          "    if os.fork() == 0:\n"
          "        os.execv(sys.executable, [sys.executable, '-c', sys.argv[1], sys.argv[2]])\n"
          "    os._exit(0)\n"
          "os.wait()\n")
subprocess.run([sys.executable, "-c", double, sleeper, token + "-double_fork"], timeout=30)
subprocess.Popen(["setsid", sys.executable, "-c", sleeper, token + "-setsid"],
                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
files = {{}}
for place in ("/tmp", "/dev/shm"):
    path = os.path.join(place, token + "-left")
    files[place] = rt_try(lambda: rt_write(path, "left behind by a kernel"))
rt_out({{"files": files}})
"""


def _find(token: str) -> dict[str, list[int]]:
    found = {m: [] for m in MODES}
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as fh:
                argv = fh.read().split(b"\0")
            with open(f"/proc/{pid}/stat") as fh:
                if fh.read().rsplit(")", 1)[1].split()[0] == "Z":
                    continue
        except (OSError, IndexError):
            continue
        for m in MODES:
            if (token + "-" + m).encode() in argv:
                found[m].append(int(pid))
    return found


def _scenario(who, event: str) -> dict:
    token = f"rt-survivor-{os.urandom(4).hex()}"
    k = start("free", who, spec_suffix="-life")
    try:
        spawned = probe(k, SPAWN.format(token=token))
        before = {m: bool(p) for m, p in _find(token).items()}
        assert kernelutil.wait_for(lambda: all(_find(token).values()), timeout=30), \
            f"control: the detached processes did not start ({before})"
        if event == "restart":
            k.restart()
        else:
            stop(k)
        # give an honest supervisor time to finish its sweep; survivors are what remains then
        kernelutil.wait_for(lambda: not any(_find(token).values()), timeout=30)
        after = _find(token)
        left = {place: os.path.exists(os.path.join(place, token + "-left")) for place in ("/tmp", "/dev/shm")}
        return {"after": after, "files": spawned["files"], "left": left, "token": token}
    finally:
        stop(k)
        for pids in _find(token).values():
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass
        for place in ("/tmp", "/dev/shm"):
            try:
                os.unlink(os.path.join(place, token + "-left"))
            except OSError:
                pass


@pytest.fixture(scope="module")
def after_shutdown(mwho):
    return _scenario(mwho, "shutdown")


@pytest.fixture(scope="module")
def after_restart(mwho):
    return _scenario(mwho, "restart")


@pytest.mark.parametrize("mode", [pytest.param(m, marks=attempt("pid_namespace+cgroup")) for m in MODES])
def test_detached_process_outlives_shutdown(after_shutdown, mode):
    assert not after_shutdown["after"][mode], f"a process detached with {mode} outlived the kernel's shutdown"


@pytest.mark.parametrize("mode", [pytest.param(m, marks=attempt("pid_namespace+cgroup")) for m in MODES])
def test_detached_process_outlives_restart(after_restart, mode):
    assert not after_restart["after"][mode], f"a process detached with {mode} outlived the kernel's restart"


@pytest.mark.parametrize("place", [pytest.param(p, marks=attempt("mount_namespace"), id=p.strip("/").replace("/", "_"))
                                   for p in ("/tmp", "/dev/shm")])
def test_files_outlive_shutdown(after_shutdown, place):
    """Files in /tmp and /dev/shm stay on the host (in host memory, for /dev/shm) after shutdown."""
    assert not after_shutdown["left"][place], f"a file the kernel wrote in {place} is still on the host after shutdown"
