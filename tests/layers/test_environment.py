"""The environment layer's deferral (layers/environment.py): where the kernel adds a second
seccomp stage after its start, what the interpreter would take from the environment at its
start (PYTHONPATH, PYTHONPYCACHEPREFIX, the user site) is held back by the launcher and put
back by the kernel under its final filter. Kernels run through the launcher never inherit the
server's PYTHONNOUSERSITE. The red-team side, through real kernels, is
tests/redteam/test_early_code.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from testenv import REPO

from sandbox_kernel import standins
from sandbox_kernel.layers import environment
from sandbox_kernel.layers.context import LaunchContext
from sandbox_kernel.policy import effective


def ctx_for(env: dict, *, ports=(), transport="tcp") -> LaunchContext:
    ctx = LaunchContext({"PATH": os.defpath, "HOME": "/nonexistent", **env}, ["python"])
    ctx.kernel_ports = list(ports)
    ctx.transport = transport
    return ctx


SERVER = {"PYTHONPATH": "/srv/lib", "PYTHONPYCACHEPREFIX": "/srv/pyc", "PYTHONNOUSERSITE": "1"}


def test_offline_kernel_over_tcp_defers_what_the_interpreter_reads_at_start():
    env = environment.variables(effective("offline"), ctx_for(SERVER, ports=[5000, 5001, 5002, 5003, 5004]))
    assert env["PYTHONPATH"] is None and env["PYTHONPYCACHEPREFIX"] is None and env["PYTHONNOUSERSITE"] == "1"
    assert standins.json_loads(env[environment.DEFER_ENV]) == {"PYTHONPATH": "/srv/lib",
                                                                "PYTHONPYCACHEPREFIX": "/srv/pyc"}


@pytest.mark.parametrize("profile,ports,transport", [("free", [5000], "tcp"), ("offline", [], "tcp"),
                                                      ("offline", [], "ipc")])
def test_without_a_second_stage_nothing_is_deferred_and_the_servers_nousersite_is_dropped(profile, ports, transport):
    """restricted/full, a command without a connection file, the ipc transport: the launcher's
    filter is the final one when the interpreter starts."""
    env = environment.variables(effective(profile), ctx_for(SERVER, ports=ports, transport=transport))
    assert environment.DEFER_ENV not in env and "PYTHONPATH" not in env and "PYTHONPYCACHEPREFIX" not in env
    assert env["PYTHONNOUSERSITE"] is None  # the server's setting: not passed on to sandboxed processes
    assert "PYTHONNOUSERSITE" not in environment.variables(effective(profile), ctx_for({}, ports=ports,
                                                                                       transport=transport))


RESTORE = r"""
import json, os, site, sys
sys.path.insert(0, sys.argv[1])
from sandbox_kernel.layers import environment
before = list(sys.path)
done = environment.restore_deferred()
print(json.dumps({"done": done, "path": sys.path, "before": before, "pyc": sys.pycache_prefix,
                  "env": {k: os.environ.get(k) for k in ("PYTHONPATH", "PYTHONPYCACHEPREFIX", "PYTHONNOUSERSITE",
                                                          environment.DEFER_ENV)},
                  "usercustomize": "usercustomize" in sys.modules, "enable": site.ENABLE_USER_SITE}))
"""


def restore(tmp_path, saved: dict, *flags: str, python: str = sys._base_executable) -> dict:
    userbase = tmp_path / "ub"
    us = userbase / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / "site-packages"
    us.mkdir(parents=True, exist_ok=True)
    (us / "usercustomize.py").write_text("")
    (us / "zz.pth").write_text(str(tmp_path / "from-pth") + "\n")
    (tmp_path / "from-pth").mkdir(exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    env.update(PYTHONNOUSERSITE="1", PYTHONUSERBASE=str(userbase), HOME=str(tmp_path),
               **{environment.DEFER_ENV: json.dumps(saved)})
    p = subprocess.run([python, *flags, "-c", RESTORE, str(REPO)], capture_output=True, text=True, env=env,
                       cwd=str(tmp_path), timeout=120)
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)
    out["user_site"] = str(us)
    return out


def test_the_kernel_puts_back_the_user_site_pythonpath_and_pycache_prefix(tmp_path):
    """A Python that is not a venv (the base interpreter): the user site is added before its
    site-packages with the directories of its .pth files, usercustomize is imported,
    PYTHONPATH goes first, and the kernel's environment is the server's again (without
    PYTHONNOUSERSITE, which the launcher set)."""
    out = restore(tmp_path, {"PYTHONPATH": f"{tmp_path}/a{os.pathsep}{tmp_path}/b", "PYTHONPYCACHEPREFIX": "/x/pyc"})
    path = out["path"]
    assert path[:2] == [f"{tmp_path}/a", f"{tmp_path}/b"], path
    us = path.index(out["user_site"])
    assert path[us + 1] == str(tmp_path / "from-pth"), path
    first_sp = next(i for i, p in enumerate(path) if p.endswith("site-packages") and p != out["user_site"])
    assert us < first_sp, path
    assert out["usercustomize"] and out["enable"] and out["pyc"] == "/x/pyc"
    assert out["env"] == {"PYTHONPATH": f"{tmp_path}/a{os.pathsep}{tmp_path}/b", "PYTHONPYCACHEPREFIX": "/x/pyc",
                          "PYTHONNOUSERSITE": None, environment.DEFER_ENV: None}


@pytest.mark.parametrize("how", ["-s", "-I", "venv"])
def test_no_user_site_where_site_would_not_have_added_it(tmp_path, how):
    python = sys.executable if how == "venv" else sys._base_executable  # this repository's venv: no system site
    out = restore(tmp_path, {"PYTHONPATH": None, "PYTHONPYCACHEPREFIX": None}, *([how] if how != "venv" else []),
                  python=python)
    assert out["user_site"] not in out["path"] and not out["usercustomize"], out
    assert out["env"]["PYTHONNOUSERSITE"] is None and out["env"][environment.DEFER_ENV] is None
