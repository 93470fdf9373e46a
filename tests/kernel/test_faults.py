"""Faults: a kernel killed mid-burst leaves a valid audit log; a hundred restarts
leak no process, file descriptor, mount, cgroup or temporary file."""

import json
import os
import re
import shutil
import signal
import tempfile
import uuid

import kernelutil
import pytest

from sandbox_kernel.layers.jupyter_paths import jupyter_runtime_dir

pytestmark = pytest.mark.kernel  # every test here starts a real kernel


def _audit_profile(tag: str) -> str:
    log = kernelutil.AUDIT_DIR / f"faults-{tag}.jsonl"
    kernelutil.write_profile(f"faults-{tag}", f"""
        extends: free
        audit:
          log: {log}
        """)
    return str(log)


def test_kill_9_during_a_burst_of_refusals_keeps_the_audit_log_valid(make_kernel, who, tmp_path):
    tag = uuid.uuid4().hex[:8]
    log = _audit_profile(tag)
    if who:
        open(log, "a").close()
        os.chown(log, who.pw_uid, who.pw_gid)
    k = make_kernel(f"faults-{tag}", user=who)
    cwd = k.ok("import os; print(os.getcwd())").stdout.strip()
    progress = os.path.join(cwd, f"progress-{tag}")
    k.kc.execute(f"""
import importlib, os
name = "".join(chr(c) for c in (114, 111, 111, 112))  # decided at run time: the import guard refuses it
fd = os.open({progress!r}, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
while True:
    try:
        importlib.import_module(name)
    except ImportError:
        os.write(fd, b".")
""")
    assert kernelutil.wait_for(lambda: os.path.exists(progress) and os.path.getsize(progress) > 200, timeout=60)
    os.killpg(k.km.provisioner.pgid, signal.SIGKILL)  # what Jupyter's "kill" does
    assert kernelutil.wait_for(lambda: not k.is_alive(), timeout=20)
    refused = os.path.getsize(progress)
    with open(log, "rb") as fh:
        lines = fh.read().decode().splitlines()
    events = [json.loads(line) for line in lines]  # every line is one whole JSON object
    mine = [e for e in events if e["layer"] in ("import_guard", "precheck") and "roop" in e["what"]]
    suppressed = sum(e.get("suppressed", 0) for e in events if e["what"] == "flood")
    # The supervisor writes the first FLOOD_BURST events of a burst whole and counts the rest in a
    # flood record each second; Jupyter's kill (the whole process group, the supervisor too) loses
    # what was in the kernel's channel (one page: the kernel waits while it is full; events here
    # are over 250 bytes) and the count of the last second beyond the burst.
    from sandbox_kernel import trail
    in_flight = trail.CHANNEL_BYTES // 250 + 1
    assert len(mine) + suppressed >= min(refused, trail.FLOOD_BURST) - in_flight, (len(mine), suppressed, refused)


def _host_state(kernel_id: str) -> dict:
    groups = []
    for root, dirs, _ in os.walk("/sys/fs/cgroup"):
        groups += [os.path.join(root, d) for d in dirs if kernel_id in d]
        if root.count("/") > 6:
            dirs[:] = []
    procs = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as fh:
                if kernel_id.encode() in fh.read():
                    procs.append(pid)
        except OSError:
            pass
    with open("/proc/self/mountinfo") as fh:
        mounts = len(fh.readlines())
    return {"groups": groups, "procs": procs, "mounts": mounts,
            "fds": len(os.listdir("/proc/self/fd")), "tmp": set(os.listdir("/tmp")), "shm": set(os.listdir("/dev/shm"))}


