"""Red-team attempts against kernels handed out by the warm pool (sandbox_kernel/pool.py, docs/pool.md).

A pooled kernel was started before anyone asked for it and handed out later: each attempt
here is one of the suite's (imports, network, exec, devices, another kernel's connection
file), made from a kernel that `pooled_from` says came from the pool, as root and as the
ordinary user. The effect must not happen, exactly as for a cold start.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import poolutil
import pytest
from rtutil import attempt, probe

sys.path.insert(0, str(Path(__file__).parent))
from test_devices import OPEN, _effect, _host_can_read, _root_block_device  # noqa: E402
from test_exec import SETUP, _cleanup, _ran  # noqa: E402


@pytest.fixture(scope="module")
def pooled_pair(mwho):
    """A cold kernel B and a pooled kernel A of profile free (same kernelspec, uid, HOME and
    working directory: one pool key), and one of profile offline (network mode none)."""
    poolutil.reset_pool()
    conn = poolutil.connection_dir(mwho)  # as Jupyter's runtime directory: not one the tenant writes
    kernels = poolutil.PooledKernels(poolutil.pooled_spec("free", mwho, suffix="-rt"), user=mwho, conn_dir=conn)
    offline = poolutil.PooledKernels(poolutil.pooled_spec("offline", mwho, suffix="-rt"), user=mwho, conn_dir=conn)
    try:
        b = kernels.start()  # cold; arms the pool
        assert poolutil.wait_ready(1)
        a = kernels.start()
        assert poolutil.pooled_from(a), "kernel A did not come from the pool"
        offline.start()
        assert poolutil.wait_ready(1, keys=2)  # offline's own, not only free's refill after A
        off = offline.start()
        assert poolutil.pooled_from(off), "the offline kernel did not come from the pool"
        info = json.loads(open(b.km.connection_file).read())
        yield {"a": a, "b": b, "offline": off, "key": info["key"], "cwd": kernels.cwd}
    finally:
        kernels.close()
        offline.close()
        poolutil.reset_pool()
        shutil.rmtree(conn, ignore_errors=True)


@attempt("mount_namespace")
def test_pooled_kernel_reads_another_kernels_connection_file(pooled_pair):
    p = pooled_pair
    res = probe(p["a"], f"rt_out({{'read': rt_try(lambda: open({p['b'].km.connection_file!r}).read())}})")
    assert p["key"] not in str(res["read"]), "the pooled kernel read another kernel's HMAC key"


@attempt("mount_namespace")
def test_pooled_kernel_reads_the_pools_connection_files(pooled_pair):
    """The pool keeps a kernel ready for the same key meanwhile: its file (and key) stay hidden."""
    p = pooled_pair
    assert poolutil.wait_ready(1)
    from sandbox_kernel import pool as pool_mod

    files = [e.km.connection_file for lst in pool_mod.get_pool().entries.values() for e in lst if e.state == "ready"]
    keys = [json.loads(open(f).read())["key"] for f in files]
    assert files
    res = probe(p["a"], f"rt_out({{'read': [rt_try(lambda f=f: open(f).read()) for f in {files!r}]}})")
    assert not any(k in str(res["read"]) for k in keys), "the pooled kernel read a waiting pooled kernel's key"


@attempt("seccomp")
def test_pooled_offline_kernel_connects_out(pooled_pair, listener):
    res = probe(pooled_pair["offline"], f"""
import socket
def go():
    s = socket.socket()
    s.settimeout(5)
    s.connect(("127.0.0.1", {listener.port}))
rt_out({{'connect': rt_try(go)}})
""")
    assert listener.accepted == 0, f"a pooled offline kernel reached a host listener: {res}"


@attempt("import_guard", hard=False)
def test_pooled_kernel_imports_a_denied_module(pooled_pair):
    """A module the profile denies (xmrig), planted in the working directory: its code must not run."""
    cwd = pooled_pair["cwd"]
    mark = os.path.join(cwd, f"rt-imported-{os.urandom(4).hex()}")
    r = pooled_pair["a"].run(f"""
open("xmrig.py", "w").write("open({mark!r}, 'w').close()")
import importlib, sys
sys.path.insert(0, "")
importlib.invalidate_caches()
importlib.import_module("xmrig")
""")
    try:
        assert r.status == "error", r
        assert not os.path.exists(mark), "a denied module's code ran in a pooled kernel"
    finally:
        for f in (mark, os.path.join(cwd, "xmrig.py")):
            poolutil.remove(f)


@attempt("mount_namespace")
def test_pooled_kernel_execs_a_program_copied_into_cwd(pooled_pair):
    res = probe(pooled_pair["a"], SETUP.format(place="cwd") + """
dst = plant("/usr/bin/touch", f"rt-tool-{tag}")
res["run"] = run([dst, mark])
cleanup(dst)
rt_out(res)
""")
    try:
        assert res["copy"] == "ok", res
        assert not _ran(res), f"a program copied into the working directory ran: {res}"
    finally:
        _cleanup(res)


@attempt("mount_namespace+capabilities")
def test_pooled_kernel_reads_the_host_disk(pooled_pair):
    dev = _root_block_device()
    if dev is None:
        pytest.skip("no block device backs / here (overlay or tmpfs root)")
    _host_can_read(dev)
    res = probe(pooled_pair["a"], OPEN + f"rt_out({{'read': rt_try(lambda: rd({dev!r}))}})")
    assert not _effect(res["read"]), f"the host's block device {dev} was read from a pooled kernel: {res}"


@attempt("capabilities+mount_namespace")
def test_pooled_kernel_reads_physical_memory(pooled_pair):
    if not os.path.exists("/dev/mem"):
        pytest.skip("this machine has no /dev/mem")
    res = probe(pooled_pair["a"], OPEN + "rt_out({'read': rt_try(lambda: rd('/dev/mem'))})")
    assert not _effect(res["read"]), res


@attempt("mount_namespace")
def test_pooled_kernel_writes_the_kernel_log(pooled_pair):
    res = probe(pooled_pair["a"], OPEN + "rt_out({'write': rt_try(lambda: wr('/dev/kmsg', b'<4>sandbox-kernel redteam: forged host log line from a pooled kernel'))})")
    assert not _effect(res["write"]), res
