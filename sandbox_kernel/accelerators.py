"""Accelerator gating: which GPU and TPU device nodes a tenant may open.

Enforcement:
- hard: the device nodes. ``denied_nodes``/``allowed_nodes`` feed the Landlock layer,
  which leaves denied nodes out of every grant (open fails with EACCES whatever
  ``CUDA_VISIBLE_DEVICES`` says) and grants allowed ones read-write with ioctl.
- hard: exec of NVIDIA's utilities (``tool_dirs``) where the GPU is enabled, only
  from root-owned paths the tenant cannot write (``tool_verdicts``, ``exec_dirs``).
- soft: the environment (``CUDA_VISIBLE_DEVICES``, ``NVIDIA_VISIBLE_DEVICES``,
  ``TPU_VISIBLE_CHIPS``, ``JAX_PLATFORMS``), set so that frameworks use the granted
  devices and report "no GPU" cleanly instead of a permission error, and
  ``memory_fraction``, applied to torch's caching allocator when ``torch.cuda`` is
  imported (user code can call ``set_per_process_memory_fraction`` again).
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

import os
import stat
import sys

from .errors import SandboxError
from .paths import real_writable, within
from .standins import which_name

NAME = "accelerators"
MAX_INDEX = 1024  # device indexes are 0..1023 (schema)
CAP_PREFIX = "nvidia-cap"


# --------------------------------------------------------------------------- device nodes


def glob_nodes(pattern: str) -> dict[int, str]:
    """Existing nodes of a `{index}` pattern: index -> path."""
    head, _, tail = pattern.partition("{index}")
    directory, prefix = os.path.split(head)  # what glob.glob(head + "[0-9]*" + tail) finds, without glob's imports
    try:
        entries = os.listdir(directory or ".")
    except OSError:
        return {}
    out = {}
    suffix = tail.partition("/")[0]  # the rest of the entry's name after the index
    for entry in entries:
        middle = entry[len(prefix):len(entry) - len(suffix)]
        if (entry.startswith(prefix) and entry.endswith(suffix) and middle.isdigit()
                and os.path.lexists(head + middle + tail)):
            out[int(middle)] = head + middle + tail
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
                    minor = _device_file_minor(fh.read(4096))
            except OSError:
                continue
            if minor is not None:
                out.add(minor)
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
        minor = _device_file_minor(text)
        if minor is None:
            raise SandboxError(f"MIG device {entry['mig']}: no DeviceFileMinor in {access}")
        minors.append(minor)
    return minors


def _device_file_minor(text: str) -> int | None:
    """The number after ``DeviceFileMinor:`` in an NVIDIA capability file."""
    import re  # only for MIG: the launch path of other profiles does without it

    m = re.search(r"DeviceFileMinor:\s*(\d+)", text)
    return int(m.group(1)) if m else None


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


SLURM_GPU_VARS = ("SLURM_STEP_GPUS", "SLURM_JOB_GPUS")


def slurm_gpus(env=None) -> set[int] | None:
    """The GPUs Slurm allocated to the job this process runs in (its GRES indexes, which are
    the device minors where gres.conf names /dev/nvidia[N-M]), or None outside a Slurm job
    with GPUs. An allocation without GPUs (the variable absent in a job) is not a limit
    here: Slurm's devices cgroup (ConstrainDevices=yes) is the hard one."""
    env = os.environ if env is None else env
    if not env.get("SLURM_JOB_ID"):
        return None
    for var in SLURM_GPU_VARS:
        value = env.get(var)
        if value is not None:
            try:
                return {int(x) for x in value.split(",") if x.strip()}
            except ValueError:
                raise SandboxError(f"{var}={value!r}: expected comma-separated GPU indexes (set by Slurm)") from None
    return None


