"""Jupyter Enterprise Gateway runs our kernels, and the profile is enforced in them.

A real `jupyter enterprisegateway` (from its own virtual environment, `.venv-gateway`:
EG 3.3 needs jupyter_client < 7 and jupyter_server < 2, which cannot live beside this
package's jupyter_client 8) on 127.0.0.1, with `EG_ALLOWED_KERNELS` listing our
kernelspecs (passed as `--KernelSpecManager.whitelist`, as EG's image does). Kernels are started over its REST API and cells run over its websocket:

- `sandbox-free`: EG's local process proxy starts the kernelspec `sandbox-kernel
  install` wrote;
- `sandbox-free-remote`: EG's remote-kernel protocol (the one its Kubernetes, Docker
  and distributed process proxies use) with our pod-side launcher,
  `python -m sandbox_kernel.gateway`: encrypted connection report to EG's response
  address, EG's interrupts and kills through the launcher's comm port. EG's
  distributed process proxy on 127.0.0.1 runs it locally, so this is the same code a
  kernel pod runs, minus Kubernetes;
- `sandbox-free-offline`: a ceiling in the kernelspec's `env`, which an EG client
  cannot lift (EG passes a client's variables only when they start with KERNEL_ or
  are listed in EG_CLIENT_ENVS).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

import kernelutil
import pytest
from testenv import REPO
import servers

from sandbox_kernel import install

EG = REPO / ".venv-gateway" / "bin" / "jupyter-enterprisegateway"
TOKEN = "eg-test-token-" + os.urandom(8).hex()
SHIPPED_K8S = REPO / "kernelspec" / "enterprise-gateway" / "sandbox-free-kubernetes"
SPECS = {"sandbox-free", "sandbox-free-remote", "sandbox-free-pod-env", "sandbox-free-offline",
         "sandbox-free-kubernetes"}

pytestmark = [pytest.mark.kernel, pytest.mark.slow, pytest.mark.e2e]


@pytest.fixture(scope="module")
def listener():
    """A TCP listener on 127.0.0.1 on a port the `free` profile does not list."""
    li = kernelutil.Listener()
    yield li.port
    li.close()


def remote_spec(spec_dir: Path) -> dict:
    """An EG kernelspec using the remote-kernel protocol with our launcher (see docs/deploy-enterprise-gateway.md)."""
    return {
        "display_name": "Python 3 (sandbox: free) via the remote-kernel protocol",
        "language": "python",
        "metadata": {
            "process_proxy": {
                "class_name": "enterprise_gateway.services.processproxies.distributed.DistributedProcessProxy",
                "config": {"remote_hosts": "127.0.0.1"},
            },
            "debugger": False,
        },
        "argv": [sys.executable, "-I", "-m", "sandbox_kernel.gateway", "--kernelspec", str(spec_dir),
                 "--ip", "127.0.0.1", "--kernel-id", "{kernel_id}", "--response-address", "{response_address}",
                 "--public-key", "{public_key}", "--port-range", "{port_range}"],
    }


def pod_env_spec(spec_dir: Path) -> dict:
    """As a Kubernetes kernel pod runs the launcher: every value from the environment that EG's
    launch_kubernetes.py gives the pod (RESPONSE_ADDRESS, PUBLIC_KEY, PORT_RANGE, KERNEL_ID) and
    the kernelspec's env (SANDBOX_KERNEL_KERNELSPEC), no arguments."""
    spec = remote_spec(spec_dir)
    spec["argv"] = ["env", "RESPONSE_ADDRESS={response_address}", "PUBLIC_KEY={public_key}",
                    "PORT_RANGE={port_range}", sys.executable, "-I", "-m", "sandbox_kernel.gateway"]
    spec["env"] = {"SANDBOX_KERNEL_KERNELSPEC": str(spec_dir), "SANDBOX_KERNEL_GATEWAY_IP": "127.0.0.1"}
    return spec


