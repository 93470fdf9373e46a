"""A kernel provisioner that runs the sandboxed kernel as a Slurm job (``srun``).

Chosen in a kernelspec's metadata (``sandbox-kernel install --slurm-partition ...`` writes one)::

    "metadata": {"kernel_provisioner": {"provisioner_name": "sandbox-slurm-provisioner",
                 "config": {"partition": "gpu", "mem": "4G", "cpus": 2, "time": "08:00:00",
                            "gres": "gpu:1"}}}

The kernel's command (the launcher, which applies every layer of the profile, then the
kernel) runs as the only task of a new job: ``srun --job-name=sandbox-kernel-<kernel id>
--ntasks=1 --partition=... -- <launcher argv>``. So Slurm accounts, places and bounds it like
any job (its cgroup: memory, devices for the GRES it was given; proctrack/cgroup knows every
process of it), and the sandbox applies inside the job: the launcher's own cgroup is a child
of the job step's, so the job's limits still bind and the profile's apply within them
(layers/cgroup.py). Accelerator gating intersects the devices Slurm gave the job
(``SLURM_JOB_GPUS`` / ``CUDA_VISIBLE_DEVICES``, accelerators.py).

Lifetime: the job is the kernel. ``scancel`` of the job ends the kernel and every process it
started (Slurm kills the job's cgroup); the provisioner's kill, terminate and cleanup cancel
the job by its id (and by its name for one that is still pending), so a shut-down kernel
leaves no job behind; srun dies with the Jupyter process that started it (PR_SET_PDEATHSIG),
which ends the job. Interrupts: the kernelspec's ``interrupt_mode`` is ``message`` (ipykernel's
interrupt_request), because Slurm's proctrack/cgroup delivers any signal but SIGKILL to the
step's task only (the launcher's supervisor, which does not pass SIGINT on); a signal other
than SIGTERM/SIGKILL sent through the provisioner is ``scancel --signal`` to the job, for what
that reaches.

Scope: the kernel's ports are bound on the address jupyter_client chose (127.0.0.1 by
default), so the job must run on the node the Jupyter server runs on (a one-node partition,
or ``nodelist``); kernels on other nodes need a connection-info callback, not done here.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import subprocess
from typing import Any

from jupyter_client.provisioning import LocalProvisioner
from traitlets import Bool, Integer, List, Unicode

PROVISIONER_NAME = "sandbox-slurm-provisioner"
JOB_PREFIX = "sandbox-kernel-"
# Values go into srun's argv as single --option=value words (never a shell), but a value
# that is not what Slurm accepts is refused here with the key that holds it.
_VALUE_RE = {
    "partition": re.compile(r"[A-Za-z0-9_.,-]+"),
    "account": re.compile(r"[A-Za-z0-9_.-]+"),
    "qos": re.compile(r"[A-Za-z0-9_.-]+"),
    "mem": re.compile(r"[0-9]+[KMGT]?"),
    "time": re.compile(r"[0-9]+(-[0-9]{1,2})?(:[0-9]{1,2}){0,2}|UNLIMITED|INFINITE"),
    "gres": re.compile(r"[A-Za-z0-9_:,]+"),
    "nodelist": re.compile(r"[A-Za-z0-9_.,\[\]-]+"),
    "constraint": re.compile(r"[A-Za-z0-9_.&|,\[\]()*-]+"),
}
# Variables of an enclosing job (a Jupyter server that is itself a Slurm job, batchspawner):
# srun would run the kernel as a step of that job; by default the kernel is its own job.
_OUTER_JOB_VARS = re.compile(r"SLURM_(JOB_?ID|STEP_?ID|JOB_NODELIST|NODELIST|NNODES|JOB_NUM_NODES|NTASKS|NPROCS|"
                             r"TASKS_PER_NODE|JOB_CPUS_PER_NODE|CPUS_ON_NODE|MEM_PER_NODE|MEM_PER_CPU|JOB_GPUS|"
                             r"STEP_GPUS|GPUS_ON_NODE|JOB_PARTITION|JOB_ACCOUNT|JOB_QOS|JOB_NAME|TRES_PER_TASK|"
                             r"CPUS_PER_TASK|JOB_UID|JOB_USER|DISTRIBUTION|SUBMIT_DIR|SUBMIT_HOST|CLUSTER_NAME|"
                             r"NODEID|PROCID|LOCALID|TASK_PID|TOPOLOGY_ADDR.*|PRIO_PROCESS|UMASK|WORKING_CLUSTER|"
                             r"JOB_RESERVATION|GTIDS|LAUNCH_NODE_IPADDR|SRUN_COMM_.*|STEP_.*|JOB_.*|GPUS.*|CPU_BIND.*)")


class SlurmConfigError(ValueError):
    pass


def check_config(config: dict[str, Any], where: str = "kernel_provisioner.config") -> None:
    """Refuse a config key or value srun would misread, naming the key and the fix."""
    known = {"partition", "account", "qos", "mem", "cpus", "time", "gres", "nodelist", "constraint",
             "extra_args", "srun", "scancel", "squeue", "within_allocation"}
    for key, value in config.items():
        if key not in known:
            raise SlurmConfigError(f"{where}: unknown key {key!r} (known: {', '.join(sorted(known))})")
        if value is None:
            continue
        if key in _VALUE_RE and not (isinstance(value, str) and _VALUE_RE[key].fullmatch(value)):
            raise SlurmConfigError(f"{where}.{key}: {value!r} is not a valid Slurm {key} "
                                   f"(expected {_VALUE_RE[key].pattern})")
        if key == "cpus" and not (isinstance(value, int) and not isinstance(value, bool) and value > 0):
            raise SlurmConfigError(f"{where}.cpus: {value!r} must be a positive integer")
        if key == "extra_args" and not (isinstance(value, list) and all(
                isinstance(a, str) and a.startswith("--") and "\n" not in a for a in value)):
            raise SlurmConfigError(f"{where}.extra_args: {value!r} must be a list of long srun options "
                                   "('--option=value')")
        if key in ("srun", "scancel", "squeue") and not (isinstance(value, str) and os.path.isabs(value)):
            raise SlurmConfigError(f"{where}.{key}: {value!r} must be an absolute path")
        if key == "within_allocation" and not isinstance(value, bool):
            raise SlurmConfigError(f"{where}.within_allocation: {value!r} must be true or false")


def srun_options(config: dict[str, Any], job_name: str) -> list[str]:
    """srun's options for a kernel job (without the command)."""
    opts = [f"--job-name={job_name}", "--ntasks=1", "--nodes=1", "--kill-on-bad-exit=1", "--quiet"]
    for key in ("partition", "account", "qos", "mem", "time", "gres", "nodelist", "constraint"):
        if config.get(key):
            opts.append(f"--{key}={config[key]}")
    if config.get("cpus"):
        opts.append(f"--cpus-per-task={int(config['cpus'])}")
    return opts + list(config.get("extra_args") or [])


