"""A JupyterHub whose single-user servers are Slurm jobs (batchspawner's SlurmSpawner) on the
one-node cluster scripts/engines.sh starts, with examples/jupyterhub/jupyterhub_config.py's
per-group ceiling: the user's server runs as a job of the user, and its sandbox kernels (in
that job) have the ceiling of the user's group: a banned import and a connection refused.
When the Hub stops the server, its job ends and nothing of it is left.
"""

from __future__ import annotations

import os
import shutil
import sys

import engines
import kernelutil
import pytest
import servers
from hubutil import CHP, CHP_MISSING, NET_PROBE, ensure_user, hub_api, running_hub, start_server

from sandbox_kernel import install

pytestmark = [pytest.mark.kernel, pytest.mark.engines, pytest.mark.e2e, pytest.mark.slow,
              pytest.mark.serial]  # the host's Slurm daemons (scripts/engines.sh), its one partition and job queue

USER, GROUP, CEILING = "sbxhub-slurm", "sbxhub-slurm-exam", "offline"


@pytest.fixture(scope="module")
def slurm_hub(tmp_path_factory, request):
    engines.start("slurm")
    missing = [what for what, ok in [
        (CHP_MISSING, os.access(CHP, os.X_OK)),
        ("the Python packages jupyterhub and batchspawner (pip install -e '.[e2e]')",
         shutil.which("batchspawner-singleuser", path=os.path.dirname(sys.executable))),
    ] if not ok]
    if missing:
        pytest.skip("missing: " + "; ".join(missing))
    request.getfixturevalue("unprivileged")
    pw = ensure_user(USER, GROUP)
    install.install("free", prefix=str(kernelutil.PREFIX))
    work = tmp_path_factory.mktemp("slurmhub")
    os.chmod(work, 0o700)
    bin_dir = os.path.dirname(sys.executable)
    config = f"""
import batchspawner
c.JupyterHub.spawner_class = "batchspawner.SlurmSpawner"
# the Hub runs as root: submit as the user (the default is sudo, not installed here)
c.SlurmSpawner.exec_prefix = "runuser -u {{username}} --"
# --get-user-env is for root's sbatch only; the environment comes from the Hub (keepvars)
c.SlurmSpawner.batch_script = batchspawner.SlurmSpawner.batch_script.default_value.replace(
    "#SBATCH --get-user-env=L\\n", "")
c.SlurmSpawner.req_partition = {engines.PARTITION!r}
c.SlurmSpawner.req_memory = "2G"
c.SlurmSpawner.req_runtime = "00:20:00"
c.SlurmSpawner.batchspawner_singleuser_cmd = {os.path.join(bin_dir, "batchspawner-singleuser")!r}
c.Spawner.cmd = [{os.path.join(bin_dir, "jupyterhub-singleuser")!r}]
c.Spawner.environment.update({{"JUPYTER_PATH": {str(kernelutil.PREFIX / "share" / "jupyter")!r}}})
"""
    with running_hub(work, config, {GROUP: CEILING}, [USER]) as (srv, base):
        yield srv, base, pw


def _server_jobs(pw) -> list[str]:
    return engines.squeue(f"--user={pw.pw_uid}", "--name=spawner-jupyterhub", "--format=%i %T")


def test_single_user_server_in_a_slurm_job_has_the_ceiling(slurm_hub, listener):
    srv, base, pw = slurm_hub
    token = start_server(srv, base, USER)
    jobs = _server_jobs(pw)
    assert len(jobs) == 1 and jobs[0].split()[1] == "RUNNING", jobs
    job = jobs[0].split()[0]
    k = servers.RemoteKernel(f"{base}/user/{USER}", token, "sandbox-free")
    try:
        r = k.execute("import pyngrok")
        assert r["status"] == "error" and r["ename"] == "ProhibitedImportError", r
        r = k.execute(NET_PROBE.format(port=listener))
        assert r["status"] == "ok", r
        assert r["stdout"].split() == ["ceiling", CEILING, "uid", str(pw.pw_uid), "net", "EPERM"], r
        r = k.execute("import os\nprint(os.environ.get('SLURM_JOB_ID'))\n"
                      "print([l for l in open('/proc/self/cgroup').read().splitlines() if ':memory:' in l][0])")
        job_seen, memory = r["stdout"].split()
        assert job_seen == job, r                 # the kernel runs in the server's job ...
        assert f"/job_{job}/" in memory, r        # ... inside the job's cgroup
    finally:
        k.shutdown()
    r = hub_api(base, "DELETE", f"/users/{USER}/server")
    assert r.status_code in (202, 204), r.text
    assert kernelutil.wait_for(lambda: not _server_jobs(pw), 90), _server_jobs(pw)


@pytest.fixture
def listener():
    li = kernelutil.Listener()
    yield li.port
    li.close()
    assert li.accepted == 0
