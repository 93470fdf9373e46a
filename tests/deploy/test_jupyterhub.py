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
import shutil
import sys
import sysconfig
from pathlib import Path

import hubutil
import kernelutil
import pytest
import servers
from hubutil import CHP, NET_PROBE, ensure_user, running_hub, start_server

from sandbox_kernel import install

USERS = {"sbxhub-student": ("sbxhub-students", "free"), "sbxhub-examinee": ("sbxhub-exam", "offline")}

pytestmark = [pytest.mark.kernel, pytest.mark.slow, pytest.mark.e2e]


@pytest.fixture(scope="module")
def listener():
    li = kernelutil.Listener()
    yield li.port
    li.close()


@pytest.fixture(scope="module")
def hub(tmp_path_factory, request):
    if os.geteuid() != 0:
        pytest.skip("the JupyterHub test creates users (useradd) and spawns their servers: run it as root")
    missing = [what for what, ok in [
        (hubutil.CHP_MISSING, os.access(CHP, os.X_OK)),
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
    config = f"""
# a server Python that is not a venv (conda-like): the base interpreter, this environment's packages on PYTHONPATH
c.Spawner.cmd = [{sys._base_executable!r}, "-m", "jupyterhub.singleuser"]
# the suite's kernelspecs (a real platform installs them system-wide: --sys-prefix)
c.Spawner.environment.update({{"JUPYTER_PATH": {str(kernelutil.PREFIX / "share" / "jupyter")!r},
                               "PYTHONPATH": {sysconfig.get_paths()["purelib"]!r}}})
"""
    with running_hub(work, config, dict(USERS.values()), list(USERS)) as (srv, base):
        yield srv, base, users


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
