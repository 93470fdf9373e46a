"""A refused kernel start tells the notebook user why, in the notebook.

The launcher still refuses (fails closed, nothing of the kernel's command runs); where it
could read the kernel's connection file it then serves the refusal on the kernel's ports
(sandbox_kernel/refusal.py): kernel_info says REFUSED TO START and why, every
execute_request is answered with an `error` naming the reason and executes nothing, the
process stays up (no "Kernel died", no restart loop) until it is shut down. And `doctor` and
`install` name a kernelspec whose profile is gone or invalid (orphaned).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import kernelutil
import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_notebook

from sandbox_kernel import refusal

pytestmark = [pytest.mark.kernel, pytest.mark.slow, pytest.mark.usefixtures("no_orphaned_specs")]


def _start(spec: str, who, cwd: str, env: dict | None = None, ip: str | None = None, transport: str = "tcp"):
    km = kernelutil._UserKernelManager(kernel_name=spec, transport=transport)
    run_env = dict(os.environ)
    if who is not None:
        km.run_as = (who.pw_uid, who.pw_gid)
        # (a private directory, as Jupyter's runtime directory: the launcher refuses one the tenant writes)
        km.connection_file = os.path.join(kernelutil.connection_dir(who), f"kernel-{os.urandom(6).hex()}.json")
        run_env.update(HOME=who.pw_dir, USER=who.pw_name, LOGNAME=who.pw_name)
        run_env.pop("TMPDIR", None)
    if ip:
        km.ip = ip
    run_env.update(env or {})
    log = open(os.path.join(cwd, "launcher.err"), "w")
    km.start_kernel(cwd=cwd, env=run_env, stderr=log)
    kc = km.client()
    kc.start_channels()
    kc.wait_for_ready(timeout=90)
    return km, kc, log


def _refusal(km, kc, cwd: str) -> dict:
    """kernel_info, then a cell that would leave a marker file: what the user sees."""
    info = kc.kernel_info(reply=True, timeout=30)["content"]
    marker = os.path.join(cwd, "ran")
    outputs = []
    reply = kc.execute_interactive(f"open({marker!r}, 'w').write('x')", timeout=30,
                                   output_hook=lambda m: outputs.append((m["msg_type"], m["content"])))["content"]
    second = kc.execute_interactive("print('hello')", timeout=30)["content"]
    return {"info": info, "reply": reply, "second": second, "outputs": outputs, "ran": os.path.exists(marker),
            "alive": km.is_alive(), "pid": km.provisioner.process.pid}


def _stop(km, kc, log) -> int | None:
    kc.shutdown()
    proc = km.provisioner.process
    try:
        rc = proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        rc = None
    kc.stop_channels()
    km.shutdown_kernel(now=True)
    log.close()
    return rc


def _cwd(tmp_path, who) -> str:
    return kernelutil.user_workdir(who) if who is not None else str(tmp_path)


def _check_refused(r: dict, reason: str) -> None:
    info, reply = r["info"], r["reply"]
    assert info["implementation"] == refusal.IMPLEMENTATION and "REFUSED TO START" in info["banner"], info
    assert reason in info["banner"], info["banner"]
    assert reply["status"] == "error" and reply["ename"] == "SandboxStartRefused", reply
    assert reason in reply["evalue"] and "\n" not in reply["evalue"], reply
    kinds = [t for t, _ in r["outputs"]]
    assert "error" in kinds and any(t == "stream" and c["name"] == "stderr" and "refused to start" in c["text"]
                                    for t, c in r["outputs"]), r["outputs"]
    assert not r["ran"], "the refusal kernel executed the cell"
    assert r["second"]["status"] == "error" and r["second"]["execution_count"] == reply["execution_count"] + 1
    assert r["alive"], "the refusal kernel exited"


def test_a_deleted_profile_is_explained_in_the_notebook(tmp_path, who):
    """A kernelspec whose profile was deleted: the notebook gets the reason (not 'No Kernel'),
    no cell runs, the process stays (no restart loop) and exits on shutdown."""
    kernelutil.write_profile("soon-gone", "extends: free\ndescription: deleted below\n")
    spec = kernelutil.install_spec("soon-gone", who.pw_name if who else None)
    (kernelutil.PROFILES / "soon-gone.yaml").unlink()
    cwd = _cwd(tmp_path, who)
    km, kc, log = _start(spec, who, cwd)
    try:
        r = _refusal(km, kc, cwd)
    finally:
        rc = _stop(km, kc, log)
    _check_refused(r, "soon-gone: no such profile")
    assert rc == 0, rc
    said = Path(cwd, "launcher.err").read_text()
    assert "no such profile" in said and "serving this refusal" in said, said
    assert "Traceback" not in said, said


def test_the_refusal_is_served_over_the_ipc_transport_too(tmp_path):
    """`c.KernelManager.transport = "ipc"` (docs/network.md): the refusal kernel binds the UNIX
    sockets where the connection file says; none is left after shutdown."""
    kernelutil.write_profile("ipc-gone", "extends: free\n")
    spec = kernelutil.install_spec("ipc-gone")
    (kernelutil.PROFILES / "ipc-gone.yaml").unlink()
    cwd = str(tmp_path)
    km, kc, log = _start(spec, None, cwd, ip=os.path.join(cwd, "kernel-ipc"), transport="ipc")
    try:
        r = _refusal(km, kc, cwd)
    finally:
        rc = _stop(km, kc, log)
    _check_refused(r, "ipc-gone: no such profile")
    assert rc == 0 and not [n for n in os.listdir(cwd) if n.startswith("kernel-ipc-")], os.listdir(cwd)


def test_a_layer_that_cannot_apply_is_explained_in_the_notebook(tmp_path, who):
    spec = kernelutil.install_spec("free", who.pw_name if who else None)
    cwd = _cwd(tmp_path, who)
    km, kc, log = _start(spec, who, cwd, env={"SANDBOX_KERNEL_SIMULATE_MISSING": "landlock"})
    try:
        r = _refusal(km, kc, cwd)
    finally:
        _stop(km, kc, log)
    _check_refused(r, "sandbox layer 'landlock' is required by the profile but cannot be applied")


def test_a_non_loopback_connection_address_is_explained(tmp_path):
    """A kernel manager that gives a non-loopback address, to a kernelspec without
    --allow-kernel-ip: the kernel does not start; the notebook says which option allows it."""
    spec = kernelutil.install_spec("free")
    cwd = str(tmp_path)
    km, kc, log = _start(spec, None, cwd, ip="0.0.0.0")
    try:
        r = _refusal(km, kc, cwd)
    finally:
        _stop(km, kc, log)
    _check_refused(r, "ip '0.0.0.0' is not a loopback address; a kernelspec may allow it with --allow-kernel-ip")


def _connection_file(mode: int = 0o600) -> Path:
    """A connection file as Jupyter writes one (free ports, a key) in a private directory."""
    from jupyter_client.connect import write_connection_file

    f = Path(kernelutil.connection_dir()) / f"kernel-{os.urandom(6).hex()}.json"
    write_connection_file(str(f), key=b"a-key")
    os.chmod(f, mode)
    return f


def test_a_tampered_connection_file_gets_no_refusal_kernel(tmp_path):
    """A connection file others could have written (mode 666) is not trusted even to bind a
    refusal kernel: the launcher exits 1 and says why, as before."""
    f = _connection_file(0o666)
    p = kernelutil.run_launcher("free", "/usr/bin/touch", str(tmp_path / "ran"), connection_file=str(f),
                                cwd=str(tmp_path), timeout=60)
    assert p.returncode == 1 and "writable by group or others" in p.stderr, p.stderr
    assert "serving this refusal" not in p.stderr and not (tmp_path / "ran").exists()


def _refused_notebook(work: Path, who) -> tuple[Path, str]:
    kernelutil.write_profile("nb-gone", "extends: free\n")
    spec = kernelutil.install_spec("nb-gone")  # (papermill itself runs as the user)
    (kernelutil.PROFILES / "nb-gone.yaml").unlink()
    src = work / "job.ipynb"
    nbformat.write(new_notebook(cells=[new_code_cell(f"open({str(work / 'ran')!r}, 'w').write('x')"),
                                       new_code_cell("print('second')")],
                                metadata={"kernelspec": {"name": spec, "display_name": spec, "language": "python"}}),
                   str(src))
    if who:
        os.chown(src, who.pw_uid, who.pw_gid)
    return src, spec


def _tail_has_reason(text: str, reason: str, lines: int = 6) -> bool:
    return reason in "\n".join(text.strip().splitlines()[-lines:])


def test_papermill_says_why_on_its_last_lines(tmp_path, who):
    from test_notebooks import papermill

    work = Path(kernelutil.user_workdir(who)) if who else tmp_path
    src, spec = _refused_notebook(work, who)
    proc = papermill(src, work / "out.ipynb", spec, str(work), who)
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "Kernel died" not in proc.stderr, proc.stderr[-3000:]
    assert _tail_has_reason(proc.stderr, "nb-gone: no such profile"), proc.stderr[-3000:]
    assert "SandboxStartRefused" in proc.stderr
    assert not (work / "ran").exists()
    nb = nbformat.read(str(work / "out.ipynb"), as_version=4)
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert [e["ename"] for e in errors] == ["SandboxStartRefused"], nb.cells


def test_jupyter_execute_says_why_on_its_last_lines(tmp_path):
    work = tmp_path
    src, spec = _refused_notebook(work, None)
    env = dict(os.environ)
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
    proc = subprocess.run([os.path.join(os.path.dirname(sys.executable), "jupyter-execute"),
                           f"--kernel_name={spec}", src.name], capture_output=True, text=True, env=env, cwd=work,
                          timeout=600)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out[-3000:]
    assert "Kernel died" not in out, out[-3000:]
    assert _tail_has_reason(proc.stderr, "nb-gone: no such profile"), proc.stderr[-3000:]
    assert not (work / "ran").exists()


# --------------------------------------------------------------------------- orphaned kernelspecs


def _sk(*args, env):
    return subprocess.run([sys.executable, "-m", "sandbox_kernel.cli", *args], capture_output=True, text=True,
                          env=env, timeout=600)


def test_doctor_and_install_flag_orphaned_kernelspecs(tmp_path):
    """A kernelspec installed from the platform's profile directory, whose profile is then
    deleted (or broken): doctor exits 1 naming it and the fix, with and without --json;
    install warns about it. Before, neither said anything and Jupyter kept offering it."""
    platform = tmp_path / "platform"
    platform.mkdir()
    (platform / "acme.yaml").write_text("extends: free\ndescription: the platform's\n")
    (platform / "beta.yaml").write_text("extends: free\n")
    prefix = tmp_path / "prefix"
    env = dict(os.environ, SANDBOX_KERNEL_PROFILE_PATH=str(platform), JUPYTER_PATH=str(prefix / "share" / "jupyter"),
               JUPYTER_DATA_DIR=str(tmp_path / "data"))
    for name in ("acme", "beta"):
        p = _sk("install", "--profile", name, "--prefix", str(prefix), env=env)
        assert p.returncode == 0 and "orphaned" not in p.stderr, p.stderr
    p = _sk("doctor", "--json", "--profile", "free", env=env)
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["kernelspecs"]["orphaned"] == []

    (platform / "acme.yaml").unlink()
    (platform / "beta.yaml").write_text("extends: free\nnetwork:\n  mode: sideways\n")
    p = _sk("doctor", "--json", "--profile", "free", env=env)
    assert p.returncode == 1 and "Traceback" not in p.stderr, p.stderr
    orphans = {o["kernelspec"]: o for o in json.loads(p.stdout)["kernelspecs"]["orphaned"]}
    assert set(orphans) == {"sandbox-acme", "sandbox-beta"}, orphans
    assert "'acme' no longer exists" in orphans["sandbox-acme"]["why"], orphans
    assert "'beta' is now invalid" in orphans["sandbox-beta"]["why"] and "network.mode" in orphans["sandbox-beta"]["why"]
    assert "jupyter kernelspec remove sandbox-acme" in orphans["sandbox-acme"]["fix"]
    p = _sk("doctor", "--profile", "free", env=env)
    assert p.returncode == 1 and "ORPHANED kernelspec sandbox-acme" in p.stdout, p.stdout[-2000:]
    assert "orphaned: sandbox-acme, sandbox-beta" in p.stderr, p.stderr
    p = _sk("install", "--profile", "free", "--prefix", str(prefix), env=env)
    assert p.returncode == 0, p.stderr
    assert "kernelspec 'sandbox-acme'" in p.stderr and "is orphaned" in p.stderr, p.stderr
    assert "jupyter kernelspec remove sandbox-acme" in p.stderr


# --------------------------------------------------------------------------- neighbours


def test_a_connection_file_where_the_tenant_writes_gets_no_refusal_kernel(tmp_path, who):
    """Its key may be known to the tenant's other kernels: the launcher serves nothing on its
    ports (it exits 1 naming the directory), whatever else would have refused the start."""
    cwd = _cwd(tmp_path, who)
    from jupyter_client.connect import write_connection_file

    f = os.path.join(cwd, "kernel-in-cwd.json")
    write_connection_file(f, key=b"a-key")
    if who:
        os.chown(f, who.pw_uid, who.pw_gid)
    p = kernelutil.run_launcher("no-such-profile-here", "/usr/bin/touch", os.path.join(cwd, "ran"),
                                user=who.pw_name if who else None, cwd=cwd, connection_file=f, timeout=60)
    assert p.returncode == 1, p.stderr
    assert "serving this refusal" not in p.stderr and not os.path.exists(os.path.join(cwd, "ran")), p.stderr


def test_a_refused_start_runs_no_tenant_start_up_code(tmp_path, who):
    """What would run at a kernel's start from places the tenant writes (IPython start-up
    files, a user-site .pth and usercustomize, PYTHONSTARTUP, a sitecustomize in the working
    directory) does not run in the refusal kernel, which is `python -I -S` without IPython."""
    home = Path(who.pw_dir) if who else Path(tmp_path / "home")
    cwd = _cwd(tmp_path, who)
    marker_dir = Path(cwd) / "markers"
    marker_dir.mkdir()
    plant = "import pathlib; pathlib.Path({!r}).write_text('ran')\n"
    ver = f"python{sys.version_info.major}.{sys.version_info.minor}"
    planted = {
        home / ".ipython" / "profile_default" / "startup" / "00-plant.py": "startup",
        home / ".local" / "lib" / ver / "site-packages" / "usercustomize.py": "usercustomize",
        home / ".local" / "lib" / ver / "site-packages" / "zz-plant.pth": "pth",
        Path(cwd) / "sitecustomize.py": "sitecustomize",
        Path(cwd) / "startup.py": "pythonstartup",
    }
    made = []
    for path, tag in planted.items():
        new_dirs = [d for d in [*reversed(path.parents)] if not d.exists()]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(plant.format(str(marker_dir / tag)))  # (a .pth runs its `import` lines)
        made.append((path, new_dirs))
        if who:
            for d in new_dirs:
                os.chown(d, who.pw_uid, who.pw_gid)
            os.chown(path, who.pw_uid, who.pw_gid)
    if who:
        os.chown(marker_dir, who.pw_uid, who.pw_gid)
    kernelutil.write_profile("plant-gone", "extends: free\n")
    spec = kernelutil.install_spec("plant-gone", who.pw_name if who else None)
    (kernelutil.PROFILES / "plant-gone.yaml").unlink()
    env = {"PYTHONSTARTUP": str(Path(cwd) / "startup.py"), "PYTHONPATH": cwd}
    if not who:
        env["HOME"] = str(home)
    try:
        km, kc, log = _start(spec, who, cwd, env=env)
        try:
            r = _refusal(km, kc, cwd)
        finally:
            _stop(km, kc, log)
        assert sorted(os.listdir(marker_dir)) == [], os.listdir(marker_dir)
        # the control: a kernel that does start runs the tenant's IPython start-up file (after the layers)
        km, kc, log = _start(kernelutil.install_spec("free", who.pw_name if who else None), who, cwd, env=env)
        _stop(km, kc, log)
        assert "startup" in os.listdir(marker_dir), os.listdir(marker_dir)
    finally:
        for path, new_dirs in made:
            path.unlink(missing_ok=True)
            for d in reversed(new_dirs):
                shutil.rmtree(d, ignore_errors=True)
    _check_refused(r, "plant-gone: no such profile")


def test_the_refusal_kernel_answers_only_signed_messages_and_survives_garbage(tmp_path):
    """A message signed with another key is dropped unparsed (the correctly signed request sent
    after it on the same connection is the first answered); bytes that are not ZMTP close only
    that connection."""
    import socket as socketlib

    import zmq
    from jupyter_client.session import Session

    kernelutil.write_profile("sig-gone", "extends: free\n")
    spec = kernelutil.install_spec("sig-gone")
    (kernelutil.PROFILES / "sig-gone.yaml").unlink()
    cwd = str(tmp_path)
    km, kc, log = _start(spec, None, cwd)
    try:
        info = json.loads(Path(km.connection_file).read_text())
        with socketlib.create_connection(("127.0.0.1", info["shell_port"])) as raw:
            raw.sendall(b"GET / HTTP/1.0\r\n\r\n")
            assert raw.recv(4096)[:1] == b"\xff"  # its greeting, then it closes
        ctx = zmq.Context()
        dealer = ctx.socket(zmq.DEALER)
        dealer.linger = 0
        dealer.connect(f"tcp://127.0.0.1:{info['shell_port']}")
        forged, real = Session(key=b"not-the-key"), Session(key=info["key"].encode())
        forged.send(dealer, "execute_request", {"code": "1", "silent": False})
        real.send(dealer, "kernel_info_request", {})
        assert dealer.poll(60_000), "no reply to the signed request"
        _idents, msg = real.feed_identities(dealer.recv_multipart())
        reply = real.deserialize(msg)
        assert reply["msg_type"] == "kernel_info_reply", reply["msg_type"]
        dealer.close()
        ctx.term()
        assert kc.kernel_info(reply=True, timeout=30)["content"]["implementation"] == refusal.IMPLEMENTATION
        assert km.is_alive()
    finally:
        _stop(km, kc, log)


def test_a_trusted_start_refusal_serves_nothing(tmp_path):
    """Where the start itself is in doubt (files the launcher ran could be the tenant's), the
    launcher runs no more of its code: it exits 1 as before, even with a connection file."""
    f = _connection_file()
    p = kernelutil.run_launcher("free", "/usr/bin/touch", str(tmp_path / "ran"), connection_file=str(f),
                                cwd=str(tmp_path), env={"SANDBOX_KERNEL_SIMULATE_MISSING": "trusted_start"})
    assert p.returncode == 1 and "trusted_start" in p.stderr, p.stderr
    assert "serving this refusal" not in p.stderr and not (tmp_path / "ran").exists()
