"""Run inside a container of scripts/docker-image.sh's image (tests/deploy/test_docker.py mounts it):
start a sandbox kernel through jupyter_client as a Jupyter server would, try a banned import
and a connection to a listener in this container, and ask `sandbox-kernel doctor`. Prints
one JSON object."""

import json
import os
import socket
import subprocess
import sys

from jupyter_client.manager import KernelManager
from jupyter_core.paths import jupyter_runtime_dir

profile = sys.argv[1] if len(sys.argv) > 1 else "offline"
transport = sys.argv[2] if len(sys.argv) > 2 else "tcp"
out = {"uid": os.getuid(), "profile": profile, "transport": transport}
doc = subprocess.run(["sandbox-kernel", "doctor", "--json", "--profile", profile], capture_output=True, text=True)
out["doctor_rc"] = doc.returncode
try:
    d = json.loads(doc.stdout)
    out["doctor"] = {p["profile"]: {"starts": p["starts"], "layer": p.get("layer"), "why": p.get("why"),
                                    "fix": p.get("fix"), "layers": p.get("layers")} for p in d["profiles"]}
except (ValueError, KeyError) as e:
    out["doctor"] = {"error": repr(e), "stdout": doc.stdout[-2000:], "stderr": doc.stderr[-2000:]}

try:
    lsock = socket.socket()
except OSError as e:  # the container's own seccomp profile refuses IP sockets: nothing to connect to
    out["listener"] = e.errno
    lsock = None
    port = 9
else:
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(8)
    lsock.setblocking(False)
    port = lsock.getsockname()[1]
try:
    # as a Jupyter server does: the connection file (and ipc sockets) in Jupyter's runtime
    # directory, private to the account; the launcher refuses jupyter_client's bare default (a
    # mkstemp file in /tmp) where the kernel has no mount namespace of its own (Docker's seccomp)
    runtime = jupyter_runtime_dir()
    os.makedirs(runtime, mode=0o700, exist_ok=True)
    extra = {"transport": "ipc", "ip": os.path.join(runtime, "kernel-ipc")} if transport == "ipc" else {}
    km = KernelManager(kernel_name=f"sandbox-{profile}", connection_file=os.path.join(runtime, "kernel-check.json"),
                       **extra)
    km.start_kernel()
    kc = km.client()
    kc.start_channels()
    try:
        kc.wait_for_ready(timeout=90)
    except RuntimeError:
        kc.stop_channels()
        km.shutdown_kernel(now=True)
        raise
except Exception as e:  # the launcher refused: what it said is in the kernel's stderr
    out["started"] = False
    out["error"] = repr(e)[-2000:]
else:
    out["started"] = True

    def run(code):
        res = {"stdout": "", "ename": None}

        def hook(msg):
            if msg["msg_type"] == "stream":
                res["stdout"] += msg["content"]["text"]
            elif msg["msg_type"] == "error":
                res["ename"] = msg["content"]["ename"]

        kc.execute_interactive(code, timeout=60, output_hook=hook)
        return res

    out["import"] = run("import pyngrok")
    out["connect"] = run("import socket\ntry:\n    socket.create_connection(('127.0.0.1', %d), timeout=5)\n"
                         "    print('connected')\nexcept OSError as e:\n    print('refused', e.errno)" % port)
    out["compute"] = run("print(sum(range(10)))")
    kc.stop_channels()
    km.shutdown_kernel(now=True)
try:
    out["accepted"] = bool(lsock and lsock.accept())
except BlockingIOError:
    out["accepted"] = False
print(json.dumps(out))
