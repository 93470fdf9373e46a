"""The warm pool of sandboxed kernels (sandbox_kernel/pool.py, docs/pool.md).

Every kernel here goes through jupyter_client and the kernelspec's argv (the launcher and its
layers), as root and as the ordinary user (`who`); the pool is the process-wide one a Jupyter
server would have.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import textwrap
import threading

import kernelutil
import poolutil
import pytest
from testenv import TESTS

from sandbox_kernel import install
from sandbox_kernel import pool as pool_mod

REPORT = r'''
import json as _j, os as _o, resource as _r, subprocess as _s, sys as _y
from sandbox_kernel.doctor import render as _render
_k = get_ipython().kernel
_out = {"sandbox": _render(_k.policy, _k.layer_status), "cwd": _o.getcwd(), "uid": [_o.getuid(), _o.geteuid()]}
_p = _s.run([_y.executable, "-m", "sandbox_kernel.cli", "doctor", "--json", "--no-try"], capture_output=True,
            text=True, timeout=120)
_out["doctor"] = _j.loads(_p.stdout) if _p.returncode == 0 and _p.stdout.strip() else "exit %d: %s" % (_p.returncode, _p.stderr[-500:])
_out["status"] = {l.split(":")[0]: l.split(":", 1)[1].strip() for l in open("/proc/self/status")
                  if l.split(":")[0] in ("Uid", "Gid", "Groups", "NoNewPrivs", "Seccomp", "Seccomp_filters", "CapInh",
                                         "CapPrm", "CapEff", "CapBnd", "CapAmb")}
_m = []
for _l in open("/proc/self/mountinfo"):
    _f = _l.split()
    _d = _f.index("-")
    _m.append(" ".join([_f[3], _f[4], _f[5]] + _f[_d + 1:]))
_out["mounts"] = sorted(_m)
_out["rlimits"] = {n: _r.getrlimit(getattr(_r, n)) for n in sorted(dir(_r)) if n.startswith("RLIMIT_")}
_out["env"] = dict(_o.environ)
_out["session"] = globals().get("__session__")
print("REPORT " + _j.dumps(_out, sort_keys=True))
'''


def report(k) -> dict:
    r = k.ok(REPORT, timeout=180)
    line = [x for x in r.stdout.splitlines() if x.startswith("REPORT ")][-1]
    return json.loads(line[len("REPORT "):])


def normalised(rep: dict, k) -> str:
    """What differs between any two cold starts of the same request: the kernel's ports, its
    ids (Jupyter's, the pool's), its connection file's name, its cgroup's name (id, pid, start
    time); the number of Landlock rules (grant_except grants a directory holding an excluded
    path entry by entry, so the count follows the host's directory contents at the start, e.g.
    device nodes in /dev that come and go: the rules themselves are the profile's); and the
    pool's own mark (SANDBOX_KERNEL_POOLED, set at the hand-off)."""
    rep = dict(rep)
    env = dict(rep.pop("env"))
    env.pop("SANDBOX_KERNEL_POOLED", None)
    env["SANDBOX_KERNEL_ID"] = "<id>"  # checked against the manager's kernel id by the test
    rep["env"] = env
    text = json.dumps(rep, sort_keys=True)
    info = k.km.get_connection_info()
    for name in pool_mod.PORT_NAMES:
        text = re.sub(rf"\b{info[name]}\b", "<port>", text)
    text = poolutil.UUID.sub("<id>", text)
    text = re.sub(r"kernel-[0-9a-f]{12}\.json", "kernel-<id>.json", text)
    text = re.sub(r"/tmp[a-z0-9_]{8}\.json", "/<conn>.json", text)
    text = re.sub(r"kernel-[A-Za-z0-9_]+-\d+-\d+", "kernel-<group>", text)
    text = re.sub(r"\b\d+ path rules\b", "<n> path rules", text)
    text = re.sub(r"SANDBOX_KERNEL_ID='[A-Za-z0-9_-]*'", "SANDBOX_KERNEL_ID='<id>'", text)
    return text


def assert_same(x: str, y: str) -> None:
    """Equal normalised reports; otherwise each differing leaf, by path."""
    if x == y:
        return
    diffs = []

    def walk(a, b, path):
        if isinstance(a, dict) and isinstance(b, dict):
            for key in sorted(set(a) | set(b)):
                walk(a.get(key, "<missing>"), b.get(key, "<missing>"), f"{path}.{key}")
        elif isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
            for i, (u, v) in enumerate(zip(a, b)):
                walk(u, v, f"{path}[{i}]")
        elif isinstance(a, list) and isinstance(b, list):
            diffs.append(f"{path}: only cold {[x for x in a if x not in b]!r}, only pooled {[x for x in b if x not in a]!r}")
        elif a != b:
            diffs.append(f"{path}: cold {str(a)[:400]!r} != pooled {str(b)[:400]!r}")

    walk(json.loads(x), json.loads(y), "")
    raise AssertionError("the pooled kernel's rules differ from the cold start's:\n" + "\n".join(diffs[:20]))


@pytest.fixture
def fresh_pool():
    poolutil.reset_pool()
    yield pool_mod.get_pool()
    poolutil.reset_pool()


@pytest.fixture
def pooled(who, fresh_pool):
    """PooledKernels(spec, user=who, ...) for the test; every kernel shut down after it."""
    made = []

    def make(spec, **kw):
        p = poolutil.PooledKernels(spec, user=who, **kw)
        made.append(p)
        return p

    yield make
    for p in made:
        p.close()


def test_install_writes_pooled_kernelspecs(tmp_path):
    name, spec = install.prepare("free", pool=3)
    assert spec["metadata"]["kernel_provisioner"] == {"provisioner_name": "sandbox-pool", "config": {"pool_size": 3}}
    assert spec["argv"] == install.kernel_argv("free")  # the same launcher and layers
    _, plain = install.prepare("free")
    assert "kernel_provisioner" not in plain["metadata"]  # without the flag nothing changes
    r = subprocess.run([sys.executable, "-m", "sandbox_kernel.cli", "install", "--profile", "free", "--pool", "2",
                        "--prefix", str(tmp_path)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    spec = json.loads((tmp_path / "share/jupyter/kernels/sandbox-free/kernel.json").read_text())
    assert spec["metadata"]["kernel_provisioner"]["config"]["pool_size"] == 2
    bad = subprocess.run([sys.executable, "-m", "sandbox_kernel.cli", "install", "--pool", "-1", "--prefix",
                          str(tmp_path)], capture_output=True, text=True)
    assert bad.returncode == 2 and "--pool" in bad.stderr and "Traceback" not in bad.stderr
    from jupyter_client.provisioning import KernelProvisionerFactory as KPF

    assert "sandbox-pool" in KPF.instance().provisioners  # the entry point is registered


@pytest.mark.kernel
def test_pooled_kernel_rules_equal_a_cold_start(pooled, who):
    """A pooled kernel, once handed out, has exactly the rules of a cold start of the same request
    (%sandbox, doctor --json, the process's seccomp/capability state, its mount table, its
    rlimits, its environment); the hand-off applied the kernel id, the notebook's path and cwd."""
    spec = poolutil.pooled_spec("default", who)
    p = pooled(spec)
    nb = os.path.join(p.cwd, "analysis.ipynb")
    cold = p.start(env={"JPY_SESSION_NAME": nb})
    assert poolutil.pooled_from(cold) == ""  # the first start of a key is cold; it arms the pool
    assert poolutil.wait_ready(1), pool_mod.get_pool().stats
    warm = p.start(env={"JPY_SESSION_NAME": nb})
    assert poolutil.pooled_from(warm), "the second start was not handed out of the pool"
    a, b = report(cold), report(warm)
    assert b["env"]["SANDBOX_KERNEL_ID"] == warm.km.kernel_id
    assert b["env"]["JPY_SESSION_NAME"] == nb and b["session"] == nb
    assert b["env"]["SANDBOX_KERNEL_POOLED"] == poolutil.pooled_from(warm)
    assert b["cwd"] == a["cwd"] == os.path.realpath(p.cwd)
    assert "SANDBOX_KERNEL_POOL" not in b["env"]
    assert_same(normalised(a, cold), normalised(b, warm))
    # the comparison can fail: a cold start of the same kernelspec in another directory differs
    other = p.start(cwd=kernelutil.user_workdir(who) if who else tempfile.mkdtemp(prefix="sbx-pool-other-"))
    assert poolutil.pooled_from(other) == ""
    assert normalised(report(other), other) != normalised(a, cold)


@pytest.mark.kernel
def test_handed_out_once_and_restart_takes_a_fresh_one(pooled, who):
    spec = poolutil.pooled_spec("free", who)
    p = pooled(spec)
    p.start()
    assert poolutil.wait_ready(1)
    k = p.start()
    first = poolutil.pooled_from(k)
    assert first
    pid = k.km.provisioner.pid
    # the kernel takes no second hand-off (only the pool sent one, before anyone else had the key)
    sock = k.km.connect_control()
    try:
        k.km.session.send(sock, "sandbox_handoff_request", {"kernel_id": "someone-else", "env": {}})
        assert sock.poll(30000)
        _, reply = k.km.session.recv(sock, mode=0)
    finally:
        sock.close(linger=0)
    assert reply["content"]["status"] == "error" and "already handed out" in reply["content"]["evalue"]
    assert k.ok("import os; print(os.environ['SANDBOX_KERNEL_ID'])").stdout.strip() == k.km.kernel_id
    k.ok("marker = 42")
    assert poolutil.wait_ready(1)
    k.km.restart_kernel(now=True)
    poolutil.reconnect(k)
    second = poolutil.pooled_from(k)
    assert second and second != first
    assert k.km.provisioner.pid != pid and poolutil.wait_gone([pid])
    assert k.ok("print('marker' in globals())").stdout.strip() == "False"
    # a cold kernel refuses any hand-off
    cold_sock = p.started[0].km.connect_control()
    try:
        p.started[0].km.session.send(cold_sock, "sandbox_handoff_request", {"kernel_id": "x", "env": {}})
        assert cold_sock.poll(30000)
        _, reply = p.started[0].km.session.recv(cold_sock, mode=0)
    finally:
        cold_sock.close(linger=0)
    assert reply["content"]["status"] == "error" and "not started by a pool" in reply["content"]["evalue"]
    # a waiting kernel that someone used before its hand-off (its key leaked) is never handed out
    assert poolutil.wait_ready(1)
    (used,) = [e for lst in pool_mod.get_pool().entries.values() for e in lst if e.state == "ready"]
    used_pid = used.km.provisioner.pid
    kc = used.km.client()
    kc.start_channels()
    try:
        kc.execute_interactive("planted = 1", timeout=60)
    finally:
        kc.stop_channels()
    k3 = p.start()
    assert poolutil.pooled_from(k3) != used.pool_id
    assert poolutil.wait_gone([used_pid]), "the used pooled kernel was not shut down"
    assert k3.ok("print('planted' in globals())").stdout.strip() == "False"


@pytest.mark.kernel
def test_concurrent_requests_never_get_the_same_kernel(pooled, who):
    spec = poolutil.pooled_spec("free", who, size=2)
    p = pooled(spec)
    p.start()
    assert poolutil.wait_ready(2)
    got, errors = [], []

    def one():
        try:
            got.append(p.start())
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=one) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(180)
    assert not errors, errors
    pids = [k.km.provisioner.pid for k in got]
    assert len(set(pids)) == 3, pids
    ids = [poolutil.pooled_from(k) for k in got if poolutil.pooled_from(k)]
    assert len(ids) >= 2 and len(set(ids)) == len(ids), ids
    for k in got:
        assert k.ok("print(1 + 1)").stdout.strip() == "2"


@pytest.mark.kernel
def test_a_policy_or_kernelspec_change_empties_the_pool(pooled, who):
    kernelutil.write_profile("pool-edit", """
        extends: free
        imports:
          deny: [{module: mailbox, category: test}]
    """)
    spec = poolutil.pooled_spec("pool-edit", who)
    p = pooled(spec)
    p.start()
    assert poolutil.wait_ready(1)
    stale = [e.km.provisioner.pid for lst in pool_mod.get_pool().entries.values() for e in lst]
    assert stale
    kernelutil.write_profile("pool-edit", """
        extends: free
        imports:
          deny: [{module: mailbox, category: test}, {module: wave, category: test}]
    """)
    k = p.start()
    assert k.km.provisioner.pid not in stale
    assert poolutil.wait_gone(stale), "the kernel started under the old profile is still running"
    r = k.run("import wave")
    assert r.status == "error" and "wave" in r.evalue  # the new rule is in force
    # the kernelspec itself
    assert poolutil.wait_ready(1)
    stale = [e.km.provisioner.pid for lst in pool_mod.get_pool().entries.values() for e in lst]
    spec_file = kernelutil.SPECS / spec / "kernel.json"
    data = json.loads(spec_file.read_text())
    data["display_name"] += " (edited)"
    spec_file.write_text(json.dumps(data))
    k2 = p.start()
    assert k2.km.provisioner.pid not in stale
    assert poolutil.wait_gone(stale)


@pytest.mark.kernel
def test_another_tenant_never_gets_the_kernel(pooled, who):
    """The pool is keyed by the request's whole environment (HOME, the tenant) and the
    kernelspec (which names the uid the kernel runs as): another tenant's request starts cold."""
    spec = poolutil.pooled_spec("free", who)
    p = pooled(spec)
    p.start(env={"SANDBOX_KERNEL_TENANT": "alice"})
    assert poolutil.wait_ready(1)
    ready = [e.pool_id for lst in pool_mod.get_pool().entries.values() for e in lst]
    bob = p.start(env={"SANDBOX_KERNEL_TENANT": "bob"})
    assert poolutil.pooled_from(bob) == ""
    assert [e.pool_id for lst in pool_mod.get_pool().entries.values() for e in lst if e.pool_id in ready] == ready
    alice = p.start(env={"SANDBOX_KERNEL_TENANT": "alice"})
    assert poolutil.pooled_from(alice) in ready


@pytest.mark.kernel
def test_idle_pooled_kernels_are_culled(pooled, who):
    spec = poolutil.pooled_spec("free", who, cull_idle_after=1.0)
    p = pooled(spec)
    p.start()
    assert poolutil.wait_ready(1)
    pids = [e.km.provisioner.pid for lst in pool_mod.get_pool().entries.values() for e in lst]
    assert poolutil.wait_gone(pids, timeout=60)
    assert kernelutil.wait_for(lambda: not any(pool_mod.get_pool().counts().values()), timeout=10)
    # the key is not refilled until it is asked for again
    assert not kernelutil.wait_for(lambda: any(c["ready"] or c["starting"]
                                                for c in pool_mod.get_pool().counts().values()), timeout=3)


def test_refill_waits_for_a_start_in_progress(fresh_pool):
    """No pooled kernel is started while a cold start is coming up (it would compete with it
    for the CPU), nor within refill_delay of a request."""
    pool = fresh_pool
    pool.refill_delay = 0.0
    started = []
    pool._prestart = lambda entry, t: started.append(entry)  # what would start a kernel
    d = pool_mod._Demand("k", {"resource_dir": None, "env": {}, "cwd": "/", "handoff": [], "raw_env": {},
                               "factory": None})
    pool.demand["k"] = d
    pool.cold_start_began()
    pool._tend()
    assert started == []
    pool.cold_start_ended()
    pool.refill_delay = 3600.0
    pool._tend()
    assert started == []  # a request was just made
    pool.last_request -= 7200
    pool._tend()
    assert len(started) == 1


SERVER = textwrap.dedent("""
    import json, os, sys, time
    sys.path.insert(0, {tests!r})
    import poolutil
    from jupyter_client.manager import KernelManager
    from sandbox_kernel import pool
    k = poolutil.PooledKernels({spec!r}, user={user}, cwd={cwd!r})
    first = k.start()
    assert poolutil.wait_ready(2)
    ids = [e.pool_id for lst in pool.get_pool().entries.values() for e in lst]
    pids = [e.km.provisioner.pid for lst in pool.get_pool().entries.values() for e in lst]
    files = [e.km.connection_file for lst in pool.get_pool().entries.values() for e in lst]
    print(json.dumps({{"ids": ids, "pids": pids + [first.km.provisioner.pid], "files": files}}), flush=True)
    first.kc.stop_channels()
    if sys.argv[1] == "exit":
        sys.exit(0)   # no shutdown of anything: atexit must do it
    time.sleep(600)
""")


@pytest.mark.kernel
@pytest.mark.parametrize("end", ["exit", "SIGKILL"])
def test_nothing_survives_the_server(who, end, tmp_path):
    """When the process that owns the pool ends (exit: atexit; SIGKILL: each kernel's supervisor
    watches it) no pooled kernel survives; after an exit no connection file of one is left."""
    if who is not None:
        spec = poolutil.pooled_spec("free", who, size=2)
        cwd = kernelutil.user_workdir(who)
        user = f"__import__('pwd').getpwnam({who.pw_name!r})"
    else:
        spec = poolutil.pooled_spec("free", None, size=2)
        cwd = str(tmp_path)
        user = "None"
    script = tmp_path / "server.py"
    script.write_text(SERVER.format(tests=str(TESTS), spec=spec, user=user, cwd=cwd))
    info = None
    proc = subprocess.Popen([sys.executable, str(script), end], stdout=subprocess.PIPE, text=True, env=dict(os.environ))
    try:
        line = proc.stdout.readline()
        assert line, "the server script did not report"
        info = json.loads(line)
        assert all(poolutil.alive(p) for p in info["pids"])
        if end == "SIGKILL":
            proc.send_signal(signal.SIGKILL)
        proc.wait(60)
        assert poolutil.wait_gone(info["pids"], timeout=60), [p for p in info["pids"] if poolutil.alive(p)]
        for pool_id in info["ids"]:
            assert poolutil.processes_with_env(pool_id) == []
        assert len(info["files"]) == 2
        if end == "exit":
            assert not [f for f in info["files"] if os.path.exists(f)]
        # (killed outright, a server leaves the connection files of its kernels, pooled or not:
        # nothing of it runs to remove them; docs/pool.md)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for f in (info or {}).get("files", []):
            poolutil.remove(f)


def test_pool_size_per_profile_and_handoff_names():
    from jupyter_client.kernelspec import KernelSpec

    from sandbox_kernel import pool_handoff

    spec = KernelSpec(argv=["x"], display_name="x", language="python",
                      metadata={"sandbox_kernel": {"profile": "research"}})
    prov = pool_mod.SandboxPoolProvisioner(kernel_id="k", kernel_spec=spec, pool_size=2, pool_sizes={"research": 5})
    assert prov._size() == 5
    prov.pool_sizes = {"free": 7}
    assert prov._size() == 2
    # what a start reads can never be applied at the hand-off (it is keyed instead)
    for name in ("PYTHONPATH", "LD_PRELOAD", "HOME", "PATH", "TMPDIR", "SANDBOX_KERNEL_CEILING", "JUPYTER_PATH",
                 "LC_ALL", "CUDA_VISIBLE_DEVICES", ""):
        assert pool_handoff.handoff_refusal(name), name
    assert pool_handoff.handoff_refusal("JPY_SESSION_NAME") is None
    prov.handoff_env = ["JPY_SESSION_NAME", "LD_PRELOAD"]
    assert prov._handoff_names() == ["JPY_SESSION_NAME"]
