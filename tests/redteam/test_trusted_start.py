"""Next-start attacks: code a cell plants so that it runs at
the kernel's next start, before the layers apply; a connection file swapped while the
launcher reads it; `sandbox-kernel run` widening exec for the wrapped command.

Secure behaviour: planted code never runs unconfined (every record it leaves shows
Seccomp 2, NoNewPrivs 1 and a refused connect), or the plant itself is refused; the
launcher never grants what a tenant wrote into the connection file."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import kernelutil
import pytest
from rtutil import (PAYLOAD, Listener, attempt, kill_leftovers, new_cwd, plant_line, probe, records, start, stop,
                    tenant_venv, unconfined)

pytestmark = pytest.mark.redteam


def _plant_and_restart(k, cwd: str, plants: str) -> dict:
    """Plant (cell code `plants` reports {tag: result, tag+'_path': path}), restart the way a user
    does (restart_kernel), then kill the kernel from a cell and restart it as jupyter_client's
    KernelRestarter does. Returns the plant report and the records after each restart."""
    report = probe(k, plants)
    rec_file = os.path.join(cwd, "records.jsonl")
    k.restart()
    after_restart = len(records(rec_file))
    k.kc.execute("import os; os.kill(os.getpid(), 9)")
    assert kernelutil.wait_for(lambda: not k.km.is_alive(), timeout=60), "the kernel did not die"
    # what KernelRestarter.poll() calls once it sees the kernel dead (newports only on first start)
    k.km.restart_kernel(now=True, newports=False)
    k.kc.wait_for_ready(timeout=90)
    return {"report": report, "records": records(rec_file), "after_restart": after_restart}


def _record_env(cwd: str, who, port: int) -> dict:
    rec = os.path.join(cwd, "records.jsonl")
    Path(rec + ".py").write_text(PAYLOAD)
    if who is not None:
        os.chown(rec + ".py", who.pw_uid, who.pw_gid)
    return {"SBX_RT_RECORD": rec, "SBX_RT_PORT": str(port)}


PLANT_PTH = """
import sysconfig, os
sp = sysconfig.get_paths()["purelib"]
path = os.path.join(sp, "zz-redteam-plant.pth")
rt_out({{"pth": rt_try(lambda: rt_write(path, {line!r} + "\\n")), "pth_path": path, "prefix": __import__("sys").prefix}})
"""


@pytest.fixture(scope="module")
def venv_plant(mwho):
    """A kernel whose environment lies inside the tenant's working directory (as scripts/setup.sh
    makes .venv inside the checkout): a .pth is planted into its site-packages."""
    listener = Listener()
    cwd = new_cwd(mwho)
    env = _record_env(cwd, mwho, listener.port)
    py = tenant_venv(cwd, mwho)
    out = {"listener": listener}
    try:
        k = start("free", mwho, cwd=cwd, env=env, python=py, spec_suffix="-venv")
    except RuntimeError as e:  # the trusted start refused a tenant-writable environment: the plant cannot run
        out["refused_start"] = str(e)
        yield out
        listener.close()
        shutil.rmtree(cwd, ignore_errors=True)
        return
    try:
        out.update(_plant_and_restart(k, cwd, PLANT_PTH.format(line=plant_line("pth"))))
        yield out
    finally:
        stop(k)
        listener.close()
        shutil.rmtree(cwd, ignore_errors=True)


PLANT_SHARED = """
import sysconfig, os
res = {{}}
std = sysconfig.get_paths()["stdlib"]  # the base interpreter's standard library
res["sitecustomize_path"] = os.path.join(std, "sitecustomize.py")
res["sitecustomize_preexisting"] = os.path.exists(res["sitecustomize_path"])
if not res["sitecustomize_preexisting"]:
    res["sitecustomize"] = rt_try(lambda: rt_write(res["sitecustomize_path"], {site!r} + "\\n"))
