"""The benchmark run: variants interleaved per repetition, one fresh kernel per session."""

from __future__ import annotations

import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from datetime import datetime, UTC
from pathlib import Path

from . import machine as machine_info
from . import report
from .config import Plan
from .kernels import BenchKernel
from .stats import CONFIDENCE, MIN_VERDICT_CONFIDENCE
from .variants import deployed_profile, variants, write_kernelspecs
from .workloads import run_session, session_steps, workloads

CLEARED_ENV = ("SANDBOX_KERNEL_POLICY", "SANDBOX_KERNEL_LAYERS", "SANDBOX_KERNEL_HANDOFF", "SANDBOX_KERNEL_CEILING",
               "SANDBOX_KERNEL_SIMULATE_MISSING")
WARMUP_STEPS = 4  # start, empty cells, import torch, shutdown
REPORT_RESERVE_S = 20.0  # what writing results.json, report.md and the plot takes, kept free of a time budget


def rotated(vs: list, rep: int) -> list:
    """The order of repetition `rep`: the variants rotated by `rep`, so that over the run each
    takes each position in turn (a cyclic Latin square): an effect of a session's position
    (what ran just before, a drift within the repetition) then spreads over every variant."""
    k = rep % len(vs)
    return vs[k:] + vs[:k]


def kernel_env(jupyter_path: Path) -> dict:
    env = dict(os.environ)
    for k in CLEARED_ENV:  # the benchmark measures the profiles as written, with no platform ceiling
        env.pop(k, None)
    env["JUPYTER_PATH"] = os.pathsep.join([str(jupyter_path)] + [p for p in [env.get("JUPYTER_PATH")] if p])
    # debugpy's frozen-modules warning: the sandbox sets this where the debugger is off; set it for every variant
    env["PYDEVD_DISABLE_FILE_VALIDATION"] = "1"
    return env


def _layers_note(envs: dict) -> str:
    parts = []
    for vid, e in envs.items():
        if not e:
            continue
        layers = json.loads(e["layers"]) if e.get("layers") else {}
        on = [k for k, v in sorted(layers.items()) if v.get("state") in ("active", "partial")]
        off = [k for k, v in sorted(layers.items()) if v.get("state") not in ("active", "partial")]
        guard = "import guard" if e.get("import_guard") else "no import guard"
        ps = e.get("proc_status", {})
        desc = f"**{vid}**: {guard}; launcher layers active: {', '.join(on) or 'none'}"
        if off:
            desc += f" (not active: {', '.join(off)})"
        desc += f"; /proc: Seccomp {ps.get('Seccomp', '?')}, NoNewPrivs {ps.get('NoNewPrivs', '?')}"
        parts.append(desc)
    return "Layers in force, read inside each kernel (SANDBOX_KERNEL_LAYERS, /proc/self/status): " + "; ".join(parts)