@pytest.fixture(scope="module", params=["root", "user"])
def gateway(request):
    """EG (and so its kernels) as root, as many deployments run it, and as an ordinary user."""
    if not EG.exists():
        pytest.skip(f"{EG} is missing: run ./scripts/setup.sh (it creates .venv-gateway with "
                    "jupyter_enterprise_gateway)")
    prefix = kernelutil.PREFIX
    specs = prefix / "share" / "jupyter" / "kernels"
    free_dir = Path(install.install("free", prefix=str(prefix)))
    name, spec = install.prepare("free", name="sandbox-free-offline",
                                 display_name="Python 3 (sandbox: free, ceiling offline)")
    spec["env"] = {"SANDBOX_KERNEL_CEILING": "offline"}
    install.install_prepared(name, spec, prefix=str(prefix))
    remote = specs / "sandbox-free-remote"
    remote.mkdir(exist_ok=True)
    (remote / "kernel.json").write_text(json.dumps(remote_spec(free_dir), indent=1))
    pod = specs / "sandbox-free-pod-env"
    pod.mkdir(exist_ok=True)
    (pod / "kernel.json").write_text(json.dumps(pod_env_spec(free_dir), indent=1))
    shutil.copytree(SHIPPED_K8S, specs / SHIPPED_K8S.name, dirs_exist_ok=True)  # listed, not started (no cluster)

    user = None
    if request.param == "user":
        if os.geteuid() != 0:
            pytest.skip("running EG as an ordinary user needs root (setpriv)")
        user = request.getfixturevalue("unprivileged")
    work = Path(kernelutil.user_workdir(user) if user else tempfile.mkdtemp(prefix="eg-"))
    port = servers.free_port()
    env = dict(os.environ)
    if user:
        env.update(HOME=user.pw_dir, USER=user.pw_name, LOGNAME=user.pw_name)
        env.pop("TMPDIR", None)
    env.update({
        "EG_AUTH_TOKEN": TOKEN,
        "EG_RESPONSE_IP": "127.0.0.1",         # EG's response socket: loopback only
        "EG_KERNEL_LOG_DIR": str(work),
        "EG_KERNEL_LAUNCH_TIMEOUT": "90",
        # what a deployment passes from EG's own environment to every kernel
        "EG_INHERITED_ENVS": "PATH,HOME,LANG,JUPYTER_PATH,SANDBOX_KERNEL_PROFILE_PATH",
    })
    env.pop("SANDBOX_KERNEL_CEILING", None)
    # EG 3.3 (jupyter_client 6) offers only the kernelspecs in KernelSpecManager.whitelist
    # (`allowed_kernelspecs` from jupyter_client 7 on). EG itself does not read
    # EG_ALLOWED_KERNELS: the elyra/enterprise-gateway image's start script turns it into that
    # option, and so does this test
    env["EG_ALLOWED_KERNELS"] = ",".join(sorted(SPECS))
    allow = [f"--KernelSpecManager.whitelist={name}" for name in env["EG_ALLOWED_KERNELS"].split(",")]
    srv = servers.Server("enterprisegateway", [str(EG), "--ip=127.0.0.1", f"--port={port}", "--port_retries=0", *allow],
                         env=env, cwd=str(work), log_dir=work, user=user)
    base = f"http://127.0.0.1:{port}"
    try:
        srv.wait_http(f"{base}/api", headers={"Authorization": f"token {TOKEN}"})
        yield srv, base, (user.pw_uid if user else 0)
    finally:
        srv.stop()
        for d in SPECS - {"sandbox-free"}:
            shutil.rmtree(specs / d, ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)


def test_only_allowed_kernelspecs_are_offered(gateway):
    import requests

    srv, base, uid = gateway
    r = requests.get(f"{base}/api/kernelspecs", headers={"Authorization": f"token {TOKEN}"}, timeout=30)
    assert r.status_code == 200, r.text
    specs = r.json()["kernelspecs"]
    # the suite's own t-* kernelspecs are on JUPYTER_PATH too: the whitelist hides them
    assert set(specs) == SPECS, set(specs)
    k8s = specs["sandbox-free-kubernetes"]["spec"]  # the shipped Kubernetes kernelspec, as EG reads it
    assert k8s["metadata"]["process_proxy"]["class_name"].endswith("k8s.KubernetesProcessProxy")
    assert k8s["env"]["SANDBOX_KERNEL_KERNELSPEC"] == "sandbox-free"
    assert requests.get(f"{base}/api/kernelspecs", timeout=30).status_code in (401, 403)  # token required


# EG refuses kernels for KERNEL_USERNAME 'root' (EG_UNAUTHORIZED_USERS), its default when
# the gateway runs as root: a client names its user, as JupyterLab's gateway client does.
TENANT = {"KERNEL_USERNAME": "tenant"}


