"""No survivors: every process a kernel starts dies with it, however it detached.

The kernel runs as pid 2 of its own PID namespace under an init that dies with the
launcher (the supervisor Jupyter knows as the kernel); when that init exits the OS kernel
kills every process left in the namespace.
"""

import ast
import os
import signal
import subprocess
import sys
import time
import uuid

import kernelutil
import pytest

DETACH = {
    "start_new_session": "subprocess.Popen(['sleep', '{secs}'], start_new_session=True)",
    "setsid": "subprocess.Popen(['setsid', 'sleep', '{secs}'])",
    "double_fork": ("pid = os.fork()\n"
                    "if pid == 0:\n"
                    "    if os.fork() == 0:\n"
                    "        os.setsid(); os.execvp('sleep', ['sleep', '{secs}'])\n"
                    "    os._exit(0)\n"
                    "os.waitpid(pid, 0)"),
}


def _marker() -> str:
    """A sleep duration unique to this test, to find its processes on the host by command line."""
    return f"{4000 + uuid.uuid4().int % 1000}.{uuid.uuid4().int % 10**9}"


def _describe(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            cmd = fh.read().replace(b"\0", b" ")[:100].decode(errors="replace")
        return f"{pid} state {fields[0]} ppid {fields[1]}: {cmd}"
    except OSError:
        return f"{pid} (gone)"


def host_processes(marker: str) -> list[int]:
    out = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as fh:
                if marker.encode() in fh.read():
                    out.append(int(pid))
        except OSError:
            continue
    return out


@pytest.mark.kernel
@pytest.mark.parametrize("how", sorted(DETACH))
@pytest.mark.parametrize("end", ["shutdown", "restart"])
def test_detached_processes_die_with_the_kernel(make_kernel, who, how, end):
    k = make_kernel("free", user=who)
    secs = _marker()
    k.ok("import os, subprocess\n" + DETACH[how].format(secs=secs))
    assert kernelutil.wait_for(lambda: host_processes(secs), timeout=20), "the detached process did not start"
    if end == "shutdown":
        k.shutdown()
    else:
        k.restart()
        assert k.ok("print(6 * 7)").stdout.strip() == "42"
    assert kernelutil.wait_for(lambda: not host_processes(secs), timeout=20), \
        f"survivors after {end}: {host_processes(secs)}"


@pytest.mark.kernel
def test_the_kernel_sees_only_its_own_processes(make_kernel, who):
    outside = subprocess.Popen(["sleep", _marker()])
    try:
        k = make_kernel("free", user=who)
        r = k.ok("""
            import os
            pids = sorted(int(p) for p in os.listdir('/proc') if p.isdigit())
            print(os.getpid(), os.getppid(), pids)
            """)
        me, parent, pids = r.stdout.split(" ", 2)
        pids = ast.literal_eval(pids)
        assert (me, parent) == ("2", "1"), r.stdout
        # pid 1 (init), 2 (the kernel), its threads' helpers and the cell's own processes: nothing of the host
        assert pids[:2] == [1, 2] and len(pids) < 20, pids
    finally:
        outside.kill()


@pytest.mark.kernel
def test_interrupt_still_reaches_the_cell_and_its_children(make_kernel, who):
    k = make_kernel("free", user=who)
    msg_id = k.kc.execute("import subprocess\nsubprocess.run(['sleep', '60'])")
    time.sleep(1)  # let the cell start its child (no assertion depends on this timing)
    k.km.interrupt_kernel()
    reply = k.kc.get_shell_msg(timeout=30)
    while reply["parent_header"].get("msg_id") != msg_id:
        reply = k.kc.get_shell_msg(timeout=30)
    assert reply["content"]["status"] == "error" and reply["content"]["ename"] == "KeyboardInterrupt", reply["content"]
    assert k.ok("print('alive')").stdout.strip() == "alive"  # (kernelutil.Kernel.run: an `aborted` reply is sent again)


def _sandboxed_sleep(marker: str) -> list[int]:
    """The `sleep <marker>` the launcher runs (not the launcher, whose command line names it too)."""
    out = []
    for pid in host_processes(marker):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as fh:
                if fh.read().startswith(b"sleep\0"):
                    out.append(pid)
        except OSError:
            pass
    return out


@pytest.mark.kernel
@pytest.mark.parametrize("when", ["running", "while-starting"])
def test_the_sandbox_dies_with_the_jupyter_process(who, tmp_path, when):
    """The supervisor watches JPY_PARENT_PID as ipykernel's own parent poller would (the kernel's
    parent inside the namespace is its init): when the Jupyter process goes, everything goes,
    also when it goes while the launcher is still applying the layers."""
    secs = _marker()
    cwd = kernelutil.user_workdir(who) if who else str(tmp_path)
    from sandbox_kernel.install import launch_argv

    argv = (kernelutil.setpriv(who.pw_name) if who else []) + launch_argv("free") + ["--", "sleep", secs]
    fake_jupyter = subprocess.Popen(
        [sys.executable, "-c", "import os, subprocess, sys, time\n"
                               f"env = dict(os.environ, JPY_PARENT_PID=str(os.getpid()))\n"
                               f"subprocess.Popen({argv!r}, cwd={cwd!r}, env=env, start_new_session=True)\n"
                               "time.sleep(600)"])
    try:
        if when == "running":
            assert kernelutil.wait_for(lambda: _sandboxed_sleep(secs), timeout=30), "the sandboxed command did not start"
        else:
            assert kernelutil.wait_for(lambda: [p for p in host_processes(secs) if p != fake_jupyter.pid], timeout=30)
        fake_jupyter.send_signal(signal.SIGKILL)
        fake_jupyter.wait()
        time.sleep(0.5 if when == "while-starting" else 0)  # the launcher goes on starting the command, orphaned
        assert kernelutil.wait_for(lambda: not host_processes(secs), timeout=20), \
            f"the sandbox outlived Jupyter: {[_describe(p) for p in host_processes(secs)]}"
    finally:
        fake_jupyter.kill()
        for pid in host_processes(secs):
            os.kill(pid, signal.SIGKILL)


@pytest.mark.kernel
@pytest.mark.parametrize("init", ["c", "python"])
def test_init_reaps_orphans_passes_signals_on_and_ends_like_the_kernel(make_kernel, who, init):
    """The namespace's init, the C program `sandbox-kernel install` builds beside the policy cache
    (init_helper) or, without one, the launcher's own Python init: either reaps what the kernel's
    processes orphan, passes a signal sent to the supervisor on to the kernel, and ends with the
    kernel's status; a cell cannot signal it."""
    if init == "c" and kernelutil.built_init_helper() is None:
        pytest.skip("no C compiler here: the kernelspec has no sandbox-kernel-init (the python case runs)")
    k = make_kernel("free", user=who, init=init)
    r = k.ok("""
        import errno, os, signal, time
        print(open('/proc/1/cmdline').read().replace(chr(0), ' '))
        for _ in range(20):  # each grandchild is orphaned, then exits: a zombie unless init reaps it
            pid = os.fork()
            if pid == 0:
                if os.fork() == 0:
                    time.sleep(0.2)
                    os._exit(0)
                os._exit(0)
            os.waitpid(pid, 0)
        time.sleep(1.5)
        zombies = []
        for p in filter(str.isdigit, os.listdir('/proc')):
            try:
                with open(f'/proc/{p}/stat') as fh:
                    if fh.read().rsplit(')', 1)[1].split()[0] == 'Z':
                        zombies.append(p)
            except OSError:
                pass
        try:
            os.kill(1, signal.SIGKILL)
            print(zombies, 'ok')
        except OSError as e:
            print(zombies, errno.errorcode[e.errno])
        """)
    cmdline, rest = r.stdout.strip().splitlines()
    if init == "c":  # (its third argument: the descriptor it closed once it ran, init.c's READY_FD)
        assert cmdline.split()[:2] == ["sandbox-kernel-init", "2"] and cmdline.split()[2].isdigit(), cmdline
    else:
        assert "boot.py run" in cmdline, cmdline
    assert rest == "[] EPERM", r.stdout
    launcher = k.km.provisioner.process
    launcher.send_signal(signal.SIGTERM)  # supervisor -> init -> the kernel, which SIGTERM ends
    assert launcher.wait(timeout=30) == 128 + signal.SIGTERM


def test_the_c_init_lets_the_kernel_go_on_only_once_it_runs(tmp_path):
    """The kernel changes the mount namespace it shares with init (the read view pivots the root)
    once init's exec closes the pipe it waits on. A dynamically linked helper's loader opens
    ld.so.cache and libc *after* the exec, so the helper is handed the pipe (READY_FD) and closes
    it itself once it runs; a helper built before that (no READY_FD in its usage) gets the old
    argument list, and its exec closes the pipe as before."""
    from sandbox_kernel import init_helper

    helper = kernelutil.built_init_helper()
    if helper is None:
        pytest.skip("no C compiler here")
    assert init_helper.takes_ready_fd(helper)
    r, w = os.pipe()
    os.set_inheritable(w, True)
    p = subprocess.Popen([helper, "999999", str(w)], pass_fds=(w,))  # (no such kernel: it waits)
    try:
        os.close(w)
        assert os.read(r, 1) == b""  # closed by the running program (its exec kept it: inheritable)
        assert p.poll() is None
        assert not os.path.exists(f"/proc/{p.pid}/fd/{w}")
    finally:
        p.kill()
        p.wait()
        os.close(r)
    for args in (["999999", "2"], ["999999", "x"], ["1"]):  # READY_FD must be a descriptor above stderr
        bad = subprocess.run([helper, *args], capture_output=True, text=True, timeout=10)
        assert bad.returncode == 2 and "KERNEL_PID [READY_FD]" in bad.stderr, (args, bad)
    old = tmp_path / "sandbox-kernel-init"
    old.write_bytes(b"\x7fELF usage: sandbox-kernel-init KERNEL_PID")  # (what an older install built)
    assert not init_helper.takes_ready_fd(str(old)) and not init_helper.takes_ready_fd(str(tmp_path / "none"))
