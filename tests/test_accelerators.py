"""Accelerator gating (issue 4): which GPU/TPU device nodes a tenant's kernel may open.

CI has no GPU, so most tests build fake device nodes: character devices with the
major/minor of /dev/null, made with mknod in a directory outside /tmp, and point a
test profile's device patterns at them. Landlock decides on the path (the inode),
not on the driver behind it, so a fake node is refused or granted exactly as a real
/dev/nvidia0 would be. Every check runs through a real kernel started by the
launcher, as root and as an ordinary user (the `who` fixture).

Tests marked ``gpu`` need a CUDA device and skip (with the reason) elsewhere.
"""

from __future__ import annotations

import base64
import errno
import functools
import json
import os
import re
import shutil
import stat
import subprocess
import sys
import tempfile
import textwrap
from dataclasses import dataclass

import pytest

import kernelutil

MIG_UUID = "MIG-3f0a1b2c-4d5e-6f70-8192-a3b4c5d6e7f8"
ACCEL_ENV = ["CUDA_VISIBLE_DEVICES", "NVIDIA_VISIBLE_DEVICES", "CUDA_DEVICE_ORDER",
             "CUDA_MPS_PINNED_DEVICE_MEM_LIMIT", "TPU_VISIBLE_CHIPS", "TPU_VISIBLE_DEVICES", "JAX_PLATFORMS",
             "TPU_LIBRARY_PATH"]

# Opens each path read-write, then read-only; records "ok" or the exception's name.
PROBE_DEF = '''
import json, os
def _probe(paths):
    out = {}
    for p in paths:
        r = []
        for flag in (os.O_RDWR, os.O_RDONLY):
            try:
                os.close(os.open(p, flag))
                r.append("ok")
            except OSError as e:
                r.append(type(e).__name__)
        out[p] = r
    return out
'''
PROBE_SCRIPT = PROBE_DEF + "import sys\nprint('PROBE' + json.dumps(_probe(sys.argv[1:])))\n"
OPENS = ["ok", "ok"]
REFUSED = ["PermissionError", "PermissionError"]
# A device node no profile speaks of, outside the writable directories: Landlock grants
# it read (as every path) but neither write nor ioctl (layers/landlock.py).
READ_ONLY = ["PermissionError", "ok"]


# --------------------------------------------------------------------------- fake device nodes