def run(plan: Plan, out: Path, *, command: str, progress: bool = True, notes: str | None = None) -> dict:
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        SpinnerColumn,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    console = Console(stderr=True)
    out.mkdir(parents=True, exist_ok=True)
    logs = out / "logs"
    logs.mkdir(exist_ok=True)
    started = time.time()
    torch_info = machine_info.probe_torch()
    m = machine_info.machine(torch_info)
    versions = machine_info.versions(torch_info)  # at the start: the code the kernels run
    vs = variants(plan.device)
    ws = workloads(plan)
    # Outside /tmp: the kernelspec dir is protected, and a protected path inside a writable
    # directory would close that directory to new entries where the mount namespace is off.
    prefix = Path(tempfile.mkdtemp(prefix="sandbox-kernel-bench-", dir="/var/tmp"))
    os.chmod(prefix, 0o755)
    work = prefix / "work"
    work.mkdir()
    peer_notes: list[str] = []
    probe_host, probe_listener, marker, conn_dir = None, None, None, None
    if plan.peers:
        from . import peers

        pvs, peer_notes = peers.peer_variants(prefix, work)
        vs += pvs
        fd, marker = tempfile.mkstemp(prefix="sandbox-kernel-bench-marker-", dir="/tmp")
        os.close(fd)
        import socket

        probe_listener = socket.create_server(("127.0.0.1", 0))
        probe_host = peers.host_identity(Path(marker), probe_listener.getsockname()[1])
        from jupyter_core.paths import jupyter_runtime_dir

        conn_dir = jupyter_runtime_dir()  # where a Jupyter server writes it (a bare KernelManager: /tmp)
        os.makedirs(conn_dir, mode=0o700, exist_ok=True)
    jp = write_kernelspecs(prefix, vs)
    os.environ["JUPYTER_PATH"] = os.pathsep.join([str(jp)] + [p for p in [os.environ.get("JUPYTER_PATH")] if p])
    env = kernel_env(jp)

    samples = {v.id: {w.id: [None] * plan.reps for w in ws} for v in vs}
    inner = {v.id: {} for v in vs}
    envs: dict = {v.id: None for v in vs}
    order, errors, sessions = [], [], []
    bursts = None
    reps_done = 0
    steps = session_steps(plan)
    total = len(vs) * WARMUP_STEPS + plan.reps * len(vs) * len(steps)

    columns = [SpinnerColumn(), TextColumn("{task.description:<44}"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn()]
    try:
        with Progress(*columns, console=console, disable=not progress) as bar:
            task = bar.add_task("starting", total=total)

            def stepper(prefix_text):
                def step(name):
                    bar.update(task, advance=1, description=f"{prefix_text} · {name}")
                return step

            # Warm-up round, discarded: page cache, .pyc files, the first cgroup.
            for v in vs:
                k = BenchKernel(v.spec_name, cwd=str(work), env=env, log_path=logs / f"warmup-{v.id}.log",
                                connection_dir=conn_dir)
                try:
                    envs[v.id] = run_session(k, plan, stepper(f"warm-up · {v.id}"), warmup=True, want_env=True,
                                             only=v.workloads, probe_host=probe_host)[2]
                except Exception as e:  # noqa: BLE001 - reported, the run goes on
                    errors.append({"rep": "warm-up", "variant": v.id, "error": f"{type(e).__name__}: {e}"})
            rep_seconds: list[float] = []
            for rep in range(plan.reps):
                if plan.max_minutes and rep_seconds:
                    left = plan.max_minutes * 60 - REPORT_RESERVE_S - (time.time() - started)
                    if max(rep_seconds) > left:
                        console.print(f"[yellow]time budget: {plan.max_minutes:g} min would be exceeded by another "
                                      f"repetition; stopping after {rep} of {plan.reps}[/yellow]")
                        break
                rep_started = time.time()
                for v in rotated(vs, rep):
                    k = BenchKernel(v.spec_name, cwd=str(work), env=env, log_path=logs / f"rep{rep:02d}-{v.id}.log",
                                    connection_dir=conn_dir)
                    order.append({"rep": rep, "variant": v.id, "t": round(time.time() - started, 3)})
                    info: dict = {}
                    try:
                        values, inn, e, info = run_session(k, plan, stepper(f"rep {rep + 1}/{plan.reps} · {v.id}"),
                                                           want_env=envs[v.id] is None, only=v.workloads,
                                                           probe_host=probe_host)
                    except Exception as exc:  # noqa: BLE001 - reported, the run goes on
                        errors.append({"rep": rep, "variant": v.id, "error": f"{type(exc).__name__}: {exc}"})
                        console.print(f"[red]rep {rep + 1} {v.id}: {type(exc).__name__}: "
                                      f"{str(exc).splitlines()[0] if str(exc) else ''}[/red]")
                        continue
                    finally:
                        sessions.append({"rep": rep, "variant": v.id, **info})
                    if e:
                        envs[v.id] = e
                    for wid, x in values.items():
                        samples[v.id][wid][rep] = x
                    for wid, xs in inn.items():
                        inner[v.id].setdefault(wid, [None] * plan.reps)[rep] = xs
                rep_seconds.append(time.time() - rep_started)
                reps_done = rep + 1
            if plan.peers and plan.burst:
                from . import burst

                bursts = burst.run({v.id: v.spec_name for v in vs}, plan.burst, plan.burst_rounds, cwd=str(work),
                                   env=env, log_dir=logs, connection_dir=conn_dir, timeout=plan.startup_timeout,
                                   step=lambda what: bar.update(task, description=what))
            bar.update(task, completed=total, description="done")
    finally:
        shutil.rmtree(prefix, ignore_errors=True)
        if probe_listener is not None:
            probe_listener.close()
        if marker:
            os.unlink(marker)

    from sandbox_kernel.policy import resolve

    if reps_done < plan.reps:  # stopped by the time budget: keep the repetitions that ran
        for store in (samples, inner):
            for per_variant in store.values():
                for wid in per_variant:
                    per_variant[wid] = per_variant[wid][:reps_done]
    full = deployed_profile(plan.device)
    results = {
        "schema": 1,
        "benchmark": "sandbox-kernel overhead vs plain ipykernel",
        "created": datetime.fromtimestamp(started, UTC).isoformat(),
        "duration_s": time.time() - started,
        "command": command,
        "mode": plan.mode,
        "device": plan.device,
        "machine_name": machine_info.machine_name(plan.device, m),
        "machine": m,
        "versions": versions,
        "config": plan.to_dict() | {"reps_done": reps_done},
        "target_variant": "full",
        "variants": [dict(v.to_dict(), profile_sources=(resolve(v.profile).sources if v.profile else []),
                          environment=envs[v.id]) for v in vs],
        "workloads": [w.to_dict() for w in ws],
        "samples": samples,
        "inner_samples": inner,
        "order": order,
        "sessions": sessions,
        "errors": errors,
        "auto_notes": [],
    }
    if bursts is not None:
        results["burst"] = bursts
    notes_auto = results["auto_notes"]
    notes_auto.append(_layers_note(envs))
    notes_auto.append(f"Deployed profile measured as **full**: `{full}` "
                      f"({', '.join(resolve(full).sources)}).")
    threads = sorted({x["torch_threads"] for x in sessions if "torch_threads" in x})
    notes_auto.append(f"One kernel at a time (the others are shut down), so variants do not compete for the "
                      f"{m['cpus']} CPUs; torch uses {'/'.join(map(str, threads)) or '?'} intra-op thread(s)"
                      + (" (set with --threads)" if plan.threads else " (its default)")
                      + ". A warm-up round (one session per variant, discarded) precedes the measured repetitions. "
                        "Compute, syscall and DataLoader figures: the median block of each session (see cells.py "
                        "and stats.py); every block is in results.json.")
    bg = [x["background_cores"] for x in sessions if "background_cores" in x]
    if bg:
        per_variant = {v.id: statistics.median([x["background_cores"] for x in sessions
                                                if x["variant"] == v.id and "background_cores" in x] or [0])
                       for v in vs}
        steal = max((x.get("steal_cores", 0) for x in sessions), default=0)
        loads = [x["loadavg_1m"] for x in sessions if x.get("loadavg_1m") is not None]
        notes_auto.append(
            f"Other processes on the machine used a median {statistics.median(bg):.2f} (max {max(bg):.2f}) of the "
            f"{m['cpus']} CPUs during the sessions (per variant: "
            + ", ".join(f"{k} {x:.2f}" for k, x in per_variant.items())
            + f"); hypervisor steal up to {steal:.2f} CPUs"
            + (f"; 1-minute load average at the sessions' ends: median {statistics.median(loads):.1f}, "
               f"range {min(loads):.1f}–{max(loads):.1f} (this benchmark's own kernel counts as about 1)"
               if loads else "")
            + ". Every session's figure is in results.json (sessions).")
    if plan.peers:
        notes_auto.append(f"--peers: every variant's connection file is in Jupyter's runtime directory ({conn_dir}), "
                          "where a Jupyter server writes it (without --peers the bare KernelManager writes it in "
                          "/tmp, which the peers make private).")
    notes_auto += peer_notes
    if plan.device == "cpu":
        notes_auto.append("CPU run: no CUDA figures (bf16/fp32 matmul up to 8192 are measured with `--device cuda`).")
    if errors:
        notes_auto.append(f"{len(errors)} session(s) failed; see Errors and the kernel logs under logs/.")
    report.write(results, out, notes)
    return results


LOADED_SHARE = 0.25  # other processes' median share of the CPUs above which the summary warns


def summary_notes(results: dict) -> list[str]:
    """What the terminal summary must say before its verdicts (report.md says it too): intervals
    below the usual 95% (few repetitions: --quick), and a machine busy with other processes."""
    out = []
    confs = [t["confidence"] for t in results["targets"] if t.get("confidence") is not None]
    if confs and min(confs) < CONFIDENCE - 1e-9:
        reps = results["config"].get("reps_done", results["config"]["reps"])
        out.append(f"note: {reps} repetitions: the brackets are {min(confs):.0%} intervals ([min, max] of the "
                   f"paired values), not {CONFIDENCE:.0%}"
                   + (f"; a verdict needs {MIN_VERDICT_CONFIDENCE:.0%}, so these are UNRESOLVED (a look, not a "
                      f"measurement: run without --quick)" if min(confs) < MIN_VERDICT_CONFIDENCE else ""))
    bg = [x["background_cores"] for x in results.get("sessions", []) if x.get("background_cores") is not None]
    cpus = results.get("machine", {}).get("cpus")
    if bg and cpus and statistics.median(bg) >= LOADED_SHARE * cpus:
        out.append(f"warning: other processes used a median {statistics.median(bg):.2f} (max {max(bg):.2f}) of "
                   f"the {cpus} CPUs during the sessions: the figures include their interference (large "
                   f"overheads may be theirs); rerun on an idle machine, or with --threads 1 (report.md, Notes)")
    return out


def print_summary(results: dict, out: Path) -> None:
    from rich.console import Console

    c = Console(stderr=True)
    from rich.markup import escape

    for line in summary_notes(results):
        c.print(f"[yellow]{escape(line)}[/yellow]", soft_wrap=True)
    for t in results["targets"]:
        colour = {"PASS": "green", "MISS": "red"}.get(t["status"], "yellow")
        m = t["measured"]
        if m is None:
            shown = "–"
        elif t["target"]["kind"] == "relative":
            shown = f"{m:+.2f}% [{t['ci'][0]:+.2f} … {t['ci'][1]:+.2f}%]"
        else:
            shown = f"{m:+.3f} {t['unit']} [{t['ci'][0]:+.3f} … {t['ci'][1]:+.3f}]"
        if m is not None and t.get("confidence") is not None and t["confidence"] < CONFIDENCE - 1e-9:
            shown += f" ({t['confidence']:.0%} interval)"
        if t["status"] == "UNRESOLVED" and t.get("reps_needed"):
            shown += f" (≈ {t['reps_needed']} repetitions would resolve it)"
        c.print(f"[{colour}]{t['status']}[/{colour}] {t['label']}: {shown}")
    plotted = (out / "overhead.png").is_file()
    c.print(f"report: {out / 'report.md'}\nplot:   {out / 'overhead.png' if plotted else 'not drawn (see the note above)'}"
            f"\ndata:   {out / 'results.json'}"
            f"\n({results['duration_s']:.0f} s)")
    if results["errors"]:
        c.print(f"[red]{len(results['errors'])} session(s) failed; kernel logs in {out / 'logs'}[/red]")
        sys.stderr.flush()
