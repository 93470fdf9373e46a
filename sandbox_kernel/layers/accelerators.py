"""Accelerator gating: which GPU and TPU device nodes a tenant may open.

Enforcement:
- hard: the device nodes. ``denied_nodes``/``allowed_nodes`` feed the Landlock layer,
  which leaves denied nodes out of every grant (open fails with EACCES whatever
  ``CUDA_VISIBLE_DEVICES`` says) and grants allowed ones read-write with ioctl.
- soft: the environment (``CUDA_VISIBLE_DEVICES``, ``NVIDIA_VISIBLE_DEVICES``,
  ``TPU_VISIBLE_CHIPS``, ``JAX_PLATFORMS``), set so that frameworks report "no
  GPU" cleanly instead of a permission error, and ``memory_fraction``, applied to
  torch's caching allocator when ``torch.cuda`` is imported (user code can call
  ``set_per_process_memory_fraction`` again).
- MPS: ``CUDA_MPS_PINNED_DEVICE_MEM_LIMIT`` from ``mps_memory_limit``; the MPS
  daemon's own limit is the hard one, a client's variable can only tighten it.

GPU indexes are device minor numbers (``/dev/nvidia<minor>``); ``CUDA_DEVICE_ORDER``
is set to ``PCI_BUS_ID`` so that CUDA's ordinals follow the same (PCI) order.
MIG capability nodes (``caps_dir``) are granted only for the MIG devices a profile
lists, also when ``devices`` is omitted (the driver's ``mig/config`` capability
would let a tenant reconfigure the GPU).

Nodes created after start-up (lazily created ``/dev/nvidia-uvm``, hot-plug) are not
granted: Landlock grants the inodes that exist when the kernel starts. Such a node is
refused outright in a directory that held a denied node at start (e.g. ``/dev`` of a
machine with a GPU the profile denies); in a directory with no denied node, which is
granted read as a whole, it opens read-only but never read-write and its ioctls are
refused (Landlock ABI 5+). Create every node at boot (``nvidia-modprobe -u -c0``).

Inside the sandbox a directory holding a denied node may not be listable, so nodes
are found by listing where possible and by probing their names (``stat`` is not
restricted by Landlock) where not: the kernel's reports and error notes see the
same nodes as the launcher.
"""

from __future__ import annotations

import glob
import os
import re
import sys

from ..errors import SandboxError

NAME = "accelerators"
MAX_INDEX = 1024  # device indexes are 0..1023 (schema)
CAP_PREFIX = "nvidia-cap"


# --------------------------------------------------------------------------- device nodes


def glob_nodes(pattern: str) -> dict[int, str]:
    """Existing nodes of a `{index}` pattern: index -> path."""
    head, _, tail = pattern.partition("{index}")
    out = {}
    for path in glob.glob(glob.escape(head) + "[0-9]*" + glob.escape(tail)):
        middle = path[len(head):len(path) - len(tail) if tail else None]
        if middle.isdigit():
            out[int(middle)] = path
    return dict(sorted(out.items()))


def _listable(directory: str) -> bool:
    try:
        with os.scandir(directory):
            return True
    except OSError:
        return False


def pattern_nodes(pattern: str) -> dict[int, str]:
    """Existing nodes of a `{index}` pattern (index -> path), also where the directory cannot be listed."""
    head = pattern.partition("{index}")[0]
    directory = os.path.dirname(head) or "/"
    if _listable(directory) or not os.path.isdir(directory):
        return glob_nodes(pattern)
    out = {}
    for i in range(MAX_INDEX):
        path = pattern.replace("{index}", str(i))
        if os.path.lexists(path):
            out[i] = path
    return out


def _cap_minors_known(gpu: dict) -> set[int]:
    """Every DeviceFileMinor the driver lists under capabilities_root."""
    out: set[int] = set()
    for dirpath, _dirnames, filenames in os.walk(gpu["capabilities_root"]):
        for name in filenames:
            try:
                with open(os.path.join(dirpath, name)) as fh:
                    m = re.search(r"DeviceFileMinor:\s*(\d+)", fh.read(4096))
            except OSError:
                continue
            if m:
                out.add(int(m.group(1)))
    return out


