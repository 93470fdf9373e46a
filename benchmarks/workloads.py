"""The figures reported, and one benchmark session (one kernel) that produces them.

A session starts a fresh kernel of one variant and runs, in order: the start-up
cell, empty cells, ``import torch``, the compute workloads, the syscall-heavy cell
and the DataLoader, then reads the kernel's peak RSS and shuts it down. Fresh
kernels per session make the start-up and ``import torch`` figures honest.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

from . import cells
from .config import Plan
from .kernels import BenchKernel, system_cpu


@dataclass
class Workload:
    id: str
    label: str
    unit: str
    better: str  # "higher" (throughput) or "lower" (time, memory)
    group: str  # start-up | compute | system | memory
    target: dict | None = None  # {"kind": "relative", "limit_pct": 1} or {"kind": "absolute", "limit": 100}
    digits: int = 1
    figure: str = "value"  # a session's figure: "value", "median" of its blocks, "parts" (see stats.py)

    def to_dict(self) -> dict:
        return asdict(self)


COMPUTE = {"kind": "relative", "limit_pct": 1.0}


def _dtype_label(dtype: str) -> str:
    return {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}.get(dtype, dtype)


def workloads(plan: Plan) -> list[Workload]:
    inf = plan.inference
    if plan.startup_only:
        return [
            Workload("startup", "kernel start → first execute_reply", "ms", "lower", "start-up",
                     {"kind": "absolute", "limit": 100.0}, 0),
            Workload("rtt", "empty-cell round trip", "ms", "lower", "start-up", {"kind": "absolute", "limit": 0.3}, 3,
                     "median"),
            Workload("import_torch", "`import torch` in a fresh kernel", "s", "lower", "start-up",
                     {"kind": "relative", "limit_pct": 3.0}, 3),
            Workload("rss_start", "kernel peak RSS after start-up", "MiB", "lower", "memory", None, 1),
        ]
    out = [
        Workload("startup", "kernel start → first execute_reply", "ms", "lower", "start-up",
                 {"kind": "absolute", "limit": 100.0}, 0),
        Workload("rtt", "empty-cell round trip", "ms", "lower", "start-up", {"kind": "absolute", "limit": 0.3}, 3,
                 "median"),
        Workload("import_torch", "`import torch` in a fresh kernel", "s", "lower", "start-up",
                 {"kind": "relative", "limit_pct": 3.0}, 3),
    ]
    for dtype, n in plan.matmul:
        out.append(Workload(f"matmul_{_dtype_label(dtype)}_{n}", f"matmul {_dtype_label(dtype)} {n}×{n}",
                            "GFLOP/s", "higher", "compute", COMPUTE, 1, "median"))
    out += [
        Workload("train_step", f"CNN training step (batch {plan.train_batch})", "steps/s", "higher", "compute",
                 COMPUTE, 2, "median"),
        Workload("inference", f"transformer inference ({inf['layers']}×d{inf['d_model']}, seq {inf['seq']}, "
                              f"{_dtype_label(inf['dtype'])})", "seq/s", "higher", "compute", COMPUTE, 1, "median"),
        Workload("syscalls", f"syscall-heavy cell ({plan.syscalls['n_ops']:,} each: read, stat, getpid)",
                 "s", "lower", "system", {"kind": "relative", "limit_pct": 3.0}, 3, "parts"),
        Workload("syscall_read", "· small file read (open+read+close)", "µs/op", "lower", "system", None, 2, "median"),
        Workload("syscall_stat", "· stat", "µs/op", "lower", "system", None, 3, "median"),
        Workload("syscall_getpid", "· getpid", "µs/op", "lower", "system", None, 3, "median"),
        Workload("dataloader", f"DataLoader, {plan.dataloader['workers']} forked workers", "samples/s", "higher",
                 "system", None, 0, "median"),
        *_peer_workloads(plan),
        Workload("rss_start", "kernel peak RSS after start-up", "MiB", "lower", "memory", None, 1),
        Workload("rss_peak", "kernel peak RSS after all workloads", "MiB", "lower", "memory", None, 1),
    ]
    return out


def _peer_workloads(plan: Plan) -> list[Workload]:
    """``--peers``: the figures issue 21 compares with bubblewrap and firejail."""
    if not plan.peers:
        return []
    return [
        Workload("syscall_tmp_read", "· small file read in /tmp (open+read+close)", "µs/op", "lower", "system",
                 None, 2, "median"),
        Workload("syscall_sock", "· socketpair send+recv, 1 byte (sendto+recvfrom)", "µs/op", "lower", "system",
                 None, 3, "median"),
        Workload("pss_start", "PSS of the kernel's process tree after start-up", "MiB", "lower", "memory", None, 1),
    ]


def session_steps(plan: Plan) -> list[str]:
    """The step names of one session, for the progress bar."""
    if plan.startup_only:
        return ["start", "empty cells", "import torch", "shutdown"]
    return (["start", "empty cells", "import torch"] + [f"matmul {_dtype_label(d)} {n}" for d, n in plan.matmul]
            + ["training step", "inference", "syscalls"] + (["peer syscalls"] if plan.peers else [])
            + ["dataloader", "shutdown"])


def run_session(kernel: BenchKernel, plan: Plan, step: Callable[[str], None], *, want_env: bool = False,
                warmup: bool = False, only: tuple[str, ...] | None = None,
                probe_host: dict | None = None) -> tuple[dict, dict, dict | None, dict]:
    """One kernel, every workload (or those in `only`).

    Returns ({workload: value}, {workload: inner samples}, environment or None, session info).
    The session info has the CPU time that *other* processes used meanwhile (the machine's
    busy time minus this kernel's and this client's), in cores: a noisy neighbour shows there.
    """
    values: dict[str, float] = {}
    inner: dict[str, list] = {}
    env = None
    info: dict = {}

    def wanted(*wids: str) -> bool:
        return only is None or any(w in only for w in wids)

    wall0, (busy0, steal0), me0 = time.monotonic(), system_cpu(), _own_cpu()
    dev, bt, nb, tmo = plan.device, plan.block_time, plan.blocks, plan.cell_timeout
    step("start")
    try:
        startup = kernel.start(plan.startup_timeout)
        if wanted("startup"):
            values["startup"] = startup
        if wanted("rss_start"):
            values["rss_start"] = kernel.vm_hwm_mib()
        if plan.peers and wanted("pss_start"):
            values["pss_start"] = kernel.pss_mib()
        if want_env:
            env = kernel.call(cells.environment, tmo)
            if probe_host is not None:
                env["enforcement"] = kernel.call(cells.enforcement, tmo, host=probe_host)
        step("empty cells")
        if wanted("rtt"):
            rtts = kernel.empty_cells(plan.rtt_cells if not warmup else 3)
            values["rtt"], inner["rtt"] = statistics.median(rtts), rtts
        step("import torch")
        if wanted("import_torch", "train_step", "inference", "dataloader",
                  *(f"matmul_{_dtype_label(d)}_{n}" for d, n in plan.matmul)):
            r = kernel.call(cells.import_torch, tmo, threads=plan.threads)
            if wanted("import_torch"):
                values["import_torch"] = r["value"]
            info["torch_threads"] = r["threads"]
        if warmup or plan.startup_only:
            return values, inner, env, info
        for dtype, n in plan.matmul:
            step(f"matmul {_dtype_label(dtype)} {n}")
            wid = f"matmul_{_dtype_label(dtype)}_{n}"
            if wanted(wid):
                r = kernel.call(cells.matmul, tmo, n=n, dtype=dtype, device=dev, block_time=plan.matmul_block,
                                blocks=nb)
                values[wid], inner[wid] = r["value"], r["blocks"]
        step("training step")
        if wanted("train_step"):
            r = kernel.call(cells.train_step, tmo, device=dev, batch=plan.train_batch, block_time=bt, blocks=nb)
            values["train_step"], inner["train_step"] = r["value"], r["blocks"]
        step("inference")
        if wanted("inference"):
            r = kernel.call(cells.inference, tmo, device=dev, block_time=bt, blocks=nb, **plan.inference)
            values["inference"], inner["inference"] = r["value"], r["blocks"]
        step("syscalls")
        if wanted("syscalls", "syscall_read", "syscall_stat", "syscall_getpid"):
            r = kernel.call(cells.syscalls, tmo, **plan.syscalls)
            values["syscalls"] = r["value"]
            for part in ("read", "stat", "getpid"):
                values[f"syscall_{part}"], inner[f"syscall_{part}"] = r[f"{part}_us"], r[f"{part}_blocks_us"]
        if plan.peers:
            step("peer syscalls")
            if wanted("syscall_tmp_read", "syscall_sock"):
                r = kernel.call(cells.peer_syscalls, tmo, **plan.syscalls)
                for part in ("tmp_read", "sock"):
                    values[f"syscall_{part}"], inner[f"syscall_{part}"] = r[f"{part}_us"], r[f"{part}_blocks_us"]
        step("dataloader")
        if wanted("dataloader"):
            r = kernel.call(cells.dataloader, tmo, **plan.dataloader)
            values["dataloader"], inner["dataloader"] = r["value"], r["blocks"]
        if wanted("rss_peak"):
            values["rss_peak"] = kernel.vm_hwm_mib()
    finally:
        try:
            kcpu = kernel.cpu_seconds()
            wall, (busy, steal) = time.monotonic() - wall0, system_cpu()
            info.update({"wall_s": wall, "kernel_cpu_s": kcpu, "steal_cores": (steal - steal0) / wall,
                         "background_cores": max(0.0, (busy - busy0) - kcpu - (_own_cpu() - me0)) / wall,
                         "loadavg_1m": _loadavg()})
        except Exception:  # noqa: BLE001 - the kernel may be gone; the info is optional
            pass
        step("shutdown")
        kernel.shutdown()
    return values, inner, env, info


def _loadavg() -> float | None:
    try:
        with open("/proc/loadavg") as fh:
            return float(fh.read().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _own_cpu() -> float:
    t = os.times()
    return t.user + t.system
