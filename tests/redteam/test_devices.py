"""Devices: a GPU the profile does not list (after changing CUDA_VISIBLE_DEVICES), a device
node created to alias a denied one, the host's block device, the kernel log (/dev/kmsg),
physical memory (/dev/mem). The effect: an fd that reads (or writes) the device."""

from __future__ import annotations

import json
import os
import shutil
import stat
import tempfile

import kernelutil
import pytest
from testenv import IS_ROOT
from rtutil import attempt, probe, start, stop

pytestmark = pytest.mark.redteam


def _root_block_device() -> str | None:
    st = os.stat("/")
    try:
        with open(f"/sys/dev/block/{os.major(st.st_dev)}:{os.minor(st.st_dev)}/uevent") as fh:
            name = dict(line.strip().split("=", 1) for line in fh if "=" in line).get("DEVNAME")
    except OSError:
        return None
    return f"/dev/{name}" if name and os.path.exists(f"/dev/{name}") else None


OPEN = r"""
import os
def rd(path, n=512, flags=0):
    fd = os.open(path, os.O_RDONLY | flags)
    try:
        return "read %d bytes" % len(os.read(fd, n))
    finally:
        os.close(fd)
def wr(path, data):
    fd = os.open(path, os.O_WRONLY)
    try:
        return "wrote %d bytes" % os.write(fd, data)
    finally:
        os.close(fd)
"""


def _host_can_read(path: str) -> None:
    """Skip where the host itself (root, outside any sandbox) cannot read `path`: the attempt
    would then prove nothing about the sandbox."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        os.close(fd)
    except OSError as e:
        pytest.skip(f"{path} cannot be opened even outside the sandbox here ({e.strerror})")


def _effect(result) -> bool:
    return str(result).startswith(("read", "wrote"))


@attempt("mount_namespace+capabilities")
def test_read_host_block_device(pool, who):
    """The raw disk under / holds every tenant's files: reading it bypasses every path rule."""
    dev = _root_block_device()
    if dev is None:
        pytest.skip("no block device backs / here (overlay or tmpfs root)")
    _host_can_read(dev)
    k = pool.get("free", who)
    res = probe(k, OPEN + f"rt_out({{'read': rt_try(lambda: rd({dev!r}))}})")
    assert not _effect(res["read"]), f"the host's block device {dev} was read from a cell: {res}"


@attempt("capabilities")
def test_read_kernel_log_dev_kmsg(pool, who):
    _host_can_read("/dev/kmsg")
    k = pool.get("free", who)
    res = probe(k, OPEN + "rt_out({'read': rt_try(lambda: rd('/dev/kmsg', 8192, os.O_NONBLOCK))})")
    assert not _effect(res["read"]), res


@attempt("mount_namespace")
def test_write_kernel_log_dev_kmsg(pool, who):
    k = pool.get("free", who)
    res = probe(k, OPEN + "rt_out({'write': rt_try(lambda: wr('/dev/kmsg', b'<4>sandbox-kernel redteam: forged host log line'))})")
    assert not _effect(res["write"]), res


@attempt("capabilities+mount_namespace")
def test_read_physical_memory(pool, who):
    if not os.path.exists("/dev/mem"):
        pytest.skip("this machine has no /dev/mem")
    k = pool.get("free", who)
    res = probe(k, OPEN + "rt_out({'read': rt_try(lambda: rd('/dev/mem'))})")
    assert not _effect(res["read"]), res


@attempt("capabilities+mount_namespace")
def test_mknod_alias_of_host_disk(pool, who):
    """A block device node made in the working directory with the disk's major:minor."""
    dev = _root_block_device()
    if dev is None:
        pytest.skip("no block device backs / here")
    _host_can_read(dev)
    rdev = os.stat(dev).st_rdev
    k = pool.get("free", who)
    res = probe(k, OPEN + f"""
import stat
alias = os.path.join(os.getcwd(), "rt-disk-alias")
out = {{"mknod": rt_try(lambda: os.mknod(alias, 0o600 | stat.S_IFBLK, {rdev}))}}
if out["mknod"] == "ok":
    out["read"] = rt_try(lambda: rd(alias))
    os.unlink(alias)
rt_out(out)
""")
    assert not _effect(res.get("read")), f"a device node made in a cell read the host's disk: {res}"


# --------------------------------------------------------------------------- GPUs


@pytest.fixture(scope="module")
def fake_gpus(mwho):
    """GPU 0 allowed, GPU 1 present but not listed: fake nodes (/dev/null's major:minor) in a
    directory the tenant cannot write, as tests/layers/test_accelerators.py builds them."""
    if not IS_ROOT:
        pytest.skip("fake device nodes need root (mknod)")
    d = tempfile.mkdtemp(prefix="sbx-rt-gpu-", dir="/var/tmp")
    os.chmod(d, 0o755)
    for n in ("nvidia0", "nvidia1", "nvidiactl", "nvidia-uvm"):
        os.mknod(os.path.join(d, n), 0o666 | stat.S_IFCHR, os.makedev(1, 3))
        os.chmod(os.path.join(d, n), 0o666)
    kernelutil.write_profile("rt-gpu", json.dumps({
        "extends": "free",
        "accelerators": {"gpu": {"enabled": True, "devices": [0], "device_pattern": os.path.join(d, "nvidia{index}"),
                                 "shared_nodes": [os.path.join(d, "nvidiactl"), os.path.join(d, "nvidia-uvm")],
                                 "caps_dir": os.path.join(d, "nvidia-caps"),
                                 "capabilities_root": os.path.join(d, "capabilities")}}}))
    k = start("rt-gpu", mwho)
    yield {"kernel": k, "dir": d, "who": mwho}
    stop(k)
    shutil.rmtree(d, ignore_errors=True)


@attempt("landlock")
def test_open_unlisted_gpu_after_changing_cuda_visible_devices(fake_gpus):
    d = fake_gpus["dir"]
    res = probe(fake_gpus["kernel"], OPEN + f"""
os.environ["CUDA_VISIBLE_DEVICES"] = "0,1"
def rw(p):
    fd = os.open(p, os.O_RDWR)
    os.close(fd)
    return "opened read-write"
rt_out({{"allowed": rt_try(lambda: rw({os.path.join(d, 'nvidia0')!r})),
         "unlisted": rt_try(lambda: rw({os.path.join(d, 'nvidia1')!r}))}})
""")
    assert res["allowed"] == "opened read-write", f"the listed GPU must open (control): {res}"
    assert res["unlisted"] != "opened read-write", f"a GPU the profile does not list was opened: {res}"


@attempt("capabilities+landlock")
def test_mknod_alias_of_unlisted_gpu(fake_gpus):
    d = fake_gpus["dir"]
    rdev = os.stat(os.path.join(d, "nvidia1")).st_rdev
    res = probe(fake_gpus["kernel"], f"""
import os, stat
alias = os.path.join(os.getcwd(), "rt-gpu-alias")
out = {{"mknod": rt_try(lambda: os.mknod(alias, 0o666 | stat.S_IFCHR, {rdev}))}}
if out["mknod"] == "ok":
    out["open"] = rt_try(lambda: os.close(os.open(alias, os.O_RDWR)))
    os.unlink(alias)
rt_out(out)
""")
    assert res.get("open") != "ok", f"an alias node of an unlisted GPU opened: {res}"