def cap_nodes(gpu: dict) -> list[str]:
    """The MIG capability nodes present in caps_dir."""
    caps_dir = gpu["caps_dir"]
    if not os.path.isdir(caps_dir):
        return []
    try:
        names = sorted(os.listdir(caps_dir))
    except OSError:  # inside the sandbox, when it holds a denied node: probe the names
        minors = set(range(256)) | _cap_minors_known(gpu)
        names = [f"{CAP_PREFIX}{m}" for m in sorted(minors) if os.path.lexists(os.path.join(caps_dir, f"{CAP_PREFIX}{m}"))]
    return [os.path.join(caps_dir, n) for n in names]


def _mig_minors(gpu: dict, entry: dict) -> list[int]:
    """Capability minors of a MIG device, from the driver's capability files."""
    root = gpu["capabilities_root"]
    gi_dir = os.path.join(root, f"gpu{entry['gpu']}", "mig", f"gi{entry['gpu_instance']}")
    minors = []
    for access in (os.path.join(gi_dir, "access"), os.path.join(gi_dir, f"ci{entry['compute_instance']}", "access")):
        try:
            with open(access) as fh:
                text = fh.read()
        except OSError:
            raise SandboxError(f"MIG device {entry['mig']}: cannot read {access}; check gpu, gpu_instance "
                               f"and compute_instance against `nvidia-smi mig -lgi` / `-lci`") from None
        m = re.search(r"DeviceFileMinor:\s*(\d+)", text)
        if not m:
            raise SandboxError(f"MIG device {entry['mig']}: no DeviceFileMinor in {access}")
        minors.append(int(m.group(1)))
    return minors


def _resolve_mig_uuid(uuid: str) -> dict:
    """A bare MIG UUID: find its GPU, GPU instance and compute instance through NVML."""
    try:
        import pynvml  # nvidia-ml-py
    except ImportError:
        raise SandboxError(
            f"MIG device {uuid}: give it as {{mig: {uuid}, gpu: N, gpu_instance: G, compute_instance: C}} "
            f"(from `nvidia-smi mig -lgi` / `-lci`), or install nvidia-ml-py to resolve bare UUIDs") from None
    pynvml.nvmlInit()
    try:
        for i in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(i)
            for j in range(pynvml.nvmlDeviceGetMaxMigDeviceCount(handle)):
                try:
                    mig = pynvml.nvmlDeviceGetMigDeviceHandleByIndex(handle, j)
                except pynvml.NVMLError:
                    continue
                found = pynvml.nvmlDeviceGetUUID(mig)
                found = found.decode() if isinstance(found, bytes) else found
                if found == uuid:
                    return {"mig": uuid, "gpu": pynvml.nvmlDeviceGetMinorNumber(handle),
                            "gpu_instance": pynvml.nvmlDeviceGetGpuInstanceId(mig),
                            "compute_instance": pynvml.nvmlDeviceGetComputeInstanceId(mig)}
    finally:
        pynvml.nvmlShutdown()
    raise SandboxError(f"MIG device {uuid} not found by NVML (`nvidia-smi -L` lists the MIG UUIDs)")


def gpu_selection(policy) -> tuple[list[int], list[dict]]:
    """(allowed GPU indexes, allowed MIG devices) of an enabled GPU section."""
    gpu = policy.gpu
    if not gpu["enabled"]:
        return [], []
    devices = gpu.get("devices")
    if devices is None:
        return list(pattern_nodes(gpu["device_pattern"])), []
    indexes = [d for d in devices if isinstance(d, int)]
    migs = [_resolve_mig_uuid(d) if isinstance(d, str) else d for d in devices if not isinstance(d, int)]
    return indexes, migs


def tpu_selection(policy) -> list[int]:
    tpu = policy.tpu
    if not tpu["enabled"]:
        return []
    chips = tpu.get("chips")
    if chips is None:
        return sorted(set(pattern_nodes(tpu["device_pattern"])) | set(pattern_nodes(tpu["vfio_pattern"])))
    return list(chips)