def check_profile(kernel: servers.RemoteKernel, port: int, uid: int) -> None:
    r = kernel.execute("import roop")
    assert r["status"] == "error" and r["ename"] == "ProhibitedImportError", r
    assert "refused by sandbox profile 'free'" in r["evalue"], r
    r = kernel.execute(f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=5)")
    assert r["status"] == "error" and r["ename"] == "PermissionError", r
    assert "sandbox: " in r["traceback"] and "network.mode is 'restricted'" in r["traceback"], r
    r = kernel.execute("import os, sys\nprint(sum(range(10)), os.environ.get('KERNEL_GATEWAY'), os.getuid())")
    assert r["status"] == "ok" and r["stdout"].split() == ["45", "1", str(uid)], r


@pytest.mark.parametrize("spec", ["sandbox-free", "sandbox-free-remote", "sandbox-free-pod-env"])
def test_kernel_over_rest_and_websocket_enforces_profile(gateway, listener, spec):
    srv, base, uid = gateway
    k = servers.RemoteKernel(base, TOKEN, spec, env=TENANT)
    try:
        check_profile(k, listener, uid)
        r = k.execute("%sandbox")
        assert r["status"] == "ok" and "free" in r["stdout"] and "landlock" in r["stdout"], r
    finally:
        k.shutdown()


def test_remote_protocol_interrupt_and_shutdown(gateway):
    """EG's interrupt reaches the sandboxed kernel through the launcher's comm port; after
    shutdown nothing of the kernel is left."""
    import requests

    srv, base, uid = gateway
    before = set(servers.descendants(srv.proc.pid))
    k = servers.RemoteKernel(base, TOKEN, "sandbox-free-remote", env=TENANT)
    launchers = [p for p in set(servers.descendants(srv.proc.pid)) - before
                 if b"sandbox_kernel.gateway" in Path(f"/proc/{p}/cmdline").read_bytes()]
    assert len(launchers) == 1, launchers
    try:
        k.ws.send(json.dumps({
            "header": {"msg_id": "sleep", "msg_type": "execute_request", "username": "t", "session": k.session,
                       "version": "5.3", "date": ""},
            "parent_header": {}, "metadata": {}, "channel": "shell", "buffers": [],
            "content": {"code": "import time\nprint('sleeping', flush=True)\ntime.sleep(600)", "silent": False,
                        "store_history": True, "user_expressions": {}, "allow_stdin": False, "stop_on_error": True}}))
        seen = []
        while True:  # wait until the cell runs, then interrupt through EG
            msg = json.loads(k.ws.recv())
            seen.append(msg["msg_type"])
            if msg["msg_type"] == "stream" and "sleeping" in msg["content"]["text"]:
                break
        r = requests.post(f"{base}/api/kernels/{k.id}/interrupt", headers=k.headers, timeout=30)
        assert r.status_code == 204, r.text
        while True:
            msg = json.loads(k.ws.recv())
            if msg["msg_type"] == "execute_reply" and msg["parent_header"].get("msg_id") == "sleep":
                assert msg["content"]["status"] == "error" and msg["content"]["ename"] == "KeyboardInterrupt", msg
                break
        assert k.execute("print('still here')")["stdout"].strip() == "still here"
    finally:
        k.shutdown()
    assert kernelutil.wait_for(lambda: not servers.alive(launchers[0]), timeout=60), srv.log()


@pytest.mark.parametrize("client_env", [TENANT, dict(TENANT, SANDBOX_KERNEL_CEILING="research", SANDBOX_KERNEL_POLICY="{}")])
def test_ceiling_in_kernelspec_env_cannot_be_lifted_by_the_client(gateway, listener, client_env):
    srv, base, uid = gateway
    k = servers.RemoteKernel(base, TOKEN, "sandbox-free-offline", env=client_env)
    try:
        r = k.execute("import os, socket\nprint(os.environ.get('SANDBOX_KERNEL_CEILING'))\n"
                      "socket.socket(socket.AF_INET, socket.SOCK_STREAM)")
        assert r["stdout"].strip() == "offline", r
        assert r["status"] == "error" and r["ename"] == "PermissionError", r
        assert "network.mode is 'none'" in r["traceback"], r
    finally:
        k.shutdown()
