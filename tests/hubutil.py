"""A real JupyterHub for the deploy tests (tests/deploy/test_jupyterhub.py with local servers,
test_slurm_hub.py with Slurm jobs): the shipped example configuration
(examples/jupyterhub/jupyterhub_config.py) with the test's ports, database and admin service
token, started on 127.0.0.1 and stopped with every single-user server it started; the Hub's REST
API; the probe both tests run in a user's kernel.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import subprocess
import sys
from pathlib import Path

import kernelutil
import servers
from testenv import REPO

CONFIG = REPO / "examples" / "jupyterhub" / "jupyterhub_config.py"
CHP = REPO / ".e2e" / "node" / "node_modules" / ".bin" / "configurable-http-proxy"
TOKEN = "hub-admin-" + os.urandom(12).hex()
CHP_MISSING = f"{CHP} (scripts/setup-e2e.sh installs configurable-http-proxy from npm)"

# The part of the Hub's configuration both tests share: the example, then this run's ports and
# files, an admin service with TOKEN, single-user servers on 127.0.0.1 given two minutes to start.
COMMON = """
c = get_config()
load_subconfig({config!r})
c.JupyterHub.bind_url = "http://127.0.0.1:{port}"
c.JupyterHub.hub_bind_url = "http://127.0.0.1:{hub_port}"
c.ConfigurableHTTPProxy.api_url = "http://127.0.0.1:{api_port}"
c.ConfigurableHTTPProxy.command = [{chp!r}]
c.JupyterHub.db_url = "sqlite:///{work}/jupyterhub.sqlite"
c.JupyterHub.cookie_secret_file = "{work}/cookie_secret"
c.JupyterHub.pid_file = "{work}/jupyterhub.pid"
c.JupyterHub.services = [{{"name": "test-admin", "api_token": {token!r}}}]
c.JupyterHub.load_roles = [{{"name": "test-admin", "services": ["test-admin"],
                             "scopes": ["admin:users", "admin:servers", "tokens"]}}]
c.Spawner.ip = "127.0.0.1"
c.Spawner.start_timeout = 120
c.Spawner.http_timeout = 120
"""


def ensure_user(name: str, group: str) -> pwd.struct_passwd:
    with kernelutil.host_lock():  # (the suite's other processes may be adding its test user)
        if subprocess.run(["getent", "group", group], capture_output=True).returncode != 0:
            subprocess.run(["groupadd", group], check=True, capture_output=True)
        try:
            pwd.getpwnam(name)
        except KeyError:
            subprocess.run(["useradd", "-m", "-s", "/bin/bash", "-G", group, name], check=True, capture_output=True)
        subprocess.run(["usermod", "-a", "-G", group, name], check=True, capture_output=True)
        return pwd.getpwnam(name)


@contextlib.contextmanager
def running_hub(work: Path, config: str, ceiling_groups: dict[str, str], users: list[str]):
    """JupyterHub on free ports of 127.0.0.1 with COMMON and then `config` (Python lines of the
    Hub's configuration), the example's per-group ceilings `ceiling_groups` (group -> profile):
    yields (server, base URL); at the end stops the `users`' servers through the Hub, then the Hub."""
    port, hub_port, api_port = servers.free_port(), servers.free_port(), servers.free_port()
    bin_dir = os.path.dirname(sys.executable)
    (work / "test_config.py").write_text(COMMON.format(
        config=str(CONFIG), port=port, hub_port=hub_port, api_port=api_port, chp=str(CHP), work=work,
        token=TOKEN) + config)
    env = dict(os.environ)
    env["PATH"] = bin_dir + os.pathsep + env.get("PATH", "")
    env["SANDBOX_CEILING_GROUPS"] = ",".join(f"{g}={p}" for g, p in ceiling_groups.items())
    env.pop("SANDBOX_KERNEL_CEILING", None)
    srv = servers.Server("jupyterhub", [os.path.join(bin_dir, "jupyterhub"), "-f", str(work / "test_config.py")],
                         env=env, cwd=str(work), log_dir=work)
    base = f"http://127.0.0.1:{port}"
    try:
        srv.wait_http(f"{base}/hub/api/", headers={"Authorization": f"token {TOKEN}"})
        yield srv, base
    finally:
        import requests

        for name in users:  # stop the single-user servers through the Hub first
            try:
                hub_api(base, "DELETE", f"/users/{name}/server", timeout=60)
            except requests.RequestException:
                pass
        srv.stop(timeout=60)


def hub_api(base: str, method: str, path: str, timeout: float = 120, **kw):
    import requests

    return requests.request(method, f"{base}/hub/api{path}", headers={"Authorization": f"token {TOKEN}"},
                            timeout=timeout, **kw)


def start_server(srv, base: str, name: str) -> str:
    """Create the user in the Hub, start their server, return a token the Hub issued to them."""
    r = hub_api(base, "POST", f"/users/{name}")
    assert r.status_code in (201, 409), r.text
    r = hub_api(base, "POST", f"/users/{name}/server")
    assert r.status_code in (201, 202, 400), r.text  # 400: already running
    srv.wait_until(lambda: hub_api(base, "GET", f"/users/{name}").json()["servers"].get("", {}).get("ready"),
                   f"{name}'s server", timeout=150)
    r = hub_api(base, "POST", f"/users/{name}/tokens", json={"note": "sandbox-kernel test", "expires_in": 3600})
    assert r.status_code == 201, r.text
    return r.json()["token"]


# What a user's kernel prints: its ceiling, its uid and what a TCP connect to {port} gives.
NET_PROBE = """
import errno, os, socket
print('ceiling', os.environ.get('SANDBOX_KERNEL_CEILING'), 'uid', os.getuid())
try:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.settimeout(5)
        s.connect(('127.0.0.1', {port}))
        print('net ok')
    finally:
        s.close()
except OSError as e:
    print('net', errno.errorcode[e.errno])
"""
