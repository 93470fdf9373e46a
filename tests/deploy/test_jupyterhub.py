"""A real JupyterHub (LocalProcessSpawner, configurable-http-proxy) on 127.0.0.1 running
examples/jupyterhub/jupyterhub_config.py: its pre_spawn_hook gives each user's
single-user server the ceiling of the user's group, and every kernel is narrowed by it.

Two ordinary users created with useradd, in two Unix groups (`sbxhub-students` ->
ceiling `free`, `sbxhub-exam` -> ceiling `offline`), each start a `sandbox-free` kernel
through the Hub's REST API (an admin service token) and their own server's kernel API
(a token the Hub issued to that user): the exam user's kernel has no network at all.
Neither user can write server configuration that would drop the ceiling at the server's
next start, from a kernel or through the file browser.

The single-user servers run on a Python that is not a venv (the base interpreter with this
environment's packages on PYTHONPATH, as conda's /opt/conda is in the docker-stacks
images), whose user site is on: a .pth file planted in each user's
~/.local/lib/pythonX.Y/site-packages (as a kernel can) must not run in the server, which
the example's PYTHONNOUSERSITE ensures.
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import sys
import sysconfig
from pathlib import Path

import kernelutil
import pytest
from testenv import REPO
import servers

from sandbox_kernel import install

CONFIG = REPO / "examples" / "jupyterhub" / "jupyterhub_config.py"
CHP = REPO / ".e2e" / "node" / "node_modules" / ".bin" / "configurable-http-proxy"
TOKEN = "hub-admin-" + os.urandom(12).hex()
USERS = {"sbxhub-student": ("sbxhub-students", "free"), "sbxhub-examinee": ("sbxhub-exam", "offline")}

pytestmark = [pytest.mark.kernel, pytest.mark.slow, pytest.mark.e2e]


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


@pytest.fixture(scope="module")
def listener():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(16)
    acceptor = kernelutil.Acceptor(s)
    yield s.getsockname()[1]
    acceptor.close()


@pytest.fixture(scope="module")
def hub(tmp_path_factory, request):
    if os.geteuid() != 0:
        pytest.skip("the JupyterHub test creates users (useradd) and spawns their servers: run it as root")
    missing = [what for what, ok in [
        (f"{CHP} (scripts/setup-e2e.sh installs configurable-http-proxy from npm)", os.access(CHP, os.X_OK)),
        ("the Python package jupyterhub (pip install -e '.[e2e]')", shutil.which("jupyterhub", path=os.path.dirname(sys.executable))),
        ("useradd/groupadd", shutil.which("useradd") and shutil.which("groupadd")),
    ] if not ok]
    if missing:
        pytest.skip("missing: " + "; ".join(missing))
    request.getfixturevalue("unprivileged")  # this Python and the suite's prefix become usable by other users
    users = {name: ensure_user(name, group) for name, (group, _) in USERS.items()}
    for pw in users.values():
        plant_user_site_pth(pw)
    install.install("free", prefix=str(kernelutil.PREFIX))

    work = tmp_path_factory.mktemp("hub")
    os.chmod(work, 0o700)
    port, hub_port, api_port = servers.free_port(), servers.free_port(), servers.free_port()
    bin_dir = os.path.dirname(sys.executable)
    (work / "test_config.py").write_text(f"""
c = get_config()
load_subconfig({str(CONFIG)!r})
c.JupyterHub.bind_url = "http://127.0.0.1:{port}"
c.JupyterHub.hub_bind_url = "http://127.0.0.1:{hub_port}"
c.ConfigurableHTTPProxy.api_url = "http://127.0.0.1:{api_port}"
c.ConfigurableHTTPProxy.command = [{str(CHP)!r}]
c.JupyterHub.db_url = "sqlite:///{work}/jupyterhub.sqlite"
c.JupyterHub.cookie_secret_file = "{work}/cookie_secret"
c.JupyterHub.pid_file = "{work}/jupyterhub.pid"
c.JupyterHub.services = [{{"name": "test-admin", "api_token": {TOKEN!r}}}]
c.JupyterHub.load_roles = [{{"name": "test-admin", "services": ["test-admin"],
                             "scopes": ["admin:users", "admin:servers", "tokens"]}}]
c.Spawner.ip = "127.0.0.1"
# a server Python that is not a venv (conda-like): the base interpreter, this environment's packages on PYTHONPATH
c.Spawner.cmd = [{sys._base_executable!r}, "-m", "jupyterhub.singleuser"]
c.Spawner.start_timeout = 120
c.Spawner.http_timeout = 120
# the suite's kernelspecs (a real platform installs them system-wide: --sys-prefix)
c.Spawner.environment.update({{"JUPYTER_PATH": {str(kernelutil.PREFIX / "share" / "jupyter")!r},
                               "PYTHONPATH": {sysconfig.get_paths()["purelib"]!r}}})
