"""The kernels compared: plain ipykernel and three sandbox configurations.

Each step adds layers to the previous one, so that the difference between two
neighbouring variants is the cost of what was added:

- ``plain``: stock ipykernel (``python -m ipykernel_launcher``), the baseline;
- ``guard``: the sandbox kernel without the launcher: the import guard (a
  ``sys.meta_path`` finder consulted on every import) and the per-cell
  pre-execution check; every OS layer off;
- ``os``: the launcher applies the deployed profile's seccomp filter, Landlock
  ruleset and rlimits, with no_new_privs and the mount namespace they rely on
  (without the namespace the Landlock ruleset changes shape: it closes the parents
  of protected paths instead); no cgroup, capabilities kept. Same network mode and
  rules as the full profile, so that the filters are the ones deployed;
- ``full``: the deployed profile as installed (``free`` on CPU, ``gpu`` on CUDA):
  adds the cgroup (pids.max, memory.max) and the capability drop.

On CUDA, ``guard`` and ``os`` extend ``gpu`` instead of ``free`` (the free tier
denies the GPU, so the workloads could not run on it).

A reference variant stands beside the chain:

- ``floor``: plain ipykernel under the smallest seccomp filter there is (one BPF
  instruction, allow everything) with no_new_privs (``seccomp_floor.py``): the cost
  of *having* a filter, whatever its rules, against which the syscall figures of
  ``os`` and ``full`` are read. It runs only the empty cells and the syscall cell
  (its start-up includes one more interpreter, and its compute is plain ipykernel's).
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from sandbox_kernel.install import kernel_argv

PROFILES_DIR = Path(__file__).resolve().parent / "profiles"
FLOOR_SCRIPT = Path(__file__).resolve().parent / "seccomp_floor.py"
FLOOR_WORKLOADS = ("rtt", "syscalls", "syscall_read", "syscall_stat", "syscall_getpid", "syscall_tmp_read",
                   "syscall_sock")


@dataclass
class Variant:
    id: str
    label: str
    description: str
    argv: list[str]
    profile: str | None  # the profile name or file, None for plain ipykernel
    color: str
    workloads: tuple[str, ...] | None = None  # the workloads it runs; None: all
    installed: bool = False  # its kernelspec is written by `sandbox-kernel install` (the launcher's variants)
    env: dict | None = None  # the kernelspec's "env" (what the platform sets for the kernel), if any

    @property
    def spec_name(self) -> str:
        return f"bench-{self.id}"

    def to_dict(self) -> dict:
        return {"id": self.id, "label": self.label, "description": self.description, "argv": self.argv,
                "env": self.env,
                "profile": self.profile, "spec_name": self.spec_name,
                "workloads": list(self.workloads) if self.workloads is not None else None}


def deployed_profile(device: str) -> str:
    return "gpu" if device == "cuda" else "free"


def variants(device: str) -> list[Variant]:
    py = sys.executable
    safe = "-P" if sys.version_info >= (3, 11) else "-I"
    tier = "gpu" if device == "cuda" else "cpu"
    guard_profile = str(PROFILES_DIR / f"bench-guard-{tier}.yaml")
    os_profile = str(PROFILES_DIR / f"bench-os-{tier}.yaml")
    full = deployed_profile(device)
    return [
        Variant("plain", "plain ipykernel", "stock python3 ipykernel (ipykernel_launcher), the baseline",
                [py, "-m", "ipykernel_launcher", "-f", "{connection_file}"], None, "#7f7f7f"),
        Variant("guard", "import guard only",
                f"sandbox kernel without the launcher: import guard + pre-execution check of '{full}', "
                f"every OS layer off ({Path(guard_profile).name})",
                [py, safe, "-m", "sandbox_kernel", "-f", "{connection_file}", "--profile", guard_profile],
                guard_profile, "#1f77b4"),
        Variant("os", "+ OS layer",
                f"launcher with the seccomp filter, Landlock ruleset and rlimits of '{full}' (+ no_new_privs, "
                f"mount namespace); no cgroup, capabilities kept ({Path(os_profile).name})",
                kernel_argv(os_profile), os_profile, "#ff7f0e", installed=True),
        Variant("full", f"full profile ({full})",
                f"the installed kernelspec's argv for profile '{full}': every layer, as deployed",
                kernel_argv(full), full, "#d62728", installed=True),
        Variant("floor", "allow-all seccomp (floor)",
                "reference: plain ipykernel under a one-instruction allow-all seccomp filter with no_new_privs "
                "(seccomp_floor.py): what having any filter costs a system call; empty cells and the syscall "
                "cell only",
                [py, "-I", "-S", str(FLOOR_SCRIPT), py, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
                None, "#9467bd", FLOOR_WORKLOADS),
    ]


def write_kernelspecs(prefix: Path, vs: list[Variant]) -> Path:
    """Kernelspecs in `prefix`/share/jupyter/kernels (put `prefix`/share/jupyter on JUPYTER_PATH).

    The launcher's variants are installed by ``sandbox-kernel install --prefix`` itself, run
    as ``python -I`` from a neutral directory: kernel.json and its validated-policy cache are
    then exactly what the installed package writes for a platform (a harness that imported a
    source tree shadowing the installed package would otherwise write a cache the launcher
    misses, and time YAML and JSON Schema at every start). Their ``argv`` is read back from
    the kernel.json written. The others are written here.
    """
    kernels = prefix / "share" / "jupyter" / "kernels"
    kernels.mkdir(parents=True, exist_ok=True)
    for v in vs:
        d = kernels / v.spec_name
        if v.installed:
            r = subprocess.run([sys.executable, "-I", "-m", "sandbox_kernel.cli", "install", "--profile", v.profile,
                                "--name", v.spec_name, "--display-name", f"bench: {v.label}", "--prefix", str(prefix)],
                               cwd=str(prefix), capture_output=True, text=True, check=False)
            if r.returncode != 0:
                raise RuntimeError(f"sandbox-kernel install --profile {v.profile} failed: {r.stderr.strip()}")
            spec = json.loads((d / "kernel.json").read_text())
            v.argv = spec["argv"]
            if v.env:
                (d / "kernel.json").write_text(json.dumps(spec | {"env": v.env}, indent=1))
            continue
        d.mkdir(parents=True, exist_ok=True)
        (d / "kernel.json").write_text(json.dumps({
            "argv": v.argv, "display_name": f"bench: {v.label}", "language": "python",
            "interrupt_mode": "signal"}, indent=1))
    return prefix / "share" / "jupyter"
