"""N sandbox kernels at once as Slurm jobs (sandbox_kernel/slurm_provisioner.py) on the cluster
scripts/engines.sh starts: time until every kernel answers, memory, and what is left after.

    python -m benchmarks.slurm_scale --kernels 32 --out benchmarks/results/slurm-32-cpu-x86_64-2core

Starts the N kernels concurrently (jupyter_client's AsyncKernelManager, one srun each), each
runs `1 + 1`; records when each answered (from the common start). Memory: the sum of the
jobs' memory cgroups (memory.usage_in_bytes, what Slurm accounts to the jobs) and the host's
MemAvailable drop, with all N idle. Then half are shut down (graceful) and half cancelled with
scancel, and it checks that no kernel job, no job cgroup and no kernel process remain.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CG = "/sys/fs/cgroup"


def meminfo(key: str) -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    return 0


def job_dirs() -> list[Path]:
    out = []
    for top in Path(CG).glob("memory/slurm*/uid_*/job_*"):
        out.append(top)
    return out


def jobs_memory() -> int:
    total = 0
    for d in job_dirs():
        try:
            total += int((d / "memory.usage_in_bytes").read_text())
        except OSError:
            pass
    return total


def kernel_jobs() -> list[str]:
    out = subprocess.run(["squeue", "--noheader", "--format=%i %j"], capture_output=True, text=True).stdout
    return [line for line in out.splitlines() if " sandbox-kernel-" in line]


def launcher_processes() -> list[int]:
    pids = []
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                cmd = (p / "cmdline").read_bytes()
            except OSError:
                continue
            if b"boot.py\0run\0--profile\0" in cmd and b"slurm-bench" in cmd:
                pids.append(int(p.name))
    return pids


async def main(n: int, out_dir: Path, profile: str, mem: str) -> dict:
    from jupyter_client.manager import AsyncKernelManager

    from sandbox_kernel import policy_cache
    from sandbox_kernel.install import kernel_argv, slurm_spec

    subprocess.run([str(REPO / "scripts" / "engines.sh"), "slurm"], check=True)
    prefix = Path(tempfile.mkdtemp(prefix="slurm-bench-", dir="/var/tmp"))
    kdir = prefix / "share" / "jupyter" / "kernels"
    name, spec = slurm_spec("slurm-bench", {"argv": kernel_argv(profile), "display_name": "slurm-bench",
                                            "language": "python", "interrupt_mode": "signal",
                                            "metadata": {"sandbox_kernel": {"profile": profile}}},
                            {"partition": "sbx", "mem": mem, "time": "00:20:00"}, named=True)
    (kdir / name).mkdir(parents=True)
    (kdir / name / "kernel.json").write_text(json.dumps(spec))
    policy_cache.write(str(kdir / name / policy_cache.FILE_NAME), [profile])
    os.environ["JUPYTER_PATH"] = str(prefix / "share" / "jupyter")
    avail0, jobs0 = meminfo("MemAvailable"), jobs_memory()

    t0 = time.monotonic()

    async def one(i: int):
        km = AsyncKernelManager(kernel_name=name)
        await km.start_kernel(cwd=str(prefix))
        kc = km.client()
        kc.start_channels()
        await kc.wait_for_ready(timeout=600)
        reply = await kc.execute_interactive("1 + 1", timeout=300)
        assert reply["content"]["status"] == "ok"
        t = time.monotonic() - t0
        print(f"kernel {i} answered at {t:.1f} s", file=sys.stderr, flush=True)
        return km, kc, t

    started = await asyncio.gather(*(one(i) for i in range(n)))
    answered = sorted(t for _, _, t in started)
    await asyncio.sleep(2)
    avail1, jobs1 = meminfo("MemAvailable"), jobs_memory()
    running = len(kernel_jobs())
    # half shut down, half cancelled by Slurm
    t1 = time.monotonic()
    graceful, cancelled = started[: n // 2], started[n // 2:]
    for km, _kc, _ in cancelled:
        km.provisioner._job_ids()
        subprocess.run(["scancel", km.provisioner.job_id], check=True)
    for _km, kc, _ in graceful:
        kc.stop_channels()
    await asyncio.gather(*(km.shutdown_kernel() for km, _, _ in graceful))
    for km, kc, _ in cancelled:
        kc.stop_channels()
        await km.shutdown_kernel(now=True)
    left = {}
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        left = {"jobs": kernel_jobs(), "job_cgroups": [str(d) for d in job_dirs()],
                "sandbox_cgroups": [str(p) for p in Path(CG).glob("*/slurm*/**/sandbox-kernel-*")],
                "launcher_processes": launcher_processes()}
        if not any(left.values()):
            break
        await asyncio.sleep(0.5)
    ended = time.monotonic() - t1
    result = {
        "kernels": n, "profile": profile, "job_mem": mem,
        "machine": {"cpus": os.cpu_count(), "mem_total": meminfo("MemTotal"), "kernel": platform.release(),
                    "python": sys.version.split()[0],
                    "slurm": subprocess.run(["sinfo", "--version"], capture_output=True, text=True).stdout.strip()},
        "all_answered_s": round(answered[-1], 2),
        "first_answered_s": round(answered[0], 2),
        "median_answered_s": round(answered[len(answered) // 2], 2),
        "answered_s": [round(t, 2) for t in answered],
        "running_jobs_at_peak": running,
        "jobs_memory_bytes": jobs1 - jobs0,
        "jobs_memory_per_kernel_mib": round((jobs1 - jobs0) / n / 2**20, 1),
        "host_memavailable_drop_bytes": avail0 - avail1,
        "host_memavailable_drop_per_kernel_mib": round((avail0 - avail1) / n / 2**20, 1),
        "teardown_s": round(ended, 2),
        "left_after_teardown": left,
        "nothing_left": not any(left.values()),
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "results.json").write_text(json.dumps(result, indent=1) + "\n")
    return result


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kernels", type=int, default=32)
    ap.add_argument("--profile", default="offline")
    ap.add_argument("--mem", default="256M", help="srun --mem of each kernel job")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "slurm-32-cpu-x86_64-2core")
    a = ap.parse_args()
    r = asyncio.run(main(a.kernels, a.out, a.profile, a.mem))
    print(json.dumps({k: v for k, v in r.items() if k != "answered_s"}, indent=1))
    sys.exit(0 if r["nothing_left"] else 1)