def _mknod(path: str) -> None:
    os.mknod(path, 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    os.chmod(path, 0o666)  # whatever the umask


def _mkdtemp(prefix: str) -> str:
    # Not under /tmp: TMPDIR is writable in the sandbox, and the nodes must sit in a
    # directory the tenant cannot write (as /dev is).
    d = tempfile.mkdtemp(prefix=prefix, dir="/var/tmp")
    os.chmod(d, 0o755)  # an ordinary user must traverse it
    return d


def _need_mknod() -> None:
    if os.geteuid() != 0:
        pytest.skip("fake accelerator device nodes need root (mknod of character devices); run the suite as root")


def _check_node_usable(path: str) -> None:
    try:
        os.close(os.open(path, os.O_RDWR))
    except OSError as e:
        pytest.skip(f"a fake device node made with mknod cannot be opened here ({e.strerror}; is /var/tmp "
                    f"mounted nodev?)")


@dataclass
class Fake:
    """A fake /dev: GPU, TPU and MIG capability nodes, and a MIG capabilities tree."""
    root: str
    other: str  # an unrelated directory with one node: never part of any profile

    def p(self, *parts: str) -> str:
        return os.path.join(self.root, *parts)

    @property
    def gpus(self) -> list[str]:
        return [self.p("nvidia0"), self.p("nvidia1")]

    @property
    def gpu_shared(self) -> list[str]:
        return [self.p("nvidiactl"), self.p("nvidia-uvm")]

    @property
    def caps(self) -> list[str]:
        return [self.p("nvidia-caps", f"nvidia-cap{i}") for i in (1, 2, 3)]

    @property
    def all_gpu(self) -> list[str]:
        return self.gpus + self.gpu_shared + self.caps

    @property
    def accels(self) -> list[str]:
        return [self.p("accel0"), self.p("accel1")]

    @property
    def vfios(self) -> list[str]:
        return [self.p("vfio", "0"), self.p("vfio", "1")]

    @property
    def vfio_shared(self) -> str:
        return self.p("vfio", "vfio")

    @property
    def all_tpu(self) -> list[str]:
        return self.accels + self.vfios + [self.vfio_shared]

    @property
    def unrelated(self) -> str:
        return os.path.join(self.other, "dev0")

    def gpu_section(self, **kw) -> dict:
        return {"enabled": False, "device_pattern": self.p("nvidia{index}"),
                # nvidia-uvm-tools is listed but absent, as on most machines
                "shared_nodes": self.gpu_shared + [self.p("nvidia-uvm-tools")],
                "caps_dir": self.p("nvidia-caps"), "capabilities_root": self.p("capabilities"), **kw}

    def tpu_section(self, **kw) -> dict:
        return {"enabled": False, "device_pattern": self.p("accel{index}"),
                "vfio_pattern": self.p("vfio", "{index}"), "shared_nodes": [self.vfio_shared], **kw}

    def profile(self, name: str, *, gpu: dict | None = None, tpu: dict | None = None, extends: str = "free"):
        data = {"extends": extends, "description": f"accelerator test profile {name}",
                "filesystem": {"readable": readable_with(self.root, self.other)},
                "accelerators": {"gpu": self.gpu_section(**(gpu or {})), "tpu": self.tpu_section(**(tpu or {}))}}
        return kernelutil.write_profile(name, json.dumps(data, indent=1))


def readable_with(*dirs: str) -> list[str]:
    """filesystem.readable's default plus `dirs`: the fake device directories stand for /dev,
    which the default lets tenants read."""
    from sandbox_kernel.policy_load import schema

    return schema()["properties"]["filesystem"]["properties"]["readable"]["default"] + list(dirs)


def _build_fake() -> Fake:
    root, other = _mkdtemp("sbx-fakedev-"), _mkdtemp("sbx-otherdev-")
    fake = Fake(root, other)
    for d in ("nvidia-caps", "vfio"):
        os.mkdir(fake.p(d), 0o755)
    try:
        for node in fake.all_gpu + fake.all_tpu + [fake.unrelated]:
            _mknod(node)
    except PermissionError as e:
        shutil.rmtree(root, ignore_errors=True)
        shutil.rmtree(other, ignore_errors=True)
        pytest.skip(f"mknod is not permitted here ({e.strerror}; no CAP_MKNOD?)")
    # What the NVIDIA driver publishes under /proc/driver/nvidia/capabilities for MIG
    # device gpu 0 / GPU instance 1 / compute instance 0.
    gi = fake.p("capabilities", "gpu0", "mig", "gi1")
    os.makedirs(os.path.join(gi, "ci0"))
    for d, minor in ((gi, 2), (os.path.join(gi, "ci0"), 3)):
        with open(os.path.join(d, "access"), "w") as fh:
            fh.write(f"DeviceFileMinor: {minor}\nDeviceFileMode: 292\nDeviceFileModify: 1\n")
    for dirpath, _dirnames, filenames in os.walk(fake.p("capabilities")):
        os.chmod(dirpath, 0o755)
        for f in filenames:
            os.chmod(os.path.join(dirpath, f), 0o644)
    return fake


@pytest.fixture(scope="module")
def fake():
    _need_mknod()
    f = _build_fake()
    _check_node_usable(f.gpus[0])
    yield f
    shutil.rmtree(f.root, ignore_errors=True)
    shutil.rmtree(f.other, ignore_errors=True)


# --------------------------------------------------------------------------- helpers


def _tagged(text: str, tag: str):
    for line in text.splitlines():
        if line.startswith(tag):
            return json.loads(line[len(tag):])
    raise AssertionError(f"no {tag} line in output:\n{text}")


def probe(k, paths: list[str]) -> dict[str, list[str]]:
    """Open each path inside the kernel's own process."""
    r = k.ok(PROBE_DEF + f"print('PROBE' + json.dumps(_probe({paths!r})))")
    return _tagged(r.stdout, "PROBE")


def probe_subprocess(k, paths: list[str]) -> dict[str, list[str]]:
    """Open each path from a child interpreter started by subprocess.run in the cell."""
    r = k.ok(f"""
        import subprocess, sys
        _p = subprocess.run([sys.executable, "-c", {PROBE_SCRIPT!r}, *{paths!r}], capture_output=True, text=True)
        print(_p.stdout, _p.stderr)
    """)
    return _tagged(r.stdout, "PROBE")


def probe_shell(k, paths: list[str]) -> dict[str, list[str]]:
    """Open each path from a `!python -c ...` line."""
    code = base64.b64encode(PROBE_SCRIPT.encode()).decode()
    r = k.ok(f"!python -c \"import base64; exec(base64.b64decode('{code}'))\" {' '.join(paths)}")
    return _tagged(r.output, "PROBE")


def kernel_env(k) -> dict[str, str | None]:
    r = k.ok(f"import os, json; print('ENV' + json.dumps({{k: os.environ.get(k) for k in {ACCEL_ENV!r}}}))")
    return _tagged(r.stdout, "ENV")


def expect(result: dict, opens: list[str], refused: list[str], read_only: list[str] = ()) -> None:
    """`opens`: read-write and read-only; `refused`: neither; `read_only`: only read-only."""
    assert set(result) == set(opens) | set(refused) | set(read_only)
    wrong = {p: result[p] for p in opens if result[p] != OPENS}
    wrong.update({p: result[p] for p in refused if result[p] != REFUSED})
    wrong.update({p: result[p] for p in read_only if result[p] != READ_ONLY})
    assert not wrong, f"expected {opens} to open, {refused} to be refused, {list(read_only)} read-only; got {wrong}"


def launcher(profile_path, who, cwd) -> subprocess.CompletedProcess:
    """`sandbox-kernel run --profile FILE -- /usr/bin/true`, as root or as the ordinary user."""
    cmd = [sys.executable, "-I", "-m", "sandbox_kernel.cli", "run", "--profile", str(profile_path), "--",
           "/usr/bin/true"]
    env = dict(os.environ)
    if who is not None:
        cmd = ["setpriv", f"--reuid={who.pw_uid}", f"--regid={who.pw_gid}", "--init-groups", "--"] + cmd
        env.update(HOME=who.pw_dir, USER=who.pw_name, LOGNAME=who.pw_name)
        env.pop("TMPDIR", None)
    return subprocess.run(cmd, capture_output=True, text=True, cwd=cwd, env=env, timeout=120)


def cli(*args: str) -> subprocess.CompletedProcess:
    exe = os.path.join(os.path.dirname(sys.executable), "sandbox-kernel")
    cmd = [exe, *args] if os.path.exists(exe) else [sys.executable, "-m", "sandbox_kernel.cli", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


def _workdir(who, tmp_path) -> str:
    return kernelutil.user_workdir(who) if who is not None else str(tmp_path)


# --------------------------------------------------------------------------- GPU nodes


@pytest.mark.covers("accelerators.gpu.enabled")
@pytest.mark.covers("accelerators.gpu.enabled")
def test_gpu_disabled_refuses_every_gpu_node(make_kernel, who, fake):
    # TPU enabled (every chip) in the same directory: the refusal is aimed at GPU nodes only.
    fake.profile("acc-nogpu", tpu={"enabled": True})
    k = make_kernel("acc-nogpu", user=who)
    res = probe(k, fake.all_gpu + fake.all_tpu + [fake.unrelated])
    expect(res, opens=fake.all_tpu, refused=fake.all_gpu, read_only=[fake.unrelated])
    env = kernel_env(k)
    assert env["CUDA_VISIBLE_DEVICES"] == "" and env["NVIDIA_VISIBLE_DEVICES"] == ""
    # An uncaught refusal names the profile rule (the kernel's added line).
    r = k.run(f"os.open({fake.gpus[0]!r}, os.O_RDWR)")
    assert r.ename == "PermissionError"
    assert "is not in this tenant's profile" in r.traceback + r.output, str(r)
    # The directories above a denied node can still be listed (`ls /dev` keeps working);
    # listing never opens the node.
    listed = k.ok(f"import os; print(sorted(os.listdir({os.path.dirname(fake.gpus[0])!r})))").stdout
    assert os.path.basename(fake.gpus[0]) in listed
    assert k.ok("import os; print(len(os.listdir('/dev')) > 5, len(os.listdir('/usr')) > 0)").stdout.split() == ["True", "True"]


@pytest.mark.covers("accelerators.gpu.devices", "accelerators.gpu.device_pattern")
@pytest.mark.covers("accelerators.gpu.devices", "accelerators.gpu.device_pattern")
def test_gpu_device_zero_only(make_kernel, who, fake):
    fake.profile("acc-gpu0", gpu={"enabled": True, "devices": [0]})
    k = make_kernel("acc-gpu0", user=who)
    env = kernel_env(k)
    assert env["CUDA_VISIBLE_DEVICES"] == "0" and env["NVIDIA_VISIBLE_DEVICES"] == "0"
    assert env["CUDA_DEVICE_ORDER"] == "PCI_BUS_ID"
    assert env["CUDA_MPS_PINNED_DEVICE_MEM_LIMIT"] is None  # no mps_memory_limit in the profile

    paths = fake.all_gpu + [fake.unrelated]
    opens = [fake.gpus[0]] + fake.gpu_shared
    refused = [fake.gpus[1]] + fake.caps  # no MIG device listed: no capability node
    ro = [fake.unrelated]
    expect(probe(k, paths), opens, refused, ro)
    expect(probe_subprocess(k, paths), opens, refused, ro)
    expect(probe_shell(k, paths), opens, refused, ro)

    # The environment is soft; the nodes are not: widening CUDA_VISIBLE_DEVICES changes nothing.
    k.ok('os.environ["CUDA_VISIBLE_DEVICES"] = "0,1,2,3"')
    expect(probe(k, paths), opens, refused, ro)
    expect(probe_subprocess(k, paths), opens, refused, ro)
    expect(probe_shell(k, paths), opens, refused, ro)


def test_gpu_devices_order_is_kept(make_kernel, who, fake):
    fake.profile("acc-gpu10", gpu={"enabled": True, "devices": [1, 0]})
    k = make_kernel("acc-gpu10", user=who)
    env = kernel_env(k)
    assert env["CUDA_VISIBLE_DEVICES"] == "1,0" and env["NVIDIA_VISIBLE_DEVICES"] == "1,0"
    expect(probe(k, fake.all_gpu), opens=fake.gpus + fake.gpu_shared, refused=fake.caps)


@pytest.mark.covers("accelerators.gpu.devices")
@pytest.mark.covers("accelerators.gpu.devices")
def test_gpu_devices_omitted_allows_every_gpu_present(make_kernel, who, fake):
    fake.profile("acc-gpuall", gpu={"enabled": True})
    k = make_kernel("acc-gpuall", user=who)
    # Every per-GPU and shared node opens. MIG capability nodes stay closed: they are
    # granted only for MIG devices the profile lists (nvidia-cap1/2 are usually the
    # driver's mig/config and mig/monitor capabilities).
    expect(probe(k, fake.all_gpu), opens=fake.gpus + fake.gpu_shared, refused=fake.caps)
    assert kernel_env(k)["CUDA_VISIBLE_DEVICES"] == "0,1"


@pytest.mark.covers("accelerators.gpu.devices", "accelerators.gpu.caps_dir", "accelerators.gpu.capabilities_root")
@pytest.mark.covers("accelerators.gpu.devices", "accelerators.gpu.caps_dir", "accelerators.gpu.capabilities_root")
def test_mig_device(make_kernel, who, fake, tmp_path):
    mig = {"mig": MIG_UUID, "gpu": 0, "gpu_instance": 1, "compute_instance": 0}
    path = fake.profile("acc-mig", gpu={"enabled": True, "devices": [mig]})
    k = make_kernel("acc-mig", user=who)
    cap1, cap2, cap3 = fake.caps
    expect(probe(k, fake.all_gpu), opens=[fake.gpus[0], cap2, cap3] + fake.gpu_shared, refused=[fake.gpus[1], cap1])
    env = kernel_env(k)
    assert env["CUDA_VISIBLE_DEVICES"] == MIG_UUID and env["NVIDIA_VISIBLE_DEVICES"] == MIG_UUID
    # the same profile through the bare launcher: it starts (the control for the failures below)
    r = launcher(path, who, _workdir(who, tmp_path))
    assert r.returncode == 0, r.stderr


def _assert_no_start(make_kernel, name, who):
    with pytest.raises(RuntimeError, match="refused to start"):
        make_kernel(name, user=who, startup_timeout=60)


@pytest.mark.covers("accelerators.gpu.capabilities_root")
@pytest.mark.covers("accelerators.gpu.capabilities_root")
def test_mig_without_capability_files_refuses_to_start(make_kernel, who, fake, tmp_path):
    mig = {"mig": MIG_UUID, "gpu": 0, "gpu_instance": 7, "compute_instance": 0}  # no gi7 in the tree
    path = fake.profile("acc-mig-missing", gpu={"enabled": True, "devices": [mig]})
    _assert_no_start(make_kernel, "acc-mig-missing", who)
    r = launcher(path, who, _workdir(who, tmp_path))
    assert r.returncode == 1, (r.returncode, r.stderr)
    access = fake.p("capabilities", "gpu0", "mig", "gi7", "access")
    assert f"MIG device {MIG_UUID}: cannot read {access}" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr


def test_bare_mig_uuid_without_nvml_refuses_to_start(make_kernel, who, fake, tmp_path):
    try:
        import pynvml  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("nvidia-ml-py is installed: bare MIG UUIDs are resolved through NVML")
    path = fake.profile("acc-mig-bare", gpu={"enabled": True, "devices": [MIG_UUID]})
    _assert_no_start(make_kernel, "acc-mig-bare", who)
    r = launcher(path, who, _workdir(who, tmp_path))
    assert r.returncode == 1, (r.returncode, r.stderr)
    assert f"MIG device {MIG_UUID}: give it as {{mig: {MIG_UUID}, gpu: N" in r.stderr, r.stderr
    assert "nvidia-ml-py" in r.stderr and "Traceback" not in r.stderr


# --------------------------------------------------------------------------- TPU nodes


@pytest.mark.covers("accelerators.tpu.enabled")
@pytest.mark.covers("accelerators.tpu.enabled")
def test_tpu_disabled(make_kernel, who, fake):
    # GPU enabled (every GPU) in the same directory: the refusal is aimed at TPU nodes only.
    fake.profile("acc-notpu", gpu={"enabled": True})
    # what a platform may have set for its own reasons: the TPU part is dropped, the GPU part kept
    k = make_kernel("acc-notpu", user=who, env={"JAX_PLATFORMS": "tpu,cuda,cpu", "TPU_LIBRARY_PATH": fake.accels[0]})
    expect(probe(k, fake.all_tpu + fake.gpus + [fake.unrelated]),
           opens=fake.gpus, refused=fake.all_tpu, read_only=[fake.unrelated])
    env = kernel_env(k)
    assert env["TPU_VISIBLE_CHIPS"] == "" and env["TPU_VISIBLE_DEVICES"] == "" and env["TPU_LIBRARY_PATH"] is None
    # GPUs are granted: JAX may use them (it ran on the CPU under `gpu` when this was "cpu")
    assert env["JAX_PLATFORMS"] == "cuda,cpu"

    r = k.run("import libtpu")
    assert r.ename == "ProhibitedImportError", str(r)
    assert "TPUs are not in this tenant's profile" in r.evalue
    r = k.ok("""
        import importlib
        import sandbox_kernel
        name = "".join(reversed("uptbil"))  # computed: reaches the import guard, not the cell check
        for how in (importlib.import_module, __import__):
            try:
                how(name)
                print("IMPORTED")
            except sandbox_kernel.ProhibitedImportError as e:
                print("REFUSED", e)
            except ImportError as e:
                print("OTHER", type(e).__name__, e)
    """)
    lines = r.stdout.splitlines()
    assert len(lines) == 2 and all(line.startswith("REFUSED") and "TPUs are not in this tenant's profile" in line
                                   for line in lines), r.stdout


@pytest.mark.covers("accelerators.tpu.chips", "accelerators.tpu.device_pattern", "accelerators.tpu.vfio_pattern",
                    "accelerators.tpu.shared_nodes")
@pytest.mark.covers("accelerators.tpu.chips", "accelerators.tpu.device_pattern", "accelerators.tpu.vfio_pattern",
                    "accelerators.tpu.shared_nodes")
def test_tpu_chip_one(make_kernel, who, fake):
    fake.profile("acc-tpu1", tpu={"enabled": True, "chips": [1]})
    k = make_kernel("acc-tpu1", user=who)
    accel0, accel1 = fake.accels
    vfio0, vfio1 = fake.vfios
    expect(probe(k, fake.all_tpu + fake.all_gpu),
           opens=[accel1, vfio1, fake.vfio_shared], refused=[accel0, vfio0] + fake.all_gpu)
    env = kernel_env(k)
    assert env["TPU_VISIBLE_CHIPS"] == "1" and env["TPU_VISIBLE_DEVICES"] == "1"
    assert env["JAX_PLATFORMS"] is None
    # libtpu is only refused where TPUs are disabled: here it is simply not installed
    r = k.run("import importlib; importlib.import_module(''.join(reversed('uptbil')))")
    assert r.ename == "ModuleNotFoundError", str(r)


# --------------------------------------------------------------------------- nodes created later


def test_nodes_created_after_start_are_refused(make_kernel, who):
    """Landlock grants the inodes that exist when the kernel starts.

    What this shows:
    - a directory that holds a denied node is not granted as a whole; each of its
      entries present at start is granted on its own. A node created there later
      (hot-plug, a lazily created /dev/nvidia-uvm) is refused read-write AND
      read-only, even when the profile lists it (index 2, a shared node);
    - a directory that holds no denied node is granted read as a whole, so a node
      created there later opens read-only; it is still refused read-write, and its
      ioctls are refused (Landlock ABI 5+ handles device ioctls), where a node
      granted at start answers ioctls normally.
    Create every device node before kernels start (e.g. `nvidia-modprobe -u -c0`).
    """
    _need_mknod()
    gdir, tdir = _mkdtemp("sbx-latedev-"), _mkdtemp("sbx-lateaccel-")
    try:
        fake = Fake(gdir, tdir)
        for n in ("nvidia0", "nvidia1", "nvidiactl"):
            _mknod(fake.p(n))
        _mknod(os.path.join(tdir, "accel0"))
        _check_node_usable(fake.p("nvidia0"))
        profile = {
            "extends": "free",
            "filesystem": {"readable": readable_with(gdir, tdir)},
            "accelerators": {
                "gpu": {"enabled": True, "devices": [0, 2], "device_pattern": fake.p("nvidia{index}"),
                        "shared_nodes": [fake.p("nvidiactl"), fake.p("nvidia-uvm")],
                        "caps_dir": fake.p("nvidia-caps"), "capabilities_root": fake.p("capabilities")},
                "tpu": {"enabled": True, "device_pattern": os.path.join(tdir, "accel{index}"),
                        "vfio_pattern": os.path.join(tdir, "vfio", "{index}"), "shared_nodes": []},
            },
        }
        kernelutil.write_profile("acc-late", json.dumps(profile))
        k = make_kernel("acc-late", user=who)
        late = [fake.p("nvidia2"), fake.p("nvidia-uvm"), os.path.join(tdir, "accel1")]
        for n in late:
            _mknod(n)
            os.close(os.open(n, os.O_RDWR))  # the node itself works outside the kernel
        res = probe(k, [fake.p("nvidia0"), fake.p("nvidiactl"), os.path.join(tdir, "accel0")] + late)
        expect(res, opens=[fake.p("nvidia0"), fake.p("nvidiactl"), os.path.join(tdir, "accel0")],
               refused=late[:2], read_only=late[2:])
        r = k.ok(f"""
            import fcntl, termios
            def _ioctl(p):
                fd = os.open(p, os.O_RDONLY)
                try:
                    fcntl.ioctl(fd, termios.TCGETS, bytes(64))
                    return "ok"
                except OSError as e:
                    return errno.errorcode[e.errno]
                finally:
                    os.close(fd)
            import errno
            print("IOCTL" + json.dumps([_ioctl({os.path.join(tdir, 'accel0')!r}), _ioctl({late[2]!r})]))
        """)
        # /dev/null's driver answers TCGETS with ENOTTY; Landlock (ABI 5+) refuses with EACCES.
        from sandbox_kernel.layers import landlock
        late_ioctl = errno.EACCES if landlock.abi_version() >= 5 else errno.ENOTTY
        assert _tagged(r.stdout, "IOCTL") == [errno.errorcode[errno.ENOTTY], errno.errorcode[late_ioctl]]
    finally:
        shutil.rmtree(gdir, ignore_errors=True)
        shutil.rmtree(tdir, ignore_errors=True)


# --------------------------------------------------------------------------- torch (CPU build is enough)


def test_torch_sees_no_cuda_under_free(make_kernel, who):
    k = make_kernel("free", user=who)
    r = k.ok("""
        import os, torch
        ours = [c for c, _ in torch.cuda._queued_calls if getattr(c, "__module__", "").startswith("sandbox_kernel")]
        print(torch.cuda.is_available(), torch.cuda.device_count(), repr(os.environ["CUDA_VISIBLE_DEVICES"]), len(ours),
              os.environ["JAX_PLATFORMS"])
    """, timeout=180)
    # no memory_fraction in `free`: nothing of ours is queued on torch.cuda; JAX stays on the CPU
    assert r.stdout.split() == ["False", "0", "''", "0", "cpu"], r.stdout


@pytest.mark.covers("accelerators.gpu.memory_fraction", "accelerators.gpu.mps_memory_limit")
@pytest.mark.covers("accelerators.gpu.memory_fraction", "accelerators.gpu.mps_memory_limit")
def test_memory_fraction_hook_and_mps_limit(make_kernel, who, fake):
    fake.profile("acc-frac", gpu={"enabled": True, "devices": [0], "memory_fraction": 0.5,
                                  "mps_memory_limit": "8G"})
    k = make_kernel("acc-frac", user=who)
    assert kernel_env(k)["CUDA_MPS_PINNED_DEVICE_MEM_LIMIT"] == "0=8G"
    check = """
        import json, torch
        ours = [c for c, _ in torch.cuda._queued_calls if getattr(c, "__module__", "").startswith("sandbox_kernel")]
        seen = []
        saved = torch.cuda.device_count, torch.cuda.set_per_process_memory_fraction
        # What the queued call does when CUDA initialises, on a pretend two-GPU machine.
        torch.cuda.device_count = lambda: 2
        torch.cuda.set_per_process_memory_fraction = lambda fraction, device=None: seen.append([fraction, device])
        try:
            for c in ours:
                c()
        finally:
            torch.cuda.device_count, torch.cuda.set_per_process_memory_fraction = saved
        print("FRAC" + json.dumps({"queued": len(ours), "calls": seen, "initialized": torch.cuda.is_initialized()}))
    """
    r = k.ok(check, timeout=180)
    assert _tagged(r.stdout, "FRAC") == {"queued": 1, "calls": [[0.5, 0], [0.5, 1]], "initialized": False}
    # a child interpreter arms the same hook
    script = base64.b64encode(textwrap.dedent(check).encode()).decode()
    r = k.ok(f"!python -c \"import base64; exec(base64.b64decode('{script}'))\"", timeout=180)
    assert _tagged(r.output, "FRAC") == {"queued": 1, "calls": [[0.5, 0], [0.5, 1]], "initialized": False}


# --------------------------------------------------------------------------- reports


def _device_lines(text: str) -> dict[str, str]:
    out = {}
    for line in text.splitlines():
        m = re.match(r"^  (/\S+): (allowed|denied)$", line)
        if m:
            out[m.group(1)] = m.group(2)
    return out


def _expected_devices(fake: Fake) -> dict[str, str]:
    allowed = {fake.gpus[0], *fake.gpu_shared, fake.accels[1], fake.vfios[1], fake.vfio_shared}
    return {p: "allowed" if p in allowed else "denied" for p in fake.all_gpu + fake.all_tpu}


def _report_profile(fake: Fake):
    return fake.profile("acc-report", gpu={"enabled": True, "devices": [0], "memory_fraction": 0.5},
                        tpu={"enabled": True, "chips": [1]})


def test_doctor_lists_fake_nodes(fake):
    _report_profile(fake)
    r = cli("doctor", "--profile", "acc-report", "--no-try", "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert {d["node"]: d["verdict"] for d in out["devices"]} == _expected_devices(fake), r.stdout
    rules = {(x["rule"], x["hard"]): x["value"] for x in out["rules"]}
    assert rules[("accelerators.gpu", True)].startswith("enabled: GPU 0 (devices: [0])"), rules
    assert ("CUDA_VISIBLE_DEVICES", False) in rules, rules
    assert rules[("accelerators.gpu.memory_fraction", False)] == "0.5", rules
    assert rules[("accelerators.tpu", True)].startswith("enabled: TPU chip 1 (chips: [1])"), rules
    # the terminal form: the same rows in rich tables
    text = cli("doctor", "--profile", "acc-report", "--no-try").stdout
    for node, verdict in _expected_devices(fake).items():
        assert re.search(rf"^\s+{re.escape(node)}\s+{verdict}\s*$", text, re.M), (node, text)
    assert re.search(r"^\s+accelerators\.gpu\s+enabled: GPU 0 \(devices: \[0\]\).*\bhard\b", text, re.M), text


def test_profiles_show_marks_accelerators_hard_and_soft(fake):
    _report_profile(fake)
    r = cli("profiles", "show", "acc-report")
    assert r.returncode == 0, r.stderr
    rows = {}
    for line in r.stdout.splitlines():
        cells = line.split()
        if cells and cells[0] in ("accelerators.gpu", "accelerators.tpu", "CUDA_VISIBLE_DEVICES",
                                  "accelerators.gpu.memory_fraction"):
            rows[cells[0]] = line
    assert set(rows) == {"accelerators.gpu", "accelerators.tpu", "CUDA_VISIBLE_DEVICES",
                         "accelerators.gpu.memory_fraction"}, r.stdout
    assert " hard " in rows["accelerators.gpu"] and "Landlock" in rows["accelerators.gpu"]
    assert " hard " in rows["accelerators.tpu"]
    assert " soft " in rows["CUDA_VISIBLE_DEVICES"]
    assert " 0.5 " in rows["accelerators.gpu.memory_fraction"] and " soft " in rows["accelerators.gpu.memory_fraction"]


def test_sandbox_magic_lists_accelerators(make_kernel, who, fake):
    _report_profile(fake)
    k = make_kernel("acc-report", user=who)
    out = k.ok("%sandbox").stdout
    assert _device_lines(out) == _expected_devices(fake), out
    assert re.search(r"^  hard  accelerators\.gpu: enabled: GPU 0 \(devices: \[0\]\) .*Landlock", out, re.M), out
    assert re.search(r"^  soft  CUDA_VISIBLE_DEVICES: ", out, re.M), out
    assert re.search(r"^  soft  accelerators\.gpu\.memory_fraction: 0\.5 ", out, re.M), out
    assert re.search(r"^  landlock\s+hard\s+active", out, re.M), out


# --------------------------------------------------------------------------- real GPUs


@functools.lru_cache(maxsize=1)
def _cuda_outside() -> tuple[bool, int, str]:
    """(available, device count, why not) from a plain interpreter, outside any sandbox."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SANDBOX_KERNEL_") and k not in ACCEL_ENV}
    try:
        r = subprocess.run([sys.executable, "-c", "import torch; print(torch.cuda.is_available(), "
                            "torch.cuda.device_count())"], capture_output=True, text=True, timeout=300, env=env)
    except subprocess.TimeoutExpired:
        return False, 0, "torch.cuda.is_available() timed out"
    if r.returncode != 0:
        return False, 0, f"importing torch failed: {r.stderr.strip().splitlines()[-1:]}"
    avail, count = r.stdout.split()
    if avail != "True":
        return False, 0, "torch.cuda.is_available() is False (torch build without CUDA, or no GPU)"
    return True, int(count), ""


@pytest.fixture
def cuda():
    ok, count, why = _cuda_outside()
    if not ok:
        pytest.skip(f"needs a CUDA GPU: {why}")
    return count


@pytest.mark.gpu
def test_gpu_matmul_on_cuda0(make_kernel, who, cuda):
    k = make_kernel("gpu", user=who)
    r = k.ok("""
        import torch
        a = torch.ones(256, 256, device="cuda:0")
        print(torch.cuda.is_available(), torch.cuda.device_count(), float((a @ a)[0, 0]))
    """, timeout=300)
    assert r.stdout.split() == ["True", "1", "256.0"], r.stdout


@pytest.mark.gpu
def test_gpu_memory_fraction_caps_allocation(make_kernel, cuda):
    kernelutil.write_profile("acc-gpu-frac", """
        extends: gpu
        accelerators:
          gpu:
            memory_fraction: 0.1
    """)
    k = make_kernel("acc-gpu-frac")
    r = k.ok("""
        import torch
        total = torch.cuda.get_device_properties(0).total_memory
        small = torch.empty(int(total * 0.05), dtype=torch.uint8, device="cuda:0")
        print("SMALL-OK")
        del small
        try:
            big = torch.empty(int(total * 0.2), dtype=torch.uint8, device="cuda:0")
            print("BIG-OK")
        except torch.cuda.OutOfMemoryError as e:
            print("OOM", str(e).splitlines()[0])
    """, timeout=300)
    assert "SMALL-OK" in r.stdout and "OOM" in r.stdout and "BIG-OK" not in r.stdout, r.stdout


@pytest.mark.gpu
def test_gpu_free_profile_has_no_cuda(make_kernel, who, cuda):
    k = make_kernel("free", user=who)
    r = k.ok("""
        import os, torch
        def _try(p):
            try:
                os.close(os.open(p, os.O_RDWR))
                return "ok"
            except OSError as e:
                return type(e).__name__
        print(torch.cuda.is_available(), _try("/dev/nvidia0"), _try("/dev/nvidiactl"))
    """, timeout=300)
    assert r.stdout.split() == ["False", "PermissionError", "PermissionError"], r.stdout


@pytest.mark.gpu
def test_gpu_only_device_zero_of_several(make_kernel, cuda):
    if cuda < 2 or not os.path.exists("/dev/nvidia1"):
        pytest.skip(f"needs two or more GPUs (/dev/nvidia0 and /dev/nvidia1); this machine has {cuda}")
    k = make_kernel("gpu")  # devices: [0]
    r = k.ok("""
        import os
        os.environ["CUDA_VISIBLE_DEVICES"] = "0,1"
        try:
            os.close(os.open("/dev/nvidia1", os.O_RDWR))
            opened = "ok"
        except OSError as e:
            opened = type(e).__name__
        import torch
        print(opened, torch.cuda.device_count())
    """, timeout=300)
    assert r.stdout.split() == ["PermissionError", "1"], r.stdout



# JAX on the devices a profile grants (issue 10: `jax.devices()` gave [CpuDevice] under `gpu`
# on an H100 because JAX_PLATFORMS was "cpu"). The cell also compiles: XLA runs ptxas and
# nvlink from the CUDA toolkit, which must lie in a granted tool dir (default /usr/local/cuda/bin).
# XLA_PYTHON_CLIENT_PREALLOCATE: XLA would otherwise reserve 75% of the GPU.
JAX_CELL = """
    import os, json
    os.environ["XLA_PYTHON_CLIENT_PREALLOCATE"] = "false"
    import jax, jax.numpy as jnp
    devs = jax.devices()
    total = float(jnp.arange(4.0).sum())
    print("JAX" + json.dumps({"platforms": [d.platform for d in devs], "backend": jax.default_backend(),
                              "sum": total, "env": os.environ.get("JAX_PLATFORMS")}))
"""


@functools.lru_cache(maxsize=1)
def _jax_outside() -> str:
    """Why JAX cannot reach a CUDA device outside any sandbox ('' when it can)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SANDBOX_KERNEL_") and k not in ACCEL_ENV}
    env["XLA_PYTHON_CLIENT_PREALLOCATE"] = "false"
    try:
        r = subprocess.run([sys.executable, "-c", "import jax; print(jax.default_backend())"],
                           capture_output=True, text=True, timeout=300, env=env)
    except subprocess.TimeoutExpired:
        return "jax.default_backend() timed out"
    if r.returncode != 0:
        return f"importing jax failed: {r.stderr.strip().splitlines()[-1:]}"
    if r.stdout.split()[-1:] != ["gpu"]:
        return f"jax's default backend is {r.stdout.strip()!r} outside the sandbox (no CUDA plugin: jax[cuda12/13])"
    return ""


@pytest.fixture
def jax_cuda(cuda):
    why = _jax_outside()
    if why:
        pytest.skip(f"needs JAX with CUDA: {why}")


@pytest.mark.gpu
def test_jax_uses_the_granted_gpu(make_kernel, who, jax_cuda):
    k = make_kernel("gpu", user=who)
    r = k.ok(JAX_CELL, timeout=300)
    got = _tagged(r.stdout, "JAX")
    assert got["platforms"] == ["gpu"] and got["backend"] == "gpu" and got["sum"] == 6.0, got
    assert got["env"] is None
    # a child interpreter too
    script = base64.b64encode(textwrap.dedent(JAX_CELL).encode()).decode()
    r = k.ok(f"!python -c \"import base64; exec(base64.b64decode('{script}'))\"", timeout=300)
    assert _tagged(r.output, "JAX")["platforms"] == ["gpu"], r.output


@pytest.mark.gpu
def test_jax_only_cpu_under_free(make_kernel, who, jax_cuda):
    k = make_kernel("free", user=who)
    r = k.ok(JAX_CELL, timeout=300)
    got = _tagged(r.stdout, "JAX")
    assert got == {"platforms": ["cpu"], "backend": "cpu", "sum": 6.0, "env": "cpu"}, got
    # the clean answer: no attempt at CUDA, so no backend warnings either
    assert "Unable to initialize backend" not in r.stderr and "cuInit" not in r.stderr, r.stderr


@pytest.mark.covers("accelerators.gpu.device_pattern")
@pytest.mark.parametrize("pattern", ["card{index}", "card{index}-foo", "renderD{index}", "{index}", "sub/{index}/dev/x",
                                     "sub/{index}", "nosuch/{index}"])
@pytest.mark.covers("accelerators.gpu.device_pattern")
def test_device_node_patterns_match_as_glob_does(tmp_path, pattern):
    """glob_nodes lists a directory instead of importing glob (the launch path stays small); it
    finds what glob.glob(head + "[0-9]*" + tail) finds with a numeric index, dangling links too."""
    import glob

    from sandbox_kernel import accelerators

    for n in ["card0", "card1", "card12", "cardx", "card3-foo", "card4-foo", "card5-bar", "renderD128", "7", "x7"]:
        (tmp_path / n).touch()
    (tmp_path / "sub" / "7" / "dev").mkdir(parents=True)
    (tmp_path / "sub" / "7" / "dev" / "x").touch()
    (tmp_path / "sub" / "8").mkdir()
    os.symlink("/nonexistent", tmp_path / "card9")
    full = str(tmp_path / pattern)
    head, _, tail = full.partition("{index}")
    expected = {}
    for path in glob.glob(glob.escape(head) + "[0-9]*" + glob.escape(tail)):
        middle = path[len(head):len(path) - len(tail) if tail else None]
        if middle.isdigit():
            expected[int(middle)] = path
    got = accelerators.glob_nodes(full)
    assert got == dict(sorted(expected.items()))
    assert list(got) == sorted(got)
    assert pattern.startswith("nosuch") or got


def test_group_only_gpu_nodes_under_a_host_uid_of_its_own(make_kernel, who, fake):
    """GPU nodes root:video 0660 (as some distributions make them), for a root tenant whose
    kernel runs on a host uid of its own (user_namespace.host_uid: subordinate): root opened
    them by ownership; the kernel keeps their group as a supplementary group, so the allowed
    GPU and the shared nodes still open, while Landlock still refuses the GPU not granted."""
    if who is not None:
        pytest.skip("user_namespace.host_uid: subordinate needs a root launcher")
    import grp

    try:
        video = grp.getgrnam("video").gr_gid
    except KeyError:
        video = 44
    d = _mkdtemp("sbx-groupdev-")
    try:
        nodes = {n: os.path.join(d, n) for n in ("nvidia0", "nvidia1", "nvidiactl", "nvidia-uvm")}
        for p in nodes.values():
            _mknod(p)
            os.chown(p, 0, video)
            os.chmod(p, 0o660)
        data = {"extends": "free", "user_namespace": {"host_uid": "subordinate"},
                "filesystem": {"readable": readable_with(d)},
                "accelerators": {"gpu": {"enabled": True, "devices": [0], "device_pattern": os.path.join(d, "nvidia{index}"),
                                         "shared_nodes": [nodes["nvidiactl"], nodes["nvidia-uvm"]],
                                         "caps_dir": fake.p("nvidia-caps"), "capabilities_root": fake.p("capabilities")},
                                 "tpu": fake.tpu_section()}}
        kernelutil.write_profile("acc-gpu-group", json.dumps(data, indent=1))
        k = make_kernel("acc-gpu-group", user=who)
        paths = list(nodes.values())
        opens = [nodes["nvidia0"], nodes["nvidiactl"], nodes["nvidia-uvm"]]
        expect(probe(k, paths), opens, [nodes["nvidia1"]])
        expect(probe_subprocess(k, paths), opens, [nodes["nvidia1"]])
        r = k.ok("import os; print('IDS', os.getuid(), sorted(os.getgroups()))")
        assert r.stdout.split("IDS", 1)[1].split()[0] == "0", r.stdout
    finally:
        shutil.rmtree(d, ignore_errors=True)
