"""Sandboxed kernels as Slurm jobs (sandbox_kernel/slurm_provisioner.py), on a real one-node
cluster with proctrack/cgroup and task/cgroup that scripts/engines.sh starts (as root).

What is checked, each through a real kernel that is a Slurm job:
- papermill runs a notebook on it, as root and as an ordinary user; the banned import and
  the forbidden connection are refused (no connection is accepted);
- the kernel's cgroup is a child of the job's, and the job's memory limit still binds inside
  the sandbox while the profile's process limit applies within it;
- `scancel` ends the kernel and every process it started; a shut-down kernel (graceful or
  killed) ends its job; nothing survives: no process, no job, no cgroup.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import engines
import kernelutil
import nbformat
import pytest
from jupyter_client.manager import KernelManager
from nbformat.v4 import new_code_cell, new_notebook
from test_notebooks import _errors, _text, papermill
from testenv import TESTS

from sandbox_kernel.install import kernel_argv
from sandbox_kernel.slurm_provisioner import SlurmConfigError, check_config, srun_options

pytestmark = [pytest.mark.engines, pytest.mark.serial]  # the host's Slurm daemons (scripts/engines.sh), its one partition and job queue

CG = "/sys/fs/cgroup"


@pytest.fixture(scope="module")
def slurm():
    engines.start("slurm")
    yield
    assert engines.kernel_jobs() == [] or kernelutil.wait_for(lambda: engines.kernel_jobs() == [], 60), \
        engines.kernel_jobs()


def _spec(name: str, profile: str, **config) -> str:
    config.setdefault("partition", engines.PARTITION)
    config.setdefault("time", "00:15:00")
    return engines.slurm_spec(kernelutil.SPECS, name, kernel_argv(profile), config)


def _policy_cache(name: str, profile: str) -> None:
    from sandbox_kernel import policy_cache

    f = kernelutil.SPECS / name / policy_cache.FILE_NAME
    policy_cache.write(str(f), [profile])
    os.chmod(f, 0o644)


def _job_cgroups(job_id: str) -> list[str]:
    """Every cgroup directory of the job, in every v1 hierarchy (or the unified one)."""
    found = []
    for root, dirs, _ in os.walk(CG):
        for d in dirs:
            if d == f"job_{job_id}":
                found.append(os.path.join(root, d))
        if root.count("/") > 8:
            dirs[:] = []
    return found


def _pids_under(dirs: list[str]) -> set[int]:
    pids = set()
    for top in dirs:
        for root, _, files in os.walk(top):
            if "cgroup.procs" in files:
                try:
                    pids |= {int(x) for x in Path(root, "cgroup.procs").read_text().split()}
                except OSError:
                    pass
    return pids


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _start(name: str, cwd: str) -> tuple[KernelManager, object]:
    km = KernelManager(kernel_name=name)
    km.start_kernel(cwd=cwd)
    kc = km.client()
    kc.start_channels()
    kc.wait_for_ready(timeout=120)
    return km, kc


def _run(kc, code: str, timeout: float = 120) -> str:
    out = []
    reply = kc.execute_interactive(code, timeout=timeout, output_hook=lambda m: out.append(
        m["content"].get("text", "")) if m["msg_type"] == "stream" else None)
    assert reply["content"]["status"] == "ok", reply["content"]
    return "".join(out)


# --------------------------------------------------------------------------- configuration


def test_provisioner_config_is_checked_key_by_key():
    check_config({"partition": "gpu", "mem": "4G", "cpus": 2, "time": "1-00:00:00", "gres": "gpu:a100:1",
                  "extra_args": ["--exclusive"]})
    for bad, key in (({"mem": "4 G"}, "mem"), ({"partition": "a b"}, "partition"), ({"cpus": 0}, "cpus"),
                     ({"cpus": "2"}, "cpus"), ({"extra_args": ["-w", "n1"]}, "extra_args"),
                     ({"srun": "srun"}, "srun"), ({"partion": "x"}, "partion"), ({"gres": "gpu;1"}, "gres")):
        with pytest.raises(SlurmConfigError, match=key):
            check_config(bad)
    opts = srun_options({"partition": "p", "mem": "1G", "cpus": 2, "extra_args": ["--exclusive"]}, "sandbox-kernel-x")
    assert opts[:1] == ["--job-name=sandbox-kernel-x"] and "--partition=p" in opts and "--mem=1G" in opts
    assert "--cpus-per-task=2" in opts and opts[-1] == "--exclusive"


def test_install_writes_a_slurm_kernelspec(tmp_path):
    env = dict(os.environ)
    proc = subprocess.run([sys.executable, "-m", "sandbox_kernel.cli", "install", "--profile", "offline", "--prefix",
                           str(tmp_path), "--slurm-partition", "gpu", "--slurm-mem", "4G", "--slurm-cpus", "2",
                           "--slurm-gres", "gpu:1", "--slurm-arg=--exclusive"],
                          capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    import json

    spec = json.loads((tmp_path / "share/jupyter/kernels/sandbox-offline-slurm/kernel.json").read_text())
    assert spec["metadata"]["kernel_provisioner"] == {
        "provisioner_name": "sandbox-slurm-provisioner",
        "config": {"partition": "gpu", "mem": "4G", "cpus": 2, "gres": "gpu:1", "extra_args": ["--exclusive"]}}
    assert spec["argv"] == kernel_argv("offline") and spec["interrupt_mode"] == "message"
    bad = subprocess.run([sys.executable, "-m", "sandbox_kernel.cli", "install", "--profile", "offline", "--prefix",
                          str(tmp_path / "bad"), "--slurm-mem", "lots"], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 1 and "--slurm-mem: 'lots' is not a valid Slurm mem" in bad.stderr, bad.stderr
    assert "Traceback" not in bad.stderr and not (tmp_path / "bad").exists()
    both = subprocess.run([sys.executable, "-m", "sandbox_kernel.cli", "install", "--profile", "offline", "--prefix",
                           str(tmp_path / "both"), "--slurm-partition", "gpu", "--pool", "2"],
                          capture_output=True, text=True, timeout=120)
    assert both.returncode == 1 and "--pool and --slurm-* cannot be combined" in both.stderr, both.stderr
    assert "Traceback" not in both.stderr and not (tmp_path / "both").exists()


def test_the_entry_point_finds_the_provisioner():
    from jupyter_client.provisioning import KernelProvisionerFactory

    from sandbox_kernel.slurm_provisioner import SlurmProvisioner

    factory = KernelProvisionerFactory.instance()
    assert factory._check_availability("sandbox-slurm-provisioner")
    assert factory.provisioners["sandbox-slurm-provisioner"].load() is SlurmProvisioner


# --------------------------------------------------------------------------- papermill


@pytest.mark.kernel
def test_papermill_runs_a_notebook_on_a_slurm_kernel(slurm, tmp_path, who):
    """papermill -k <Slurm kernelspec>: the kernel is a Slurm job of the user who ran papermill;
    a banned import is refused, a connection (network: none) is never accepted, and when
    papermill is done no job is left."""
    name = _spec(f"t-slurm-offline-{'user' if who else 'root'}", "offline", mem="1G")
    _policy_cache(name, "offline")
    lsock = socket.socket()
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(8)
    acceptor = kernelutil.Acceptor(lsock)
    port = lsock.getsockname()[1]
    work = Path(kernelutil.user_workdir(who)) if who else tmp_path
    nb = new_notebook(cells=[
        new_code_cell("import os\nprint('job', os.environ.get('SLURM_JOB_ID'), 'uid', os.getuid())\n"
                      "print(open('/proc/self/cgroup').read())"),
        new_code_cell("import pyngrok", metadata={"tags": ["raises-exception"]}),
        new_code_cell("import socket\ntry:\n    socket.create_connection(('127.0.0.1', %d), timeout=5)\n"
                      "    print('connected')\nexcept OSError as e:\n    print('refused', e.errno)" % port),
        new_code_cell("print(6 * 7)"),
    ])
    src, out = work / "in.ipynb", work / "out.ipynb"
    nbformat.write(nb, str(src))
    if who:
        os.chown(src, who.pw_uid, who.pw_gid)
    try:
        proc = papermill(src, out, name, str(work), who)
    finally:
        acceptor.close()
    assert out.exists(), proc.stderr[-3000:]
    cells = [c for c in nbformat.read(str(out), as_version=4).cells if c.cell_type == "code"]
    first = _text(cells[0]).split()
    assert first[:1] == ["job"], (cells[0].outputs, proc.returncode, proc.stderr[-3000:])
    assert first[0] == "job" and first[1].isdigit(), _text(cells[0])  # a Slurm job ...
    job = first[1]
    assert first[3] == str(who.pw_uid if who else 0)                   # ... of the user who ran papermill
    memory = [line for line in _text(cells[0]).splitlines() if ":memory:" in line or line.startswith("0::")]
    # in the job's group; as root the sandbox's own group nests in it (cgroup v1: memory; v2: the
    # unified line). An ordinary user gets none there: Slurm gives the job's user the step's
    # directory but not its cgroup.procs, so a group made there could never be removed.
    assert any(f"/job_{job}/" in line for line in memory), _text(cells[0])
    assert any("/sandbox-kernel-" in line for line in memory) == (not who), _text(cells[0])
    errors = _errors(cells[1])
    assert len(errors) == 1 and errors[0]["ename"] == "ProhibitedImportError", cells[1].outputs
    assert _text(cells[2]).startswith("refused"), cells[2].outputs
    assert acceptor.accepted == 0
    assert _text(cells[3]).strip() == "42"
    assert kernelutil.wait_for(lambda: not [j for j in engines.kernel_jobs() if j.split()[0] == job], 60), \
        engines.kernel_jobs()
    assert kernelutil.wait_for(lambda: not _job_cgroups(job), 60), _job_cgroups(job)


# --------------------------------------------------------------------------- limits


@pytest.mark.kernel
def test_the_jobs_memory_limit_binds_inside_the_sandbox(slurm, tmp_path):
    """srun --mem=300M around a profile allowing 8 GiB: a child allocating 450 MiB is killed by
    the job's cgroup (ours nests inside it); 100 MiB is fine. The profile's own process limit
    (pids cgroup) applies inside the job."""
    kernelutil.write_profile("slurm-nest", """
        extends: offline
        description: nested in a Slurm job
        limits:
          memory: 8GiB
          processes: 40
    """)
    name = _spec("t-slurm-nest", "slurm-nest", mem="300M")
    _policy_cache(name, "slurm-nest")
    km, kc = _start(name, str(tmp_path))
    try:
        alloc = ("import subprocess, sys\n"
                 "def child(mib):\n"
                 "    code = f'b = bytearray({mib} << 20)\\nfor i in range(0, len(b), 4096): b[i] = 1\\nprint(\"alive\")'\n"
                 "    return subprocess.run([sys.executable, '-c', code], capture_output=True, text=True).returncode\n"
                 "print(child(100), child(450))")
        small, big = _run(kc, alloc).split()
        assert small == "0"
        assert big == "-9"  # SIGKILL from the job's memory cgroup (OOM)
        out = _run(kc, kernelutil.FORK_BOMB.replace("\n    ", "\n"))
        n, err = out.split()
        assert err == "EAGAIN" and int(n) < 40, out
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)


# --------------------------------------------------------------------------- lifetime


def _kernel_job(km) -> str:
    prov = km.provisioner
    assert kernelutil.wait_for(lambda: prov._job_ids() != [], 30), engines.kernel_jobs()
    return prov._job_ids()[0]


def _spawn_children(kc) -> None:
    """A child, a grandchild in a new session (a daemon), both sleeping."""
    _run(kc, "import subprocess, sys, os\n"
             "p1 = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(1000)'])\n"
             "p2 = subprocess.Popen([sys.executable, '-c', 'import os, time\\nif os.fork() == 0:\\n    os.setsid()\\n"
             "    time.sleep(1000)\\n'], start_new_session=True)\n"
             "p2.wait()\n"
             "print('ok')")


@pytest.mark.kernel
@pytest.mark.parametrize("how", ["scancel", "shutdown", "shutdown-now"])
def test_nothing_survives_the_job(slurm, tmp_path, how):
    """`scancel <job>` ends the kernel and every process it started; a shut-down kernel
    (graceful, or killed: now=True) ends its job; after either no process of it, no job and
    no cgroup of it remain."""
    name = _spec("t-slurm-life", "offline", mem="1G")
    _policy_cache(name, "offline")
    km, kc = _start(name, str(tmp_path))
    try:
        job = _kernel_job(km)
        _spawn_children(kc)
        groups = _job_cgroups(job)
        pids = _pids_under(groups)
        assert len(pids) >= 4, (groups, pids)  # launcher/supervisor, kernel, child, daemon (at least)
        if how == "scancel":
            subprocess.run(["scancel", job], check=True, timeout=60)
            assert kernelutil.wait_for(lambda: not km.is_alive(), 60)
        else:
            kc.stop_channels()
            km.shutdown_kernel(now=(how == "shutdown-now"))
        assert kernelutil.wait_for(lambda: not any(_alive(p) for p in pids), 60), [p for p in pids if _alive(p)]
        assert kernelutil.wait_for(lambda: not [j for j in engines.kernel_jobs() if j.split()[0] == job], 60), \
            engines.kernel_jobs()
        assert kernelutil.wait_for(lambda: not _job_cgroups(job), 60), _job_cgroups(job)
    finally:
        kc.stop_channels()
        if km.has_kernel:
            km.shutdown_kernel(now=True)


# --------------------------------------------------------------------------- accelerators

OPEN_NODES = """
import errno, os
res = {}
for n in ('sbxgpu0', 'sbxgpu1'):  # %r: not listable inside the sandbox
    try:
        os.close(os.open(os.path.join(%r, n), os.O_RDWR))
        res[n] = 'opened'
    except OSError as e:
        res[n] = errno.errorcode[e.errno]
