"""Where the sandbox's start-up time goes: ``python -m benchmarks startup-profile``.

It starts real kernels, the way Jupyter does, from the kernelspec argv that
``sandbox_kernel.install.kernel_argv(profile)`` produces (with the validated-policy
cache that ``install`` writes beside ``kernel.json``), so it follows the launch path
whatever that argv becomes. It re-implements nothing of the launcher: the launcher
itself reports its phases through its timing hook (``sandbox_kernel/timing.py``:
CLOCK_MONOTONIC marks written to an inherited descriptor just before it execs the
kernel), and this harness adds its own clock readings at the start and at the first
``execute_reply``. Per repetition, interleaved (the order rotated):

- the bare interpreter with the launcher's interpreter flags (``python -I -S -c pass``
  for ``python -I -S boot.py ...``), wall time: the floor of any second interpreter;
- plain ipykernel (``python -m ipykernel_launcher``): start → first ``execute_reply``;
- plain ipykernel that does not import debugpy, as the sandbox kernel does where its
  debugger is off (every network mode but ``full``): the like-for-like reference, so that
  the report can say how much of the difference is the layers and how much is debugpy;
- the sandboxed kernel: start → each launcher phase (interpreter start and command
  line, imports, policy, launch context, prepare, each layer, exec) → first
  ``execute_reply`` (the kernel's own start after the exec).

The overhead (sandboxed − plain, paired per repetition) gets the same interval and
verdict against the +100 ms target as in the main report; the overhead against the
like-for-like reference is reported beside it.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from sandbox_kernel import timing

from .kernels import BenchKernel
from .runner import kernel_env
from .stats import median_ci, verdict
from .variants import Variant, write_kernelspecs

TARGET_MS = 100.0
KERNEL_PHASE = "exec → first execute_reply (the kernel)"
# ipykernel's debugger module treats an unimportable debugpy as "not installed" (what
# sandbox_kernel.kernel does where the debugger is off)
NO_DEBUGPY = ("import sys; sys.modules['debugpy'] = None; "
              "from ipykernel.kernelapp import launch_new_instance; launch_new_instance()")


def interpreter_flags(argv: list[str]) -> list[str]:
    """The interpreter options at the head of a kernelspec argv (``-I -S`` of ``python -I -S boot.py``)."""
    flags = []
    for a in argv[1:]:
        if not a.startswith("-") or a in ("-m", "-c", "-"):
            break
        flags.append(a)
    return flags


def _variants(profile_name: str) -> tuple[Variant, Variant, Variant]:
    from sandbox_kernel.install import kernel_argv

    py = sys.executable
    plain = Variant("plain", "plain ipykernel", "", [py, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
                    None, "")
    nodebug = Variant("plain-nodebugpy", "plain ipykernel without debugpy", "",
                      [py, "-c", NO_DEBUGPY, "-f", "{connection_file}"], None, "")
    sandbox = Variant("sandbox", f"sandbox ({profile_name})", "", kernel_argv(profile_name), profile_name, "",
                      installed=True)
    return plain, nodebug, sandbox


def _wall(argv: list[str]) -> float:
    t0 = time.perf_counter()
    subprocess.run(argv, check=True, capture_output=True)
    return (time.perf_counter() - t0) * 1e3


def _sandbox_start(k: BenchKernel, timing_path: Path, timeout: float) -> dict[str, float]:
    """Start one sandboxed kernel with the timing descriptor; its phases in ms."""
    fd = os.open(timing_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        k.pass_fds = (fd,)  # through jupyter_client to Popen, which makes it inheritable in the child
        k.env = dict(k.env, **{timing.ENV: str(fd)})
        total = k.start(timeout)
    finally:
        os.close(fd)
    lines = timing_path.read_text().strip().splitlines()
    if not lines:
        raise RuntimeError(f"the launcher wrote no timing marks to {timing_path} (is {timing.ENV} honoured on "
                           f"this launch path?); kernel log: {k.log_path}")
    marks = json.loads(lines[-1])["marks"]
    phases, prev = {}, k.t_start
    for name, t in marks:
        if name != "exec":
            phases[name] = phases.get(name, 0.0) + (t - prev) * 1e3
        prev = t
    phases[KERNEL_PHASE] = (k.t_first_reply - prev) * 1e3
    phases["total"] = total
    return phases


def profile(profile_name: str = "free", reps: int = 10, *, cache: bool = True, timeout: float = 120.0,
            progress=None) -> dict:
    plain, nodebug, sandbox = _variants(profile_name)
    py = sys.executable
    bare = [py, *interpreter_flags(sandbox.argv), "-c", "pass"]
    prefix = Path(tempfile.mkdtemp(prefix="sandbox-kernel-startup-", dir="/var/tmp"))
    os.chmod(prefix, 0o755)
    samples: dict[str, list[float]] = {}
    plain_ms: list[float] = []
    nodebug_ms: list[float] = []
    sandbox_ms: list[float] = []
    try:
        jp = write_kernelspecs(prefix, [plain, nodebug, sandbox])
        if not cache:
            from sandbox_kernel import policy_cache

            for d in (jp / "kernels").iterdir():
                (d / policy_cache.FILE_NAME).unlink(missing_ok=True)
        os.environ["JUPYTER_PATH"] = os.pathsep.join([str(jp)] + [p for p in [os.environ.get("JUPYTER_PATH")] if p])
        env = kernel_env(jp)
        work = prefix / "work"
        work.mkdir()
        logs = prefix / "logs"
        logs.mkdir()

        def start_plain(rep, variant=plain):
            k = BenchKernel(variant.spec_name, cwd=str(work), env=env, log_path=logs / f"{variant.id}-{rep}.log")
            try:
                return k.start(timeout)
            finally:
                k.shutdown()

        def start_sandbox(rep):
            k = BenchKernel(sandbox.spec_name, cwd=str(work), env=env, log_path=logs / f"sandbox-{rep}.log")
            try:
                return _sandbox_start(k, prefix / f"timing-{rep}.jsonl", timeout)
            finally:
                k.shutdown()

        start_plain(-1), start_plain(-1, nodebug), start_sandbox(-1)  # warm-up, discarded: page cache, .pyc files
        for rep in range(reps):
            got: dict = {}
            steps = [("bare", lambda: _wall(bare)), ("plain", lambda: start_plain(rep)),  # noqa: B023 - called in this iteration
                     ("nodebug", lambda: start_plain(rep, nodebug)), ("sandbox", lambda: start_sandbox(rep))]  # noqa: B023 - called in this iteration
            k = rep % len(steps)
            for name, fn in steps[k:] + steps[:k]:
                got[name] = fn()
            samples.setdefault(f"bare interpreter: {' '.join(['python'] + bare[1:])} (wall)", []).append(got["bare"])
            samples.setdefault("plain ipykernel: start → first execute_reply", []).append(
                got["plain"])
            samples.setdefault("plain ipykernel without debugpy: start → first execute_reply", []).append(
                got["nodebug"])
            for phase, ms in got["sandbox"].items():
                if phase != "total":
                    samples.setdefault(f"sandbox · {phase}", []).append(ms)
            plain_ms.append(got["plain"])
            nodebug_ms.append(got["nodebug"])
            sandbox_ms.append(got["sandbox"]["total"])
            if progress:
                progress(rep + 1, reps)
    finally:
        shutil.rmtree(prefix, ignore_errors=True)
    overhead = [s - p for s, p in zip(sandbox_ms, plain_ms)]
    like_for_like = [s - p for s, p in zip(sandbox_ms, nodebug_ms)]
    return {
        "profile": profile_name, "reps": reps, "policy_cache": cache, "argv": sandbox.argv,
        "phases": {k: {"median_ms": statistics.median(v), "best_ms": min(v), "samples_ms": v}
                   for k, v in samples.items()},
        "sandbox_total_ms": sandbox_ms, "plain_total_ms": plain_ms, "overhead_ms": overhead,
        "overhead": {"median_ms": statistics.median(overhead), "ci": median_ci(overhead),
                     "verdict": verdict(overhead, TARGET_MS)},
        "plain_nodebugpy_total_ms": nodebug_ms, "like_for_like_ms": like_for_like,
        "like_for_like": {"median_ms": statistics.median(like_for_like), "ci": median_ci(like_for_like),
                          "verdict": verdict(like_for_like, TARGET_MS)},
    }


def markdown(result: dict) -> str:
    import platform

    argv = " ".join(result["argv"])
    lines = [f"Start-up phases, profile `{result['profile']}`, {result['reps']} interleaved repetitions, "
             f"{os.cpu_count()} CPUs, Python {platform.python_version()}, "
             + ("validated-policy cache present" if result["policy_cache"] else "**no policy cache** (the YAML and "
                "JSON Schema path)") + f"; kernelspec argv: `{argv}`.", "",
             "Milliseconds; the sandbox's phases are the launcher's own timing marks (sandbox_kernel/timing.py), "
             "each from the previous mark (the first from the moment the client started the kernel).", "",
             "| phase | median ms | best ms |", "|---|---:|---:|"]
    total = 0.0
    for k, v in result["phases"].items():
        if k.startswith("sandbox · "):
            total += v["median_ms"]
        lines.append(f"| {k} | {v['median_ms']:.1f} | {v['best_ms']:.1f} |")
    st = statistics.median(result["sandbox_total_ms"])
    lines.append(f"| sandbox: start → first execute_reply (median of totals; the phases' medians sum to "
                 f"{total:.0f}) | {st:.1f} | {min(result['sandbox_total_ms']):.1f} |")
    lines += ["", _overhead_line(result["overhead"], "start-up overhead (sandbox − plain ipykernel, paired per "
                                                    "repetition)") + "."]
    if "like_for_like" in result:
        lines += ["", "Like for like (the sandbox kernel does not import debugpy where its debugger is off; "
                      "plain ipykernel always does): " + _overhead_line(
                          result["like_for_like"], "sandbox − plain ipykernel without debugpy") + "."]
    return "\n".join(lines) + "\n"


def _overhead_line(o: dict, what: str) -> str:
    ci, v = o["ci"], o["verdict"]
    conf = f"{ci['confidence'] * 100:.1f}%" if ci else "–"
    line = (f"**{v['status']}** {what}: {o['median_ms']:+.1f} ms [{conf} CI {ci['lo']:+.1f} … {ci['hi']:+.1f}] "
            f"(target ≤ +{TARGET_MS:g} ms)")
    if v["status"] == "UNRESOLVED" and v.get("reps_needed"):
        line += f"; ≈ {v['reps_needed']} repetitions would resolve it"
    return line


def main(profile_name: str, reps: int, out: Path | None, cache: bool = True) -> int:
    def progress(i, n):
        print(f"\rstartup-profile: {i}/{n}", end="", file=sys.stderr, flush=True)

    result = profile(profile_name, reps, cache=cache, progress=progress)
    print(file=sys.stderr)
    text = markdown(result)
    print(text)
    if out:
        out.mkdir(parents=True, exist_ok=True)
        (out / "startup-profile.md").write_text(text)
        (out / "startup-profile.json").write_text(json.dumps(result, indent=1) + "\n")
    return 0