def gpu_selection(policy) -> tuple[list[int], list[dict]]:
    """(allowed GPU indexes, allowed MIG devices) of an enabled GPU section: the profile's,
    intersected with the GPUs Slurm allocated to the job, inside one (slurm_gpus)."""
    gpu = policy.gpu
    if not gpu["enabled"]:
        return [], []
    devices = gpu.get("devices")
    allocated = slurm_gpus()
    if devices is None:
        return [i for i in pattern_nodes(gpu["device_pattern"]) if allocated is None or i in allocated], []
    indexes = [d for d in devices if isinstance(d, int) and (allocated is None or d in allocated)]
    migs = [_resolve_mig_uuid(d) if isinstance(d, str) else d for d in devices if not isinstance(d, int)]
    if allocated is not None:
        migs = [m for m in migs if m["gpu"] in allocated]
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


# --------------------------------------------------------------------------- GPU tools (exec, hard)
#
# Where the GPU is enabled, NVIDIA's utilities (nvidia-smi first: the first thing a GPU
# tenant runs) and the CUDA toolkit's programs may run from `tool_dirs`, granted Landlock's
# execute right by the landlock layer. The toolkit is not optional for frameworks: on an
# H100 under `gpu`, JAX's first jit failed until /usr/local/cuda/bin could run (XLA execs
# ptxas and nvlink), and torch.compile asks for nvcc. A toolkit from pip wheels (e.g.
# site-packages/nvidia/cu13/bin) is not found by default: list its directory. A directory entry grants every program beneath it; `{which:NAME}` grants the
# program NAME wherever PATH has it and each program a wrapper script of that name
# names by absolute path (e.g. /usr/bin/nvidia-smi, a shell script ending in
# `exec /usr/local/nvidia/bin/nvidia-smi "$@"`): those files only, not their directories.
# The wrapper is read, never executed: absolute paths in it whose base name starts with
# NAME count (a path built from variables is not followed: name its directory instead).
#
# Each path is granted only if the tenant cannot change what runs there: its real path
# and every ancestor owned by root and not writable by group or others (a POSIX ACL's
# named users and groups are capped by its mask, which the group bits show), everything
# beneath a directory likewise, and the path neither inside a writable directory of the
# profile nor holding one (for a root tenant, who passes every ownership check, Landlock's
# write rules are what keep it out). A path that fails is refused with the reason, shown
# by `profiles show`, `doctor`, `%sandbox` and the landlock layer's status. GPU-less
# profiles grant nothing here.

GRANTED, REFUSED, ABSENT = "granted", "refused", "absent"
MAX_TOOL_ENTRIES = 4096  # entries checked beneath one tool directory
MAX_WRAPPER_BYTES = 64 * 1024
WRAPPER_DEPTH = 3  # a wrapper of a wrapper of a wrapper


def _context(ctx):
    if ctx is not None:
        return ctx
    from .layers.context import LaunchContext

    return LaunchContext(dict(os.environ))


def _owner(uid: int) -> str:
    import pwd

    try:
        return f"uid {uid} ({pwd.getpwuid(uid).pw_name})"
    except KeyError:
        return f"uid {uid}"


def _writable_by_others(path: str, st: os.stat_result) -> str | None:
    if st.st_uid != 0:
        return f"{path} is owned by {_owner(st.st_uid)}, not root"
    if st.st_mode & 0o022:
        who = "group and others" if st.st_mode & 0o022 == 0o022 else ("others" if st.st_mode & 0o002 else "its group")
        return f"{path} is writable by {who} (mode {stat.S_IMODE(st.st_mode):04o})"
    return None


