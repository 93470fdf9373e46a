"""The machine and the versions a run is recorded with."""

from __future__ import annotations

import getpass
import importlib.metadata
import json
import os
import platform
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def probe_torch() -> dict:
    """torch's view of the machine, from a plain subprocess (also warms the page cache for `import torch`)."""
    code = ("import json, torch; c = torch.cuda.is_available(); "
            "print(json.dumps({'version': torch.__version__, 'cuda': c, "
            "'gpu': torch.cuda.get_device_name(0) if c else None, "
            "'gpu_count': torch.cuda.device_count() if c else 0, "
            "'cuda_version': torch.version.cuda, 'threads': torch.get_num_threads()}))")
    try:
        r = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=300)
        return json.loads(r.stdout.strip().splitlines()[-1])
    except (OSError, ValueError, IndexError, subprocess.TimeoutExpired) as e:
        return {"version": None, "cuda": False, "gpu": None, "error": str(e)}


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "?"


def _memory_gib() -> float:
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) / 1024 ** 2
    except OSError:
        pass
    return 0.0


def _cgroup() -> str:
    if os.path.exists("/sys/fs/cgroup/cgroup.controllers"):
        return "v2"
    return "v1/hybrid" if os.path.isdir("/sys/fs/cgroup") else "none"


def machine(torch_info: dict) -> dict:
    from sandbox_kernel.layers import landlock

    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:
        cpus = os.cpu_count()
    return {
        "hostname": platform.node(), "arch": platform.machine(), "kernel": platform.release(),
        "cpu_model": _cpu_model(), "cpus": cpus, "memory_gib": _memory_gib(), "cgroup": _cgroup(),
        "landlock_abi": landlock.abi_version(), "user": getpass.getuser(), "uid": os.getuid(),
        "gpu": torch_info.get("gpu"), "gpu_count": torch_info.get("gpu_count", 0),
        "cuda_version": torch_info.get("cuda_version"), "torch_threads": torch_info.get("threads"),
    }


def machine_name(device: str, m: dict) -> str:
    if device == "cuda" and m.get("gpu"):
        return re.sub(r"[^a-z0-9]+", "-", m["gpu"].lower()).strip("-")
    return f"cpu-{m['arch']}-{m['cpus']}core"


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _git() -> str | None:
    try:
        rev = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], check=False, capture_output=True,
                             text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"], check=False,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return (rev + ("+dirty" if dirty else "")) or None
    except (OSError, subprocess.TimeoutExpired):
        return None


def _libseccomp_version() -> str | None:
    try:
        from sandbox_kernel import libseccomp

        return ".".join(map(str, libseccomp.version()))
    except OSError:
        return None


def versions(torch_info: dict) -> dict:
    return {
        "python": platform.python_version(),
        "sandbox-kernel": _version("sandbox-kernel"),
        "git": _git(),
        "ipykernel": _version("ipykernel"),
        "ipython": _version("ipython"),
        "jupyter_client": _version("jupyter_client"),
        "pyzmq": _version("pyzmq"),
        "torch": torch_info.get("version") or _version("torch"),
        "numpy": _version("numpy"),
        "libseccomp": _libseccomp_version(),
        "libseccomp binding": _seccomp_binding(),
    }


def _seccomp_binding() -> str | None:
    """pyseccomp's version, or our own ctypes binding with the libseccomp it loads."""
    try:
        from sandbox_kernel import libseccomp  # the binding replacing pyseccomp

        return "sandbox_kernel.libseccomp (libseccomp {})".format(".".join(map(str, libseccomp.version())))
    except Exception:  # noqa: BLE001 - absent (older code) or no libseccomp: fall back
        return _version("pyseccomp")
