"""Where the sandbox's start-up time goes: ``python -m benchmarks startup-profile``.

The launcher is one extra interpreter that resolves the profile and applies the
layers before it execs the kernel. Each phase is timed in fresh processes
(repeated, interleaved, median and best reported):

- ``python -I -c pass``: the launcher's interpreter by itself;
- importing the launcher's modules (``sandbox_kernel.cli``, ``.launcher``);
- resolving the profile: importing PyYAML and jsonschema, building the validator
  (which checks the schema against its meta-schema), loading and validating the
  profile chain;
- each layer's ``prepare`` and ``apply`` (in a child process, which they confine);
- the whole ``sandbox-kernel run --profile P -- /bin/true``.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

PHASES_CODE = r"""
import json, os, sys, time
t = {}
t0 = time.perf_counter()
import sandbox_kernel.cli, sandbox_kernel.launcher as launcher
t["import launcher modules"] = time.perf_counter() - t0
t0 = time.perf_counter()
import yaml
t["import yaml"] = time.perf_counter() - t0
t0 = time.perf_counter()
import jsonschema
t["import jsonschema"] = time.perf_counter() - t0
from sandbox_kernel import policy, policy_load
t0 = time.perf_counter()
policy_load._validator()
t["build validator (check_schema)"] = time.perf_counter() - t0
t0 = time.perf_counter()
pol = policy.effective(sys.argv[1])
t["load + validate profile chain"] = time.perf_counter() - t0
t0 = time.perf_counter()
ctx = launcher.context_for(pol, ["/bin/true"], None)
launcher._check_command(pol, ctx)
t["launch context"] = time.perf_counter() - t0

def timed(mod, fname):
    fn = getattr(mod, fname)
    def wrapper(*a, **k):
        s = time.perf_counter()
        try:
            return fn(*a, **k)
        finally:
            key = f"layer {mod.NAME}" 
            t[key] = t.get(key, 0.0) + time.perf_counter() - s
    setattr(mod, fname, wrapper)

for mod in launcher.LAYERS:
    for fname in ("prepare", "apply"):
        if hasattr(mod, fname):
            timed(mod, fname)
r, w = os.pipe()
pid = os.fork()
if pid == 0:
    os.close(r)
    t0 = time.perf_counter()
    launcher.apply_layers(pol, ctx)
    t["apply_layers (all)"] = time.perf_counter() - t0
    os.write(w, json.dumps(t).encode())
    os._exit(0)
os.close(w)
data = b""
while chunk := os.read(r, 65536):
    data += chunk
os.waitpid(pid, 0)
print(json.dumps(json.loads(data)))
"""


def _wall(argv: list[str]) -> float:
    t0 = time.perf_counter()
    subprocess.run(argv, check=True, capture_output=True)
    return time.perf_counter() - t0


def profile(profile_name: str = "free", reps: int = 10) -> dict:
    py = sys.executable
    samples: dict[str, list[float]] = {}

    def add(k, v):
        samples.setdefault(k, []).append(v * 1e3)

    for _ in range(reps):
        add("python -I -c pass (wall)", _wall([py, "-I", "-c", "pass"]))
        r = subprocess.run([py, "-I", "-c", PHASES_CODE, profile_name], check=True, capture_output=True, text=True)
        for k, v in json.loads(r.stdout.strip().splitlines()[-1]).items():
            add(k, v)
        add(f"sandbox-kernel run --profile {profile_name} -- /bin/true (wall)",
            _wall([py, "-I", "-m", "sandbox_kernel.cli", "run", "--profile", profile_name, "--", "/bin/true"]))
    return {k: {"median_ms": statistics.median(v), "best_ms": min(v), "samples_ms": v} for k, v in samples.items()}


def markdown(result: dict, profile_name: str, reps: int) -> str:
    lines = [f"Launcher start-up phases, profile `{profile_name}`, {reps} fresh processes each "
             f"(milliseconds; median and best):", "", "| phase | median ms | best ms |", "|---|---:|---:|"]
    for k, v in result.items():
        lines.append(f"| {k} | {v['median_ms']:.1f} | {v['best_ms']:.1f} |")
    return "\n".join(lines) + "\n"


def main(profile_name: str, reps: int, out: Path | None) -> int:
    result = profile(profile_name, reps)
    text = markdown(result, profile_name, reps)
    print(text)
    if out:
        out.mkdir(parents=True, exist_ok=True)
        (out / "startup-profile.md").write_text(text)
        (out / "startup-profile.json").write_text(json.dumps(result, indent=1) + "\n")
    return 0