""")
    env = dict(os.environ)
    env["PATH"] = bin_dir + os.pathsep + env.get("PATH", "")
    env["SANDBOX_CEILING_GROUPS"] = ",".join(f"{g}={p}" for g, p in USERS.values())
    env.pop("SANDBOX_KERNEL_CEILING", None)
    srv = servers.Server("jupyterhub", [os.path.join(bin_dir, "jupyterhub"), "-f", str(work / "test_config.py")],
                         env=env, cwd=str(work), log_dir=work)
    base = f"http://127.0.0.1:{port}"
    try:
        srv.wait_http(f"{base}/hub/api/", headers={"Authorization": f"token {TOKEN}"})
        yield srv, base, users
    finally:
        import requests

        for name in USERS:  # stop the single-user servers through the Hub first
            try:
                requests.delete(f"{base}/hub/api/users/{name}/server", headers={"Authorization": f"token {TOKEN}"},
                                timeout=60)
            except requests.RequestException:
                pass
        srv.stop(timeout=60)


PLANT = ("import os; open(os.path.expanduser('~/sbxhub-plant.log'), 'a').write("
         "[l for l in open('/proc/self/status') if l.startswith('Seccomp:')][0].split()[1] + ' ' + open('/proc/self/cmdline').read().replace('\\0', ' ')[:200] + '\\n')\n")


def plant_user_site_pth(pw) -> None:
    """What a kernel can write (the user site is not protected: `pip install --user`): a .pth
    that logs every interpreter which runs it, with its seccomp mode."""
    sp = Path(pw.pw_dir) / ".local" / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / "site-packages"
    sp.mkdir(parents=True, exist_ok=True)
    (sp / "zz-sbxhub-plant.pth").write_text(PLANT)
    (Path(pw.pw_dir) / "sbxhub-plant.log").unlink(missing_ok=True)
    for p in [sp / "zz-sbxhub-plant.pth"] + [sp, *sp.parents][:5]:
        if str(p).startswith(pw.pw_dir + "/"):
            os.chown(p, pw.pw_uid, pw.pw_gid)


def plant_log(pw) -> list[str]:
    try:
        return (Path(pw.pw_dir) / "sbxhub-plant.log").read_text().splitlines()
    except OSError:
        return []


def hub_api(base: str, method: str, path: str, **kw):
    import requests

    return requests.request(method, f"{base}/hub/api{path}", headers={"Authorization": f"token {TOKEN}"},
                            timeout=120, **kw)


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


LIFT = """
import os
path = os.path.expanduser('~/.jupyter/jupyter_server_config.py')
try:
    with open(path, 'w') as fh:
        fh.write('import os; os.environ.pop("SANDBOX_KERNEL_CEILING", None)')
    print('written')
except OSError as e:
    print('refused', type(e).__name__)
"""


def lift_the_ceiling(base: str, name: str, token: str, kernel) -> tuple[str, int]:
    """The user's way to a server without a ceiling: server config that runs at its next start,
    written from a kernel (a protected path) or through the file browser (a hidden path)."""
    import requests

    written = kernel.execute(LIFT)["stdout"].strip()
    r = requests.put(f"{base}/user/{name}/api/contents/.jupyter/jupyter_server_config.py",
                     headers={"Authorization": f"token {token}"}, timeout=60,
                     json={"type": "file", "format": "text",
                           "content": 'import os; os.environ.pop("SANDBOX_KERNEL_CEILING", None)'})
    return written, r.status_code


def test_each_users_kernel_is_narrowed_by_their_groups_ceiling(hub, listener):
    srv, base, users = hub
    results, attempts = {}, {}
    for name, (_group, _ceiling) in USERS.items():
        token = start_server(srv, base, name)
        k = servers.RemoteKernel(f"{base}/user/{name}", token, "sandbox-free")
        try:
            r = k.execute("import roop")
            assert r["status"] == "error" and r["ename"] == "ProhibitedImportError", r
            r = k.execute(NET_PROBE.format(port=listener))
            assert r["status"] == "ok", r
            results[name] = r["stdout"].split()
            r = k.execute("print(6 * 7)")
            assert r["stdout"].strip() == "42", r
            attempts[name] = lift_the_ceiling(base, name, token, k)
        finally:
            k.shutdown()
    student, examinee = users["sbxhub-student"], users["sbxhub-examinee"]
    # free: TCP allowed to 53/80/443 only (Landlock refuses this port); offline: no INET socket at all (seccomp)
    assert results["sbxhub-student"] == ["ceiling", "free", "uid", str(student.pw_uid), "net", "EACCES"], results
    assert results["sbxhub-examinee"] == ["ceiling", "offline", "uid", str(examinee.pw_uid), "net", "EPERM"], results
    for name, (kernel_write, contents_status) in attempts.items():
        assert kernel_write.startswith("refused"), (name, kernel_write)
        assert contents_status in (400, 403), (name, contents_status)
        assert not os.path.exists(os.path.join(users[name].pw_dir, ".jupyter", "jupyter_server_config.py"))
    for name, pw in users.items():  # the servers (Seccomp 0) never ran the planted .pth
        unconfined = [line for line in plant_log(pw) if line.split()[0] == "0"]
        assert not unconfined, (name, unconfined)
    log = srv.log(tail=500_000)  # the hook says what it chose
    assert "sandbox-kernel: ceiling 'free' for user sbxhub-student" in log, log[-3000:]
    assert "sandbox-kernel: ceiling 'offline' for user sbxhub-examinee" in log, log[-3000:]