def _trust_problem(real: str, writable: list[str]) -> str | None:
    """Why the tenant could change the programs at `real` (a real path), or None."""
    try:
        st = os.stat(real)
    except OSError as e:
        return f"cannot check {real}: {e.strerror}"
    is_dir = stat.S_ISDIR(st.st_mode)
    if not (is_dir or stat.S_ISREG(st.st_mode)):
        return f"{real} is neither a directory nor a regular file"
    for w in writable:
        if within(real, w):
            return f"{real} is inside the writable directory {w} (filesystem.writable)"
        if is_dir and within(w, real):
            return f"{real} holds the writable directory {w} (filesystem.writable): programs written there could run"
    chain, cur = [real], real
    while cur != "/":
        cur = os.path.dirname(cur)
        chain.append(cur)
    for p in chain:
        try:
            why = _writable_by_others(p, os.stat(p))
        except OSError as e:
            return f"cannot check {p}: {e.strerror}"
        if why:
            return why if p == real else f"{why} (an ancestor of {real})"
    if is_dir:
        count, unlisted = 0, []
        for dirpath, dirnames, filenames in os.walk(real, onerror=unlisted.append):
            for name in dirnames + filenames:
                count += 1
                if count > MAX_TOOL_ENTRIES:
                    return f"{real} holds more than {MAX_TOOL_ENTRIES} entries; name a narrower directory"
                child = os.path.join(dirpath, name)
                try:
                    cst = os.lstat(child)
                except OSError:
                    continue
                if stat.S_ISLNK(cst.st_mode):
                    continue  # Landlock checks the target, which is granted or not on its own
                why = _writable_by_others(child, cst)
                if why:
                    return f"{why} (beneath {real})"
        if unlisted:
            return f"cannot check what is beneath {real}: {unlisted[0].filename}: {unlisted[0].strerror}"
    return None


def _wrapper_targets(path: str, name: str) -> list[str]:
    """Absolute paths of programs named like `name` in a script, read without running it."""
    import re  # GPU profiles only
    try:
        with open(path, "rb") as fh:
            text = fh.read(MAX_WRAPPER_BYTES)
    except OSError:
        return []
    if not text.startswith(b"#!"):
        return []
    out = []
    pattern = rb"(?<![\w./-])(/[\w./+-]*/" + re.escape(name.encode()) + rb"[\w.+-]*)"
    for m in re.finditer(pattern, text):
        p = os.path.normpath(m.group(1).decode(errors="replace"))
        if p not in out:
            out.append(p)
    return out


def _which_all(name: str, path_var: str) -> list[str]:
    """Every executable regular file `name` in the absolute directories of PATH, in order."""
    out = []
    for d in path_var.split(os.pathsep):
        if not d.startswith("/"):
            continue  # a relative PATH entry means the working directory: never a tool dir
        p = os.path.join(d, name)
        try:
            st = os.stat(p)
        except OSError:
            continue
        if stat.S_ISREG(st.st_mode) and st.st_mode & 0o111:
            out.append(p)
    return out


def _tools_in_force(policy) -> list[tuple[str, str, str, str]] | None:
    """Inside a sandbox of this policy: the verdicts its launcher decided (environment layer).

    They cannot be recomputed there: inside an ordinary user's user namespace, files
    of root (an unmapped uid) show as owned by nobody.
    """
    from .childguard import POLICY_ENV
    from .layers.handoff import handoff_from_env

    if os.environ.get(POLICY_ENV) != policy.to_json():
        return None
    try:
        tools = handoff_from_env().get("gpu_tools")
    except ValueError:
        return None
    return [tuple(t) for t in tools] if tools is not None else None


def tool_verdicts(policy, ctx=None) -> list[tuple[str, str, str, str]]:
    """What `accelerators.gpu.tool_dirs` grants on this machine: (entry, path, state, detail).

    state is GRANTED (detail: how it was found), REFUSED (detail: why) or ABSENT.
    Empty when the GPU is disabled: GPU-less profiles run no GPU tools. The launcher
    computes them in the environment layer, before any namespace changes how file
    owners look (``environment.Judged``); without `ctx`, inside a sandbox of
    the same policy, the launcher's verdicts are returned.
    """
    gpu = policy.gpu
    if not gpu["enabled"]:
        return []
    if ctx is None:
        in_force = _tools_in_force(policy)
        if in_force is not None:
            return in_force
    ctx = _context(ctx)
    writable = real_writable(policy, ctx)
    if getattr(ctx, "ipc_dir", None):
        writable.append(os.path.realpath(ctx.ipc_dir))
    path_var = ctx.env.get("PATH", os.defpath)
    out: list[tuple[str, str, str, str]] = []
    done: set[str] = set()
    for entry in gpu.get("tool_dirs", []):
        which = which_name(entry)
        # (path, how it was found, wrapper depth); a program is followed only once trusted
        todo = [(p, f"{which} on PATH", 0) for p in _which_all(which, path_var)] if which else [(entry, "", 0)]
        if which and not todo:
            out.append((entry, entry, ABSENT, f"{which} is not on PATH"))
        while todo:
            path, how, depth = todo.pop(0)
            if not os.path.exists(path):
                out.append((entry, path, ABSENT, f"{path} does not exist" + (f" ({how})" if how else "")))
                continue
            real = os.path.realpath(path)
            if real in done:
                continue
            done.add(real)
            why = _trust_problem(real, writable)
            out.append((entry, real, REFUSED if why else GRANTED, why or how))
            if which and not why and depth < WRAPPER_DEPTH:  # what a trusted wrapper execs
                todo += [(t, f"named by the wrapper {real}", depth + 1) for t in _wrapper_targets(real, which)]
    return out