print(os.environ.get('SLURM_STEP_GPUS', os.environ.get('SLURM_JOB_GPUS')), os.environ.get('CUDA_VISIBLE_DEVICES'), res)
"""


def _gpu_profile(name: str, devdir: str) -> None:
    kernelutil.write_profile(name, f"""
        extends: offline
        description: two fake GPUs
        accelerators:
          gpu:
            enabled: true
            devices: [0, 1]
            device_pattern: "{devdir}/sbxgpu{{index}}"
    """)


@pytest.mark.kernel
def test_gpu_gating_intersects_slurms_allocation_in_the_launcher(tmp_path):
    """The accelerators layer alone (no cluster needed): in a job whose SLURM_JOB_GPUS is 1 (what
    sbatch/salloc set; srun's steps have SLURM_STEP_GPUS, which the next test covers), a
    profile allowing GPUs 0 and 1 grants node 1 only (Landlock refuses node 0) and sets
    CUDA_VISIBLE_DEVICES=1."""
    import stat as st
    import tempfile

    if os.geteuid() != 0:
        pytest.skip("fake device nodes need root (mknod)")
    devdir = tempfile.mkdtemp(prefix="sbx-slurmgpu-", dir="/var/tmp")
    os.chmod(devdir, 0o755)
    for i in (0, 1):
        os.mknod(f"{devdir}/sbxgpu{i}", 0o666 | st.S_IFCHR, os.makedev(1, 3))
        os.chmod(f"{devdir}/sbxgpu{i}", 0o666)
    _gpu_profile("slurm-gpu-env", devdir)
    code = OPEN_NODES % (devdir, devdir)
    outside = kernelutil.run_launcher("slurm-gpu-env", sys.executable, "-c", code, cwd=str(tmp_path))
    assert outside.returncode == 0, outside.stderr
    assert outside.stdout.strip() == "None 0,1 {'sbxgpu0': 'opened', 'sbxgpu1': 'opened'}"
    inside = kernelutil.run_launcher("slurm-gpu-env", sys.executable, "-c", code, cwd=str(tmp_path),
                                     env={"SLURM_JOB_ID": "7", "SLURM_JOB_GPUS": "1"})
    assert inside.returncode == 0, inside.stderr
    assert inside.stdout.strip() == "1 1 {'sbxgpu0': 'EACCES', 'sbxgpu1': 'opened'}"


@pytest.mark.kernel
def test_gpu_gating_in_a_job_with_gres(slurm, tmp_path):
    """A kernel job with --gres=gpu:1 on a node with two (fake) GPUs: the one Slurm allocated is
    the only one the kernel may open (no driver behind it: ENXIO, past both gates), the other
    is refused (Slurm's devices cgroup: EPERM, and the sandbox's Landlock), and
    CUDA_VISIBLE_DEVICES names the allocated one."""
    devdir = str(engines.STATE / "dev")
    if not os.path.exists(f"{devdir}/sbxgpu1"):
        pytest.fail(f"scripts/engines.sh made no fake GPUs in {devdir}")
    _gpu_profile("slurm-gpu", devdir)
    name = _spec("t-slurm-gpu", "slurm-gpu", mem="1G", gres="gpu:1")
    _policy_cache(name, "slurm-gpu")
    km, kc = _start(name, str(tmp_path))
    try:
        out = _run(kc, OPEN_NODES % (devdir, devdir)).strip()
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)
    job_gpus, visible, res = out.split(" ", 2)
    assert job_gpus in ("0", "1") and visible == job_gpus, out
    other = "1" if job_gpus == "0" else "0"
    assert res == str({f"sbxgpu{i}": ("ENXIO" if i == job_gpus else "EPERM") for i in sorted((job_gpus, other))}), out


@pytest.mark.kernel
def test_a_killed_jupyter_process_leaves_no_kernel_job(slurm, tmp_path):
    """The process that started the kernel (a Jupyter server, papermill) is SIGKILLed: srun gets
    SIGTERM (PR_SET_PDEATHSIG), the job ends, and no process of the kernel survives."""
    name = _spec("t-slurm-orphan", "offline", mem="1G")
    _policy_cache(name, "offline")
    code = ("import sys, time\nsys.path.insert(0, %r)\nfrom jupyter_client.manager import start_new_kernel\n"
            "km, kc = start_new_kernel(kernel_name=%r, startup_timeout=120, cwd=%r)\n"
            "km.provisioner._job_ids()\nprint(km.provisioner.job_id, flush=True)\ntime.sleep(600)\n"
            % (str(TESTS), name, str(tmp_path)))
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, env=dict(os.environ))
    try:
        job = proc.stdout.readline().strip()
        assert job.isdigit(), job
        pids = _pids_under(_job_cgroups(job))
        assert len(pids) >= 3, pids
    finally:
        proc.kill()
        proc.wait()
    assert kernelutil.wait_for(lambda: not [j for j in engines.kernel_jobs() if j.split()[0] == job], 60), \
        engines.kernel_jobs()
    assert kernelutil.wait_for(lambda: not any(_alive(p) for p in pids), 60), [p for p in pids if _alive(p)]
    assert kernelutil.wait_for(lambda: not _job_cgroups(job), 60), _job_cgroups(job)


@pytest.mark.kernel
def test_interrupt_reaches_the_kernel(slurm, tmp_path):
    """An interrupt (jupyter_client's interrupt_kernel) reaches the kernel: the running cell stops
    with KeyboardInterrupt and the kernel lives on. Slurm's kernelspecs use interrupt_mode
    "message": Slurm (proctrack/cgroup) signals only the step's task, the launcher's supervisor,
    with anything but SIGKILL, so `scancel --signal=INT` never reached the kernel."""
    name = _spec("t-slurm-int", "offline", mem="1G")
    _policy_cache(name, "offline")
    km, kc = _start(name, str(tmp_path))
    try:
        _run(kc, "print('warm')")
        msg_id = kc.execute("import time\nprint('running', flush=True)\nfor _ in range(600):\n    time.sleep(0.5)\n")
        while True:  # the cell's code is running (not only "busy": an interrupt before it runs is lost)
            m = kc.get_iopub_msg(timeout=60)
            if m["parent_header"].get("msg_id") == msg_id and m["msg_type"] == "stream" \
                    and "running" in m["content"]["text"]:
                break
        km.interrupt_kernel()
        reply = kc.get_shell_msg(timeout=120)
        assert reply["content"]["status"] == "error" and reply["content"]["ename"] == "KeyboardInterrupt", reply
        assert _run(kc, "print(6 * 7)").strip() == "42"
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)