def _die_with_parent(parent: int):
    """srun gets SIGTERM when the Jupyter process that started it dies (PR_SET_PDEATHSIG), and
    ends the kernel's job: a server killed outright leaves no kernel job running."""

    def preexec() -> None:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGTERM), 0, 0, 0)  # PR_SET_PDEATHSIG
        if os.getppid() != parent:  # it died before the line above
            os.kill(os.getpid(), signal.SIGTERM)

    return preexec


class SlurmProvisioner(LocalProvisioner):
    """Runs the kernelspec's command as a Slurm job (see the module's docstring)."""

    partition = Unicode(None, allow_none=True, config=True, help="Slurm partition (srun --partition)")
    account = Unicode(None, allow_none=True, config=True, help="srun --account")
    qos = Unicode(None, allow_none=True, config=True, help="srun --qos")
    mem = Unicode(None, allow_none=True, config=True, help="memory of the job (srun --mem), e.g. 4G")
    cpus = Integer(None, allow_none=True, config=True, help="srun --cpus-per-task")
    time = Unicode(None, allow_none=True, config=True, help="time limit (srun --time), e.g. 08:00:00")
    gres = Unicode(None, allow_none=True, config=True, help="generic resources (srun --gres), e.g. gpu:1")
    nodelist = Unicode(None, allow_none=True, config=True, help="srun --nodelist")
    constraint = Unicode(None, allow_none=True, config=True, help="srun --constraint")
    extra_args = List(Unicode(), config=True, help="more srun options, each '--option=value'")
    srun = Unicode(None, allow_none=True, config=True, help="absolute path of srun (default: from PATH)")
    scancel = Unicode(None, allow_none=True, config=True, help="absolute path of scancel (default: from PATH)")
    squeue = Unicode(None, allow_none=True, config=True, help="absolute path of squeue (default: from PATH)")
    within_allocation = Bool(False, config=True, help="run as a step of the Jupyter server's own job "
                                                      "(SLURM_JOB_ID) instead of a job of its own")

    job_id: str | None = None

    def _config(self) -> dict[str, Any]:
        keys = ("partition", "account", "qos", "mem", "cpus", "time", "gres", "nodelist", "constraint",
                "extra_args", "srun", "scancel", "squeue", "within_allocation")
        return {k: getattr(self, k) for k in keys}

    def _tool(self, name: str) -> str:
        path = getattr(self, name) or shutil.which(name)
        if not path:
            raise RuntimeError(f"{PROVISIONER_NAME}: {name} is not on PATH (install Slurm's client commands, or "
                               f"set kernel_provisioner.config.{name} in the kernelspec)")
        return path

    @property
    def job_name(self) -> str:
        return JOB_PREFIX + str(self.kernel_id)

    async def pre_launch(self, **kwargs: Any) -> dict[str, Any]:
        try:
            check_config({k: v for k, v in self._config().items() if v not in (None, [], False)})
        except SlurmConfigError as e:
            raise RuntimeError(f"kernelspec {getattr(self.kernel_spec, 'display_name', '')!r}: {e}") from None
        kwargs = await super().pre_launch(**kwargs)
        kwargs["cmd"] = [self._tool("srun"), *srun_options(self._config(), self.job_name), "--", *kwargs["cmd"]]
        env = dict(kwargs.get("env") or os.environ)
        if not self.within_allocation:
            env = {k: v for k, v in env.items() if not _OUTER_JOB_VARS.fullmatch(k)}
        kwargs["env"] = env
        return kwargs

    async def launch_kernel(self, cmd: list[str], **kwargs: Any):
        self.job_id = None
        kwargs["preexec_fn"] = _die_with_parent(os.getpid())
        info = await super().launch_kernel(cmd, **kwargs)
        self.log.info("%s: kernel %s submitted as Slurm job %r", PROVISIONER_NAME, self.kernel_id, self.job_name)
        return info

    # ------------------------------------------------------------------ the job

    def _job_ids(self) -> list[str]:
        """Ids of this kernel's jobs that Slurm still has (pending, running or completing)."""
        try:
            out = subprocess.run([self._tool("squeue"), "--noheader", f"--name={self.job_name}",
                                  f"--user={os.geteuid()}", "--format=%i"],
                                 capture_output=True, text=True, timeout=30).stdout
        except (OSError, subprocess.SubprocessError):
            return [self.job_id] if self.job_id else []
        ids = [x.strip() for x in out.split() if x.strip().isdigit()]
        if ids and not self.job_id:
            self.job_id = ids[0]
        return ids

    def _scancel(self, *args: str, ids: list[str] | None = None) -> None:
        ids = self._job_ids() if ids is None else ids
        if ids:
            subprocess.run([self._tool("scancel"), *args, *ids], capture_output=True, timeout=30)

    async def send_signal(self, signum: int) -> None:
        if signum == 0 or not self.process:
            return await super().send_signal(signum)
        if signum in (signal.SIGKILL, signal.SIGTERM):
            # kill() and terminate() come here: the whole job (every process of the kernel,
            # as Slurm's proctrack knows them), then srun itself
            await asyncio.to_thread(self._scancel)
            return await super().send_signal(signum)
        # to the job's step: Slurm delivers it to the task (the launcher's supervisor) only;
        # interrupts go as messages (the kernelspec's interrupt_mode), not through here
        await asyncio.to_thread(self._scancel, f"--signal={signal.Signals(signum).name[3:]}")

    async def cleanup(self, restart: bool = False) -> None:
        # The kernel exited (shutdown) or was killed: no job of it may stay, pending or running.
        await asyncio.to_thread(self._scancel)
        await super().cleanup(restart)

    async def get_provisioner_info(self) -> dict:
        info = await super().get_provisioner_info()
        info.update({"slurm_job_name": self.job_name, "slurm_job_id": self.job_id})
        return info

    async def load_provisioner_info(self, provisioner_info: dict) -> None:
        await super().load_provisioner_info(provisioner_info)
        self.job_id = provisioner_info.get("slurm_job_id")