def exec_dirs(policy, ctx=None) -> list[str]:
    """Real paths (tool directories, single programs) the landlock layer grants execute on."""
    return [path for _entry, path, state, _detail in tool_verdicts(policy, ctx) if state == GRANTED]


def describe_tools(verdicts) -> list[str]:
    """One line per tool path, for reports and the landlock layer's status."""
    out = []
    for entry, path, state, detail in verdicts:
        label = path if path == entry else f"{path} (from {entry})"
        if state == GRANTED:
            out.append(f"{label}: may run" + (f", {detail}" if detail else ""))
        elif state == REFUSED:
            out.append(f"{label}: REFUSED: {detail}")
        else:
            out.append(f"{entry}: not present here ({detail})")
    return out


# --------------------------------------------------------------------------- environment (soft)


# JAX_PLATFORMS names the backends JAX may use; a platform it names that fails to start is
# an error ("Unable to initialize backend 'cuda'"), while without it JAX tries every backend
# it has and skips those that fail, with a warning (seen on an H100: jax 0.11.2). So:
# nothing granted: "cpu" (the clean "no GPU" answer, no attempt at CUDA or a TPU);
# a GPU or a TPU granted: unset, or the platform's own value minus what is not granted, so
# that JAX picks the granted device when its plugin is installed and the CPU otherwise. A
# TPU that is not granted stays out without the variable: libtpu's import is refused by the
# guard (JAX treats that as "no libtpu"; seen on the H100), TPU_LIBRARY_PATH is removed,
# and the TPU nodes are denied by Landlock (the hard part).
JAX_PLATFORM_NAMES = {"gpu": ("cuda", "gpu"), "tpu": ("tpu",)}


def _jax_platforms(kinds: set[str], inherited: str | None) -> str | None:
    if not kinds:
        return "cpu"
    if inherited is None:
        return None
    allowed = {"cpu"}.union(*(JAX_PLATFORM_NAMES[k] for k in kinds))
    kept = [p.strip() for p in inherited.split(",") if p.strip().lower() in allowed]
    return ",".join(kept) or None


def environment(policy, inherited: dict[str, str] | None = None) -> dict[str, str | None]:
    """Variables that make frameworks see exactly the allowed devices (None: remove it).

    `inherited`: the environment the launcher was given (a platform's own JAX_PLATFORMS
    is kept, less the platforms this profile does not grant).
    """
    inherited = {} if inherited is None else inherited
    env: dict[str, str | None] = {}
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
        env.update(TPU_VISIBLE_CHIPS="", TPU_VISIBLE_DEVICES="", TPU_LIBRARY_PATH=None)
    elif policy.tpu.get("chips") is not None:
        chips = ",".join(str(c) for c in policy.tpu["chips"])
        env.update(TPU_VISIBLE_CHIPS=chips, TPU_VISIBLE_DEVICES=chips)
    kinds = {"gpu"} if (indexes or migs) else set()  # an enabled GPU with no device selected grants none
    if tpu_selection(policy):
        kinds.add("tpu")
    env["JAX_PLATFORMS"] = _jax_platforms(kinds, inherited.get("JAX_PLATFORMS"))
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
