"""The Enterprise Gateway pod-side launcher (python -m sandbox_kernel.gateway) without EG:
bad input gives one clear line and exit status 1; the kernel command it builds; EG's
encrypted payload decrypts with EG's private key; comm-port requests."""

from __future__ import annotations

import base64
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import uuid
from pathlib import Path

import kernelutil
import pytest
from testenv import REPO

from sandbox_kernel import gateway, install

Cryptodome = pytest.importorskip("Cryptodome", reason="pycryptodomex (the 'gateway' extra) is not installed")
from Cryptodome.Cipher import AES, PKCS1_v1_5  # noqa: E402
from Cryptodome.PublicKey import RSA  # noqa: E402
from Cryptodome.Util.Padding import unpad  # noqa: E402

KEY = RSA.generate(1024)
PUBLIC = base64.b64encode(KEY.publickey().export_key("DER")).decode()
KID = str(uuid.uuid4())


@pytest.fixture
def spec_dir(tmp_path):
    return install.install("free", prefix=str(tmp_path / "prefix"))


def run(*args, env=None):
    e = {k: v for k, v in os.environ.items() if k not in ("KERNEL_ID", "PUBLIC_KEY", "RESPONSE_ADDRESS",
                                                          "EG_RESPONSE_ADDRESS", gateway.SPEC_ENV)}
    e.update(env or {})
    return subprocess.run([sys.executable, "-I", "-m", "sandbox_kernel.gateway", *args], env=e,
                          capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("args, message", [
    ([], "no kernelspec given: pass --kernelspec NAME or set SANDBOX_KERNEL_KERNELSPEC"),
    (["--kernelspec", "no-such-kernel"], "kernelspec 'no-such-kernel' not found in"),
    (["--kernel-id", "../../etc"], "--kernel-id '../../etc': expected the kernel's UUID"),
    (["--kernel-id", ""], "--kernel-id is missing: Enterprise Gateway passes {kernel_id}"),
    (["--response-address", "nohost"], "--response-address 'nohost': expected IP:PORT"),
    (["--public-key", "bm90IGEga2V5"], "--public-key: not Enterprise Gateway's public key"),
    (["--port-range", "10..20"], "--port-range '10..20': expected 1024 <= LOW < HIGH <= 65535"),
    (["--port-range", "a..b"], "--port-range 'a..b': expected LOW..HIGH"),
])
def test_bad_input_is_one_clear_line(spec_dir, args, message):
    base = {"--kernelspec": spec_dir, "--kernel-id": KID, "--response-address": "127.0.0.1:9",
            "--public-key": PUBLIC, "--port-range": "0..0"}
    given = dict(zip(args[::2], args[1::2]))
    argv = [x for k, v in {**base, **given}.items() for x in (k, v)] if args else []
    proc = run(*argv)
    assert proc.returncode == 1, proc
    assert proc.stderr.startswith("sandbox-kernel gateway: ") and message in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr


def test_refuses_a_kernelspec_that_is_not_ours(tmp_path):
    d = tmp_path / "python3"
    d.mkdir()
    (d / "kernel.json").write_text(json.dumps({"argv": ["python", "-m", "ipykernel_launcher", "-f", "{connection_file}"],
                                               "display_name": "Python 3", "language": "python"}))
    proc = run("--kernelspec", str(d), "--kernel-id", KID, "--response-address", "127.0.0.1:9", "--public-key", PUBLIC)
    assert proc.returncode == 1 and "not a sandbox-kernel kernelspec" in proc.stderr, proc.stderr


def test_kernelspec_name_is_looked_up_only_in_system_dirs(tmp_path, monkeypatch, spec_dir):
    """JUPYTER_PATH (which a tenant's environment might carry) is not searched for a name."""
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "prefix" / "share" / "jupyter"))
    with pytest.raises(gateway.SandboxError, match="not found"):
        gateway.find_kernelspec("sandbox-free-nowhere")
    assert all(not d.startswith(str(tmp_path)) for d in gateway.SYSTEM_KERNEL_DIRS)