def present_nodes(policy) -> list[str]:
    """Every accelerator node on this machine that a profile speaks of."""
    gpu, tpu = policy.gpu, policy.tpu
    out = list(pattern_nodes(gpu["device_pattern"]).values())
    out += [n for n in gpu["shared_nodes"] if os.path.exists(n)]
    out += cap_nodes(gpu)
    out += list(pattern_nodes(tpu["device_pattern"]).values())
    out += list(pattern_nodes(tpu["vfio_pattern"]).values())
    out += [n for n in tpu["shared_nodes"] if os.path.exists(n)]
    return out


def allowed_nodes(policy) -> list[str]:
    gpu, tpu = policy.gpu, policy.tpu
    out: list[str] = []
    indexes, migs = gpu_selection(policy)
    if gpu["enabled"]:
        pattern = gpu["device_pattern"]
        out += [pattern.replace("{index}", str(i)) for i in indexes]
        for m in migs:
            out.append(pattern.replace("{index}", str(m["gpu"])))
            out += [os.path.join(gpu["caps_dir"], f"nvidia-cap{minor}") for minor in _mig_minors(gpu, m)]
        out += gpu["shared_nodes"]
    if tpu["enabled"]:
        for c in tpu_selection(policy):
            out += [tpu["device_pattern"].replace("{index}", str(c)), tpu["vfio_pattern"].replace("{index}", str(c))]
        out += tpu["shared_nodes"]
    return [n for n in out if os.path.exists(n)]


def node_verdicts(policy, allowed: list[str] | None = None) -> list[tuple[str, bool]]:
    """Every accelerator node present, with whether the profile allows it."""
    ok = {os.path.realpath(n) for n in (allowed_nodes(policy) if allowed is None else allowed)}
    return [(n, os.path.realpath(n) in ok) for n in present_nodes(policy)]


def denied_nodes(policy, allowed: list[str] | None = None) -> list[str]:
    return [n for n, ok in node_verdicts(policy, allowed) if not ok]


# --------------------------------------------------------------------------- environment (soft)


def environment(policy) -> dict[str, str]:
    """Variables that make frameworks see exactly the allowed devices."""
    env: dict[str, str] = {}
    gpu = policy.gpu
    indexes, migs = gpu_selection(policy)
    if not gpu["enabled"]:
        env.update(CUDA_VISIBLE_DEVICES="", NVIDIA_VISIBLE_DEVICES="")
    elif gpu.get("devices") is not None or indexes:
        visible = ",".join([str(i) for i in indexes] + [m["mig"] for m in migs])
        env.update(CUDA_VISIBLE_DEVICES=visible, NVIDIA_VISIBLE_DEVICES=visible, CUDA_DEVICE_ORDER="PCI_BUS_ID")
    count = len(indexes) + len(migs)
    if gpu["enabled"] and gpu.get("mps_memory_limit") and count:
        env["CUDA_MPS_PINNED_DEVICE_MEM_LIMIT"] = ",".join(f"{i}={gpu['mps_memory_limit']}" for i in range(count))
    if not policy.tpu["enabled"]:
        env.update(TPU_VISIBLE_CHIPS="", TPU_VISIBLE_DEVICES="", JAX_PLATFORMS="cpu")
    elif policy.tpu.get("chips") is not None:
        chips = ",".join(str(c) for c in policy.tpu["chips"])
        env.update(TPU_VISIBLE_CHIPS=chips, TPU_VISIBLE_DEVICES=chips)
    return env


# --------------------------------------------------------------------------- in-process (soft)


def install_runtime_hooks(guard, policy) -> None:
    """Cap torch's CUDA caching allocator as soon as torch.cuda is imported."""
    fraction = policy.gpu.get("memory_fraction")
    if not policy.gpu["enabled"] or not fraction:
        return

    def cap(cuda_module) -> None:
        def _apply() -> None:
            for i in range(cuda_module.device_count()):
                cuda_module.set_per_process_memory_fraction(fraction, i)

        # Runs when CUDA initialises (now, if it already has): importing torch stays lazy.
        cuda_module._lazy_call(_apply)

    if "torch.cuda" in sys.modules:
        cap(sys.modules["torch.cuda"])
    else:
        guard.post_import["torch.cuda"] = cap
