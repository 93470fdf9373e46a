"""Real engines for the tests marked `engines` (Slurm, Docker), started by scripts/engines.sh.

The script installs Debian's packages and starts the daemons, idempotently (a second call
returns at once). It exits 2 where the engine cannot run here at all (not root, no apt-get,
packages not installable): the tests then skip with its reason. Any other failure is an
error of the test, never a skip: CI is expected to run these tests.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from testenv import REPO

SCRIPT = REPO / "scripts" / "engines.sh"
STATE = Path("/var/lib/sandbox-kernel-engines")
PARTITION = "sbx"
_started: dict[str, str | None] = {}


def start(engine: str) -> None:
    """Start `engine` (slurm, docker) once per session, or skip/fail the test with why."""
    if engine not in _started:
        if os.geteuid() != 0:
            _started[engine] = "the engines tests install and start daemons: run the suite as root"
        else:
            proc = subprocess.run([str(SCRIPT), engine], capture_output=True, text=True, timeout=1200)
            if proc.returncode == 2:
                _started[engine] = proc.stderr.strip() or f"{SCRIPT} {engine}: exit 2"
            elif proc.returncode != 0:
                pytest.fail(f"{SCRIPT} {engine} failed ({proc.returncode}): {proc.stderr[-3000:]}")
            else:
                _started[engine] = None
    if _started[engine]:
        pytest.skip(f"{engine}: {_started[engine]}")


def slurm_spec(specs_dir: Path, name: str, argv: list[str], config: dict, env: dict | None = None) -> str:
    """A kernelspec in `specs_dir` whose kernel is a Slurm job (the Slurm provisioner)."""
    from sandbox_kernel.slurm_provisioner import PROVISIONER_NAME

    d = specs_dir / name
    d.mkdir(parents=True, exist_ok=True)
    spec = {"argv": argv, "display_name": name, "language": "python", "interrupt_mode": "message",
            "metadata": {"kernel_provisioner": {"provisioner_name": PROVISIONER_NAME, "config": config}}}
    if env:
        spec["env"] = env
    (d / "kernel.json").write_text(json.dumps(spec))
    return name


def squeue(*args: str) -> list[str]:
    out = subprocess.run(["squeue", "--noheader", *args], capture_output=True, text=True, timeout=60)
    return [line for line in out.stdout.splitlines() if line.strip()]


def kernel_jobs() -> list[str]:
    """`JOBID NAME STATE` of every job of a sandbox kernel Slurm still has."""
    return [j for j in squeue("--format=%i %j %T") if " sandbox-kernel-" in j]