start = os.path.expanduser("~/.ipython/profile_default/startup")
res["ipython_startup_path"] = os.path.join(start, "99-redteam-plant.py")
res["ipython_startup"] = rt_try(lambda: (os.makedirs(start, exist_ok=True), rt_write(res["ipython_startup_path"], {ipy!r} + "\\n"))[1])
rt_out(res)
"""


@pytest.fixture(scope="module")
def shared_plant(mwho):
    """A kernel of this environment: sitecustomize.py into the base interpreter's stdlib (writable
    for root, whose home holds pyenv here) and an IPython start-up file into ~/.ipython."""
    listener = Listener()
    cwd = new_cwd(mwho)
    env = _record_env(cwd, mwho, listener.port)
    k = start("free", mwho, cwd=cwd, env=env, spec_suffix="-plant")
    report = {}
    try:
        out = _plant_and_restart(k, cwd, PLANT_SHARED.format(site=plant_line("sitecustomize"),
                                                             ipy=plant_line("ipython_startup")))
        report = out["report"]
        out["listener"] = listener
        yield out
    finally:
        stop(k)
        listener.close()
        if report.get("sitecustomize") == "ok" and not report.get("sitecustomize_preexisting"):
            _remove_module(report["sitecustomize_path"])
        if report.get("ipython_startup") == "ok":
            _remove_module(report["ipython_startup_path"])
        shutil.rmtree(cwd, ignore_errors=True)


def _remove_module(path: str) -> None:
    p = Path(path)
    p.unlink(missing_ok=True)
    for pyc in (p.parent / "__pycache__").glob(p.stem + ".*.pyc"):
        pyc.unlink(missing_ok=True)


def _check_plant(out: dict, tag: str, which: str) -> None:
    if "refused_start" in out:
        assert "trusted" in out["refused_start"] or "writable" in out["refused_start"], out["refused_start"]
        return  # refused to start from a tenant-writable environment: nothing planted ran
    if out["report"].get(tag) != "ok":
        return  # the plant itself was refused
    recs = [r for r in out["records"] if r["tag"] == tag]
    recs = recs[:out["after_restart"]] if which == "restart" else recs
    bad = [r for r in recs if unconfined(r)]
    assert not bad, f"planted {tag} ran unconfined at the next start ({len(bad)} times), e.g. {bad[0]}"


@pytest.mark.parametrize("which", ["restart", "kill9-restarter"])
@attempt("trusted_start")
def test_pth_in_environment_runs_unconfined_at_next_start(venv_plant, which):
    _check_plant(venv_plant, "pth", which)


@pytest.mark.parametrize("which", ["restart", "kill9-restarter"])
@attempt("trusted_start")
def test_sitecustomize_in_base_stdlib_runs_unconfined_at_next_start(shared_plant, which):
    _check_plant(shared_plant, "sitecustomize", which)


@pytest.mark.parametrize("which", ["restart", "kill9-restarter"])
@attempt("trusted_start")
def test_ipython_startup_file_runs_unconfined_at_next_start(shared_plant, which):
    _check_plant(shared_plant, "ipython_startup", which)


# --------------------------------------------------------------------------- connection file

SWAPPER = r'''
import json, os, sys, time
cf, port, log = sys.argv[1], int(sys.argv[2]), sys.argv[3]
def note(**kw):
    with open(log, "a") as fh:
        fh.write(json.dumps(kw) + "\n")
note(pid=os.getpid(), event="started")
orig = open(cf).read()
evil = json.loads(orig)
evil["hb_port"] = port  # one of the kernel's ports, as far as the launcher can tell
known = set(os.listdir("/proc"))
deadline = time.time() + 300
target = None
while time.time() < deadline:
    if target is None:
        for pid in os.listdir("/proc"):
            if not pid.isdigit() or pid in known:
                continue
            try:
                cmd = open(f"/proc/{pid}/cmdline", "rb").read()
            except OSError:
                continue
            if b"\0run\0" in cmd and cf.encode() in cmd:
                target = pid
                with open(cf, "w") as fh:
                    json.dump(evil, fh)
                note(event="swapped", launcher=pid)
                break
    else:
        try:
            cmd = open(f"/proc/{target}/cmdline", "rb").read()
        except OSError:
            cmd = b""
        if b"\0run\0" not in cmd:  # the launcher has exec'd the kernel: put the file back
            with open(cf, "w") as fh:
                fh.write(orig)
            note(event="restored")
            break
    time.sleep(0.0005)
time.sleep(3600)
'''


@attempt("connection_file+pid_namespace+mount_namespace")
def test_connection_file_swapped_by_a_survivor_during_restart(kernels, who, listener):
    """A helper started with start_new_session=True survives the restart, waits for the new
    launcher and swaps the connection file while the launcher reads it, to be granted TCP to
    a port of its choice (the listener)."""
    k = kernels("free", who)
    log = os.path.join(k.cwd, "swapper.log")
    r = probe(k, f"""
        import subprocess, sys
        src = {SWAPPER!r}
        p = subprocess.Popen([sys.executable, "-c", src, {k.km.connection_file!r}, "{listener.port}", {log!r}],
                             start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        import time
        for _ in range(400):
            if __import__("os").path.exists({log!r}):
                break
            time.sleep(0.05)
        rt_out({{"helper": p.pid}})
        """)
    helper = r["helper"]
    try:
        original = Path(k.km.connection_file).read_text()
        k.restart()
        got = probe(k, f"""
            import socket
            rt_out({{"connect": rt_try(lambda: socket.create_connection(("127.0.0.1", {listener.port}), timeout=3).close())}})
            """)
        events = [json.loads(line)["event"] for line in Path(log).read_text().splitlines()] if os.path.exists(log) else []
        # The swap is a race the attacker may lose on a loaded machine (events say whether it
        # happened); the assertion is the secure outcome either way.
        assert got["connect"] != "ok" and listener.accepted == 0, (
            f"the restarted kernel reached a port the tenant wrote into its connection file (helper: {events})")
        assert json.loads(Path(k.km.connection_file).read_text()) == json.loads(original) or "restored" not in events
    finally:
        kill_leftovers([helper])


# --------------------------------------------------------------------------- sandbox-kernel run

def _launcher_cmd(entry: str) -> list[str]:
    """`sandbox-kernel run --profile offline` as the console script, or as the README's terminal
    recipe writes it (the kernelspec's launch path: boot.py where it exists)."""
    if entry == "console-script":
        return [os.path.join(os.path.dirname(sys.executable), "sandbox-kernel"), "run", "--profile", "offline"]
    try:
        from sandbox_kernel.install import launch_argv
    except ImportError:
        return [sys.executable, "-I", "-m", "sandbox_kernel.cli", "run", "--profile", "offline"]
    return list(launch_argv("offline"))


@pytest.mark.parametrize("entry", ["console-script", "readme-terminal"])
@attempt("mount_namespace+trusted_start")
def test_run_offline_wraps_bash_and_runs_ls(who, entry):
    """`sandbox-kernel run --profile offline -- bash -c 'ls /'`: offline lets only this
    environment's Python run; neither bash nor ls may run."""
    cwd = new_cwd(who)
    cmd = _launcher_cmd(entry)
    script = "touch bash-ran; ls / > ls-out"
    cmd = cmd + ["--", "bash", "-c", script]
    env = dict(os.environ)
    if who is not None:
        cmd = ["setpriv", f"--reuid={who.pw_uid}", f"--regid={who.pw_gid}", "--init-groups", "--"] + cmd
        env.update(HOME=who.pw_dir, USER=who.pw_name, LOGNAME=who.pw_name)
        env.pop("TMPDIR", None)
    try:
        p = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=120)
        listing = Path(cwd, "ls-out").read_text() if Path(cwd, "ls-out").exists() else ""
        assert "usr" not in listing.split(), f"ls ran under offline (it listed {len(listing.split())} entries of /)"
        assert not Path(cwd, "bash-ran").exists(), f"bash ran under offline (exec.allow is only {{python}})\n{p.stderr}"
    finally:
        shutil.rmtree(cwd, ignore_errors=True)


@attempt("trusted_start+mount_namespace")
def test_the_namespaces_init_program_cannot_be_replaced_for_the_next_start(kernels, who):
    """`sandbox-kernel-init` (sandbox_kernel/init_helper.py) runs as pid 1 of every start's PID
    namespace, outside Landlock and seccomp: whoever writes it runs code there. A cell cannot
    write, replace, chmod or remove it (the kernelspec's directory is read-only in the kernel's
    view); and a launcher whose init program the launching uid could write refuses to start
    (trusted_start), as it does for the policy cache beside it."""
    from sandbox_kernel import init_helper

    if kernelutil.built_init_helper() is None:
        pytest.skip("no C compiler here: the kernelspec has no sandbox-kernel-init")
    k = kernels("free", who)
    spec_dir = k.km.kernel_spec.resource_dir
    helper = os.path.join(spec_dir, init_helper.FILE_NAME)
    before = Path(helper).read_bytes()
    r = probe(k, f"""
        import os
        helper = {helper!r}
        def swap():
            tmp = os.path.join(os.getcwd(), "planted-init")
            rt_write(tmp, "#!/bin/sh\\n", "w")
            os.replace(tmp, helper)
        rt_out({{"pid1": open("/proc/1/cmdline").read().split(chr(0))[0],
                "write": rt_try(lambda: rt_write(helper, "x", "r+")), "replace": rt_try(swap),
                "chmod": rt_try(lambda: os.chmod(helper, 0o777)), "unlink": rt_try(lambda: os.unlink(helper)),
                "plant": rt_try(lambda: rt_write(os.path.join(os.path.dirname(helper), "x"), "x"))}})
        """)
    assert r["pid1"] == init_helper.FILE_NAME, r  # the program is in use: this kernel's init
    # (EXDEV: a rename across the view's mounts; ETXTBSY: as root, opening the program that this
    # kernel's init runs for writing fails on that before the read-only mount is asked)
    for what in ("write", "replace", "chmod", "unlink", "plant"):
        assert r[what] in ("EROFS", "EACCES", "EPERM", "EXDEV") + (("ETXTBSY",) if what == "write" else ()), (what, r)
    assert Path(helper).read_bytes() == before and (os.stat(helper).st_mode & 0o777) == 0o755
    if who is None:
        return  # (root passes every permission check; only the view keeps it out, as above)
    d = kernelutil.PREFIX / f"writable-init-{os.urandom(4).hex()}"  # installed where the tenant's uid may write it
    d.mkdir(mode=0o755)
    try:
        shutil.copy(os.path.join(spec_dir, "policy-cache.json"), d / "policy-cache.json")
        shutil.copy(helper, d / init_helper.FILE_NAME)
        os.chown(d / init_helper.FILE_NAME, who.pw_uid, who.pw_gid)
        p = kernelutil.run_launcher("free", "/usr/bin/true", user=who.pw_name, cwd=kernelutil.user_workdir(who),
                                    policy_cache=str(d / "policy-cache.json"))
        assert p.returncode != 0 and str(d / init_helper.FILE_NAME) in p.stderr and "trusted_start" in p.stderr, \
            p.stderr
    finally:
        shutil.rmtree(d, ignore_errors=True)
