"""Time to first result with the warm pool (issue 18): ``python -m benchmarks pool-ttfr``.

Time to first result (TTFR): from the start request (``KernelManager.start_kernel``) to the
reply of ``1+1`` (the execute request is sent as soon as the client exists; ZMQ delivers it
when the kernel listens), through jupyter_client as a server does it. Three kinds, in the same
run, interleaved per repetition (the order rotates):

- ``plain``: stock ipykernel (``python -m ipykernel_launcher``), cold;
- ``sandbox cold``: the profile's kernelspec (launcher, every layer), cold;
- ``sandbox pooled``: the same argv under the ``sandbox-pool`` provisioner, with a kernel ready
  in the pool (the run waits for the pool to be full, and for nothing else to be starting,
  before each repetition: a refill never overlaps a measurement).

Then ``--burst`` simultaneous starts of plain and of pooled kernels (the pool holding that
many), each start's TTFR and the wall time until all answered; and the memory an idle pooled
kernel costs: the proportional set size (PSS, /proc/PID/smaps_rollup) of its process tree
(launcher-supervisor, namespace init, kernel), next to an idle plain ipykernel's.

Target (issue 18): pooled TTFR at most a tenth of plain cold: the ratio pooled/plain is taken per
repetition, and the verdict is PASS when the upper end of its median's distribution-free interval
is at most 0.1 (stats.verdict: MISS when its lower end is above, UNRESOLVED when it straddles 0.1
or when too few repetitions give the interval too little coverage).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from . import stats


def _specs(prefix: Path, profile: str, pool_size: int) -> dict[str, str]:
    from sandbox_kernel import policy_cache
    from sandbox_kernel.install import kernel_argv

    out = {}
    for name, argv, meta in (
        ("plain", [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"], {}),
        ("sandbox cold", kernel_argv(profile), {"sandbox_kernel": {"profile": profile}}),
        ("sandbox pooled", kernel_argv(profile), {"sandbox_kernel": {"profile": profile}, "kernel_provisioner": {
            "provisioner_name": "sandbox-pool", "config": {"pool_size": pool_size, "refill_delay": 0.2}}}),
    ):
        spec = "bench-" + name.replace(" ", "-")
        d = prefix / "share" / "jupyter" / "kernels" / spec
        d.mkdir(parents=True, exist_ok=True)
        (d / "kernel.json").write_text(json.dumps({"argv": argv, "display_name": spec, "language": "python",
                                                   "metadata": meta}))
        if meta:
            policy_cache.write(str(d / policy_cache.FILE_NAME), [profile])
        out[name] = spec
    return out


def ttfr(spec: str, cwd: str, env: dict) -> tuple[float, object, str]:
    """Seconds from the start request to the reply of 1+1; the manager (still running) and the
    pool id the kernel came from ('' if cold)."""
    from jupyter_client.manager import KernelManager

    t0 = time.perf_counter()
    km = KernelManager(kernel_name=spec)
    km.start_kernel(cwd=cwd, env=env)
    kc = km.client()
    kc.start_channels()
    msg_id = kc.execute("1+1")
    while True:
        msg = kc.get_shell_msg(timeout=120)
        if msg["parent_header"].get("msg_id") == msg_id:
            break
    dt = time.perf_counter() - t0
    assert msg["content"]["status"] == "ok", msg["content"]
    kc.stop_channels()
    return dt, km, getattr(km.provisioner, "pooled_from", "")


def _wait_full(n: int, timeout: float = 600) -> bool:
    from sandbox_kernel.pool import get_pool

    p = get_pool()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        counts = p.counts()
        if any(c["ready"] >= n for c in counts.values()) and not any(c["starting"] for c in counts.values()):
            return True
        time.sleep(0.1)
    return False


def _tree(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for p in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{p}/stat") as fh:
                ppid = int(fh.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(p))
    out, todo = [], [pid]
    while todo:
        q = todo.pop()
        out.append(q)
        todo += children.get(q, [])
    return out


def pss_kib(pid: int) -> int:
    """PSS of `pid` and every descendant, KiB."""
    total = 0
    for p in _tree(pid):
        try:
            with open(f"/proc/{p}/smaps_rollup") as fh:
                for line in fh:
                    if line.startswith("Pss:"):
                        total += int(line.split()[1])
        except OSError:
            continue
    return total


def _shutdown(kms) -> None:
    for km in kms:
        try:
            km.shutdown_kernel(now=True)
        except Exception:
            pass


def _burst(spec: str, n: int, cwd: str, env: dict) -> dict:
    from .burst import together

    done, errors, wall_ms = together([lambda: ttfr(spec, cwd, env)] * n, limit=600)
    _shutdown([km for _dt, km, _pid in done])
    res = [dt for dt, _km, _pid in done]
    return {"ttfr": stats.describe(res), "values": res, "wall_s": wall_ms / 1e3,
            "pooled": sum(bool(pid) for _dt, _km, pid in done), "errors": errors}


def main(profile: str, reps: int, burst: int, out: Path | None) -> int:
    from sandbox_kernel import pool as pool_mod

    prefix = Path(tempfile.mkdtemp(prefix="sbx-bench-pool-", dir="/var/tmp"))
    os.chmod(prefix, 0o755)
    os.environ["JUPYTER_PATH"] = str(prefix / "share" / "jupyter")
    specs = _specs(prefix, profile, 1)
    cwd = tempfile.mkdtemp(prefix="sbx-bench-pool-cwd-")
    env = dict(os.environ)
    values: dict[str, list[float]] = {k: [] for k in specs}
    ratios: list[float] = []
    misses = 0
    results: dict = {"profile": profile, "reps": reps, "command": "python -m benchmarks " + " ".join(sys.argv[1:])}
    try:
        _, km, _ = ttfr(specs["sandbox pooled"], cwd, env)  # arms the pool for (spec, cwd, env)
        _shutdown([km])
        for rep in range(reps):
            if not _wait_full(1):
                raise RuntimeError("the pool did not fill")
            order = list(specs)[rep % 3:] + list(specs)[:rep % 3]
            kms, this = [], {}
            for name in order:
                dt, km, pid = ttfr(specs[name], cwd, env)
                kms.append(km)
                if name == "sandbox pooled" and not pid:
                    misses += 1
                this[name] = dt
                values[name].append(dt)
            _shutdown(kms)
            ratios.append(this["sandbox pooled"] / this["plain"])
            print(f"rep {rep + 1}/{reps}: " + ", ".join(f"{k} {v * 1000:.0f} ms" for k, v in this.items()), flush=True)
        results["ttfr"] = {k: {**stats.describe(v), "ci": stats.median_ci(v), "values": v} for k, v in values.items()}
        ci = stats.median_ci(ratios)
        v = stats.verdict(ratios, 0.1)  # the suite's rule: PASS / MISS / UNRESOLVED (too few repetitions)
        results["ratio_pooled_over_plain"] = {**stats.describe(ratios), "ci": ci, "values": ratios, "target": 0.1,
                                              "verdict": v["status"], "verdict_detail": v}
        results["pooled_misses"] = misses
        # memory of an idle pooled kernel, and of an idle plain ipykernel
        assert _wait_full(1)
        p = pool_mod.get_pool()
        ready = [e for lst in p.entries.values() for e in lst if e.state == "ready"]
        time.sleep(2)
        results["pss_kib"] = {"sandbox pooled (idle, whole tree)": pss_kib(ready[0].km.provisioner.pid)}
        _, km, _ = ttfr(specs["plain"], cwd, env)
        time.sleep(2)
        results["pss_kib"]["plain ipykernel (idle, after one cell)"] = pss_kib(km.provisioner.pid)
        _shutdown([km])
        # simultaneous starts
        if burst:
            pool_mod.get_pool().shutdown()
            pool_mod._POOL = None
            bspecs = _specs(prefix, profile, burst)
            _, km, _ = ttfr(bspecs["sandbox pooled"], cwd, env)
            _shutdown([km])
            if not _wait_full(burst, timeout=60 * burst):
                raise RuntimeError(f"the pool did not fill to {burst}")
            results["burst"] = {"n": burst, "plain": _burst(bspecs["plain"], burst, cwd, env),
                                "sandbox pooled": _burst(bspecs["sandbox pooled"], burst, cwd, env)}
    finally:
        if pool_mod._POOL is not None:
            pool_mod._POOL.shutdown()
        shutil.rmtree(prefix, ignore_errors=True)
        shutil.rmtree(cwd, ignore_errors=True)
    text = render(results)
    print(text)
    if out:
        out.mkdir(parents=True, exist_ok=True)
        (out / "pool-ttfr.json").write_text(json.dumps(results, indent=1))
        (out / "pool-ttfr.md").write_text(text)
    return 0


def render(r: dict) -> str:
    lines = [f"# Time to first result (profile {r['profile']}, {r['reps']} repetitions)", "",
             f"command: `{r['command']}`", "",
             "| kernel | median ms | interval of the median | p25–p75 ms |", "|---|---|---|---|"]
    for k, v in r.get("ttfr", {}).items():
        ci = v.get("ci") or {}
        lines.append(f"| {k} | {v['median'] * 1000:.0f} | {ci.get('lo', 0) * 1000:.0f}–{ci.get('hi', 0) * 1000:.0f} "
                     f"({ci.get('confidence', 0):.0%}) | {v['p25'] * 1000:.0f}–{v['p75'] * 1000:.0f} |")
    rt = r.get("ratio_pooled_over_plain")
    if rt:
        ci = rt["ci"] or {}
        lines += ["", f"pooled / plain cold, per repetition: median {rt['median']:.3f}, interval "
                      f"{ci.get('lo', 0):.3f}–{ci.get('hi', 0):.3f} ({ci.get('confidence', 0):.0%}); target ≤ 0.1: "
                      f"**{rt['verdict']}**" + (f" ({rt['verdict_detail']['why']})" if rt.get("verdict_detail", {}).get("why")
                                                else "") + f" (pool misses: {r.get('pooled_misses')})"]
    if r.get("pss_kib"):
        lines += ["", "Idle memory (PSS):"] + [f"- {k}: {v / 1024:.1f} MiB" for k, v in r["pss_kib"].items()]
    b = r.get("burst")
    if b:
        lines += ["", f"{b['n']} simultaneous starts:"]
        for k in ("plain", "sandbox pooled"):
            x = b[k]
            lines.append(f"- {k}: TTFR median {x['ttfr'].get('median', float('nan')) * 1000:.0f} ms, max "
                         f"{x['ttfr'].get('max', float('nan')) * 1000:.0f} ms, all answered after {x['wall_s']:.2f} s"
                         + (f" ({x['pooled']} from the pool)" if k != "plain" else "")
                         + (f"; errors: {x['errors']}" if x["errors"] else ""))
    return "\n".join(lines) + "\n"