@pytest.mark.kernel
def test_unreachable_gateway_stops_the_kernel(spec_dir, tmp_path):
    """EG never hears of the kernel: the launcher kills it and fails, leaving nothing behind."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = s.getsockname()[1]  # nothing listens once closed
    proc = run("--kernelspec", spec_dir, "--kernel-id", KID, "--response-address", f"127.0.0.1:{dead}",
               "--public-key", PUBLIC, "--ip", "127.0.0.1")
    assert proc.returncode == 1 and "cannot reach Enterprise Gateway at 127.0.0.1" in proc.stderr, proc.stderr
    def leftovers():
        return subprocess.run(["pgrep", "-f", f"kernel-{KID}"], capture_output=True, text=True).stdout.split()

    assert kernelutil.wait_for(lambda: not leftovers(), timeout=20), leftovers()


def test_kernel_command_fills_placeholders_and_allows_a_pod_ip(spec_dir):
    spec_dir, spec = gateway.find_kernelspec(spec_dir)
    cf = "/run/k/kernel-x.json"
    loop = gateway.kernel_command(spec_dir, spec, cf, "127.0.0.1")
    assert "{connection_file}" not in " ".join(loop) and "{resource_dir}" not in " ".join(loop)
    assert cf in loop and "--allow-kernel-ip" not in loop
    pod = gateway.kernel_command(spec_dir, spec, cf, "0.0.0.0")
    at = pod.index("--allow-kernel-ip")
    assert pod[at + 1] == "0.0.0.0" and pod.index("--") == at + 2  # a launcher option, before the kernel's command


def test_payload_is_what_enterprise_gateway_decrypts():
    """The version-1 payload of EG's launchers, decrypted as EG's ResponseManager does."""
    info = {"shell_port": 1, "key": "k", "kernel_id": KID, "comm_port": 5}
    payload = json.loads(base64.b64decode(gateway.encrypt_payload(info, KEY.publickey())))
    assert payload["version"] == 1
    aes_key = PKCS1_v1_5.new(KEY).decrypt(base64.b64decode(payload["key"]), b"\x42")
    plain = unpad(AES.new(aes_key, AES.MODE_ECB).decrypt(base64.b64decode(payload["conn_info"])), 16)
    assert json.loads(plain) == info


def _comm_listener(child):
    launch = gateway.Launch.__new__(gateway.Launch)
    launch.child = child
    launch.comm = gateway.bind_socket("127.0.0.1", 0, 0)
    launch.comm.listen(8)
    launch.comm.settimeout(0.5)
    t = threading.Thread(target=launch.listen, daemon=True)
    t.start()
    port = launch.comm.getsockname()[1]

    def send(data: bytes):
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            s.sendall(data)

    return launch, t, send


def test_comm_port_forwards_only_the_signals_eg_sends():
    child = subprocess.Popen(["sleep", "600"], start_new_session=True)  # as the launcher starts the kernel
    launch, t, send = _comm_listener(child)
    try:
        send(json.dumps({"signum": int(signal.SIGSTOP)}).encode())  # not EG's: ignored
        send(b"{not json")
        send(b"x" * (gateway.MAX_REQUEST + 10))
        send(json.dumps({"signum": 0}).encode())  # EG's liveness poll: nothing is signalled
        send(json.dumps({"signum": int(signal.SIGTERM)}).encode())
        # had SIGSTOP been delivered, SIGTERM would stay pending and the child would not exit
        assert child.wait(timeout=30) == -signal.SIGTERM
        t.join(timeout=10)
        assert not t.is_alive()  # the listener ends with the kernel
    finally:
        child.kill()
        launch.comm.close()


def test_comm_port_shutdown_request_ends_the_listener():
    child = subprocess.Popen(["sleep", "600"], start_new_session=True)  # as the launcher starts the kernel
    launch, t, send = _comm_listener(child)
    try:
        send(json.dumps({"shutdown": 1}).encode())
        t.join(timeout=10)
        assert not t.is_alive() and child.poll() is None
    finally:
        child.kill()
        child.wait()
        launch.comm.close()


# --------------------------------------------------------------------------- shipped EG kernelspecs

EG_SPECS = sorted((REPO / "kernelspec" / "enterprise-gateway").glob("*/kernel.json"))


def test_shipped_kubernetes_kernelspecs_start_our_shipped_kernelspecs():
    from sandbox_kernel import resources

    shipped = {p.stem for p in Path(resources.shipped_profiles_dir()).glob("*.yaml")}
    assert len(EG_SPECS) >= 4
    for path in EG_SPECS:
        spec = json.loads(path.read_text())
        proxy = spec["metadata"]["process_proxy"]
        assert proxy["class_name"] == "enterprise_gateway.services.processproxies.k8s.KubernetesProcessProxy"
        assert proxy["config"]["image_name"]
        # EG's own pod launcher, with every value EG fills in for a remote kernel
        assert spec["argv"][1].endswith("/python_kubernetes/scripts/launch_kubernetes.py")
        for placeholder in ("{kernel_id}", "{port_range}", "{response_address}", "{public_key}"):
            assert placeholder in spec["argv"], (path, placeholder)
        pod_spec = spec["env"][gateway.SPEC_ENV]
        assert pod_spec.startswith("sandbox-") and pod_spec.removeprefix("sandbox-") in shipped, path
        assert path.parent.name == f"{pod_spec}-kubernetes"
        # nothing an EG client may override (KERNEL_*) decides the sandbox, except resource requests
        assert all(not k.startswith("KERNEL_") or k == "KERNEL_GPUS_LIMIT" for k in spec["env"]), spec["env"]


def test_enterprise_gateway_defines_the_process_proxy_class():
    """(EG's k8s module reads the in-cluster configuration when imported: look for the class in its source.)"""
    import ast

    site = sorted((REPO / ".venv-gateway" / "lib").glob("python3*/site-packages"))
    if not site:
        pytest.skip(".venv-gateway is missing: run ./scripts/setup.sh")
    for name in sorted({json.loads(p.read_text())["metadata"]["process_proxy"]["class_name"] for p in EG_SPECS}):
        module, _, cls = name.rpartition(".")
        source = site[0] / (module.replace(".", "/") + ".py")
        assert source.is_file(), source
        classes = {n.name for n in ast.walk(ast.parse(source.read_text())) if isinstance(n, ast.ClassDef)}
        assert cls in classes, (source, cls)


def test_connection_file_goes_where_the_sandbox_keeps_it_private(tmp_path, monkeypatch):
    """In Jupyter's runtime directory of the kernel's account (private with or without a mount
    namespace), made 0700 where missing; where the home cannot hold one, a private directory under
    /tmp (which the sandbox launcher accepts only with a mount namespace); removed at clean-up."""
    launch = gateway.Launch.__new__(gateway.Launch)
    launch.kernel_id, launch.comm, launch.workdir = str(uuid.uuid4()), None, None
    launch.env = {"HOME": str(tmp_path)}
    cf = launch._connection_path()
    runtime = tmp_path / ".local" / "share" / "jupyter" / "runtime"
    assert cf == str(runtime / f"kernel-{launch.kernel_id}.json") and launch.workdir is None
    assert (os.stat(runtime).st_mode & 0o777) == 0o700
    launch.env = {"HOME": str(tmp_path), "JUPYTER_RUNTIME_DIR": "/proc/no/such/runtime"}
    cf = launch._connection_path()
    assert launch.workdir and os.path.dirname(cf) == launch.workdir and launch.workdir.startswith("/tmp/")
    assert (os.stat(launch.workdir).st_mode & 0o777) == 0o700
    launch.connection_file = cf
    Path(cf).write_text("{}")
    launch.cleanup()
    assert not os.path.exists(cf) and not os.path.exists(launch.workdir)