@pytest.mark.slow
@pytest.mark.soak
def test_a_hundred_restarts_leak_nothing(make_kernel, who):
    k = make_kernel("free", user=who)
    kernel_id = os.path.basename(k.km.connection_file)[len("kernel-"):-len(".json")]
    k.ok("pass")
    before = _host_state(kernel_id)
    for i in range(100):
        k.restart()
        assert k.ok(f"print({i})").stdout.strip() == str(i)
    k.shutdown()
    assert kernelutil.wait_for(lambda: not _host_state(kernel_id)["procs"], timeout=20)
    after = _host_state(kernel_id)
    assert after["procs"] == [], after["procs"]
    assert after["groups"] == [], f"cgroups left behind: {after['groups']}"
    assert after["mounts"] == before["mounts"], "mounts leaked into the host's namespace"
    assert after["fds"] <= before["fds"], (before["fds"], after["fds"])
    # What the kernel or launcher could leave on the host: this kernel's connection and ipc files,
    # found by its id (other tests' kernels and doctor runs make sandbox-kernel-* names in a shared
    # /tmp meanwhile; the IOPub pipe is an abstract socket, nothing on disk).
    ours = re.compile(re.escape(kernel_id))
    leaked = {n for n in (after["tmp"] - before["tmp"]) | (after["shm"] - before["shm"]) if ours.search(n)}
    runtime = jupyter_runtime_dir(os.environ)
    leaked |= {n for n in (os.listdir(runtime) if os.path.isdir(runtime) else []) if kernel_id in n}
    assert not leaked, leaked


@pytest.mark.parametrize("tmpdir", ["default", "long"])
def test_the_iopub_pipe_leaves_nothing_on_disk_and_carries_forked_output(make_kernel, who, tmpdir):
    """The IOPub pipe (the ipc:// endpoint forked children send their output to) is an abstract
    socket named after the kernel: nothing is made in TMPDIR, even where the kernel shares the
    host's (no mount namespace), so nothing is left there, and a TMPDIR too long for a socket path
    loses no output. ipykernel's shutdown, which looked for the kernel's children in the host's
    /proc under the kernel's PID namespace and signalled the kernel itself, ends its children."""
    env = {"SANDBOX_KERNEL_SIMULATE_MISSING": "mount_namespace"}
    top = None
    if tmpdir == "long":
        top = tempfile.mkdtemp(prefix="sbx-long-tmpdir-", dir="/var/tmp")
        deep = os.path.join(top, "d" * 100)  # beyond a UNIX socket path's 107 bytes
        os.makedirs(deep)
        if who:
            for d in (top, deep):
                os.chown(d, who.pw_uid, who.pw_gid)
        env["TMPDIR"] = deep
    try:
        k = make_kernel("free", user=who, env=env, connection_base="/var/tmp")
        kernel_id = os.path.basename(k.km.connection_file)[len("kernel-"):-len(".json")]
        r = k.ok("import os, tempfile\nfrom ipykernel.kernelapp import IPKernelApp\n"
                 "print(IPKernelApp.instance().iopub_thread._pipe_addr)\nprint(tempfile.gettempdir())\n"
                 f"print(sorted(n for n in os.listdir(tempfile.gettempdir()) if {kernel_id!r} in n))")
        addr, tmp, made = r.stdout.splitlines()
        assert addr.startswith("ipc://@sandbox-kernel-iopub-") and kernel_id in addr, addr
        assert made == "[]", made
        if tmpdir == "long":
            assert tmp == env["TMPDIR"], tmp
        # the cell waits a moment after the child: the IOPub thread forwards the pipe's message on
        # its own time, and the idle status could overtake it
        assert k.ok("import os, time\nif os.fork() == 0:\n    print('from a fork', flush=True); os._exit(0)\n"
                    "os.wait(); time.sleep(1)").stdout == "from a fork\n"
        k.ok("import subprocess; child = subprocess.Popen(['sleep', '301.5'])")
        k.kc.stop_channels()
        k.km.shutdown_kernel(now=False)
        assert kernelutil.wait_for(lambda: not _cmdlines_with(b"301.5"), timeout=20), "the kernel's child survived it"
    finally:
        if top:
            shutil.rmtree(top, ignore_errors=True)


def _cmdlines_with(needle: bytes) -> list[str]:
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as fh:
                if needle in fh.read():
                    found.append(pid)
        except OSError:
            pass
    return found
