"""Code the tenant writes that the kernel's own start runs: everything
the kernel process executes or reads from a place the tenant may write must run only once
every seccomp filter is in force.

Under ``offline`` over TCP the kernel installs a second seccomp stage after its start (its
ZMQ sockets need TCP; layers/seccomp.py). A cell plants code into each place the kernel's
start reads: IPython's profile (ipython_config.py, the kernel application's
sandbox_kernel_config.py and .json, ipython_kernel_config.py, start-up .py and .ipy files),
the user site (a .pth file, usercustomize), the file PYTHONSTARTUP names, and a directory
PYTHONPATH names (sitecustomize, a package shadowing zmq), JUPYTER_CONFIG_DIR. Then the kernel is restarted as a
user does. Each planted line records the filters in force where it runs (rtutil.PAYLOAD).

Secure behaviour: every record shows Seccomp 2 with as many filters as a cell sees and an
internet socket refused (``offline``). Legitimate behaviour kept: the start-up files, the
user site's .pth and usercustomize still run (under the full filter) and a module of the
user site (``pip install --user``) imports.

The kernel's interpreter is an environment whose user site is on (a venv with
``include-system-site-packages = true``, as a non-venv interpreter such as conda's
/opt/conda would be), root-owned like a platform's; the user site is PYTHONUSERBASE inside
the tenant's working directory (so root's real ~/.local is never touched).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import kernelutil
import pytest
from testenv import REPO
from rtutil import PAYLOAD, Listener, attempt, new_cwd, plant_line, probe, records, see_outer_env, start, stop

pytestmark = pytest.mark.redteam

PLACES = ["ipython_config", "sandbox_kernel_config", "sandbox_kernel_config_json", "ipython_kernel_config",
          "startup_py", "startup_ipy", "user_pth", "usercustomize", "pythonstartup", "pythonpath_sitecustomize",
          "pythonpath_shadow_zmq", "jupyter_config"]
# What a tenant legitimately uses: these still run (under the full filter). The kernel
# application is named sandbox-kernel, so IPython reads sandbox_kernel_config.py/.json and
# not ipython_kernel_config.py (planted all the same: it must not run early either).
# PYTHONPATH names a directory the tenant writes (a platform's choice, e.g. ~/lib): its
# sitecustomize runs after the final filter only if no trusted one was imported at start (not
# required here: another test may plant one in the base stdlib), and a package there named like
# one the kernel imports at its start (zmq) must not be the one imported (it records, then hands
# over to the real zmq, so the kernel works either way).
# Jupyter's config directory (here JUPYTER_CONFIG_DIR in the working directory; ~/.jupyter is
# protected) is read by the server and clients, never by the kernel: planted all the same.
MUST_STILL_RUN = [p for p in PLACES if p not in ("ipython_kernel_config", "pythonpath_sitecustomize",
                                                 "pythonpath_shadow_zmq", "jupyter_config")]
SHADOW = """{line}
import os as _o, sys as _s
_s.modules.pop(__name__)
_here = _o.path.dirname(_o.path.dirname(_o.path.abspath(__file__)))
_saved = list(_s.path)
_s.path[:] = [p for p in _s.path if _o.path.abspath(p or ".") != _here]
try:
    import zmq as _real
finally:
    _s.path[:] = _saved
_s.modules[__name__] = _real
"""

FILTERS = """
import os, socket
def rt_field(name):
    for line in open("/proc/self/status"):
        if line.startswith(name + ":"):
            return line.split(":", 1)[1].strip()
rt_cell = {"cell_filters": rt_field("Seccomp_filters"), "cell_seccomp": rt_field("Seccomp"),
           "cell_inet": rt_try(lambda: socket.socket(socket.AF_INET, socket.SOCK_STREAM).close())}
"""

PLANT = """
import sys
ipy = os.path.expanduser("~/.ipython/profile_default")
us = os.path.join(os.environ["PYTHONUSERBASE"], "lib", "python%d.%d" % sys.version_info[:2], "site-packages")
files = {{
    "ipython_config": (os.path.join(ipy, "ipython_config.py"), {line_ipython_config!r}),
    "ipython_kernel_config": (os.path.join(ipy, "ipython_kernel_config.py"), {line_ipython_kernel_config!r}),
    "sandbox_kernel_config": (os.path.join(ipy, "sandbox_kernel_config.py"), {line_sandbox_kernel_config!r}),
    "sandbox_kernel_config_json": (os.path.join(ipy, "sandbox_kernel_config.json"),
                                   _rt_json.dumps({{"IPKernelApp": {{"exec_lines": [{line_sandbox_kernel_config_json!r}]}}}})),
    "startup_py": (os.path.join(ipy, "startup", "00-rt-early.py"), {line_startup_py!r}),
    "startup_ipy": (os.path.join(ipy, "startup", "00-rt-early.ipy"), {line_startup_ipy!r}),
    "user_pth": (os.path.join(us, "zz-rt-early.pth"), {line_user_pth!r}),
    "usercustomize": (os.path.join(us, "usercustomize.py"), {line_usercustomize!r}),
    "user_module": (os.path.join(us, "rt_early_user_module.py"), "VALUE = 42"),
    "pythonstartup": (os.environ["PYTHONSTARTUP"], {line_pythonstartup!r}),
    "pythonpath_sitecustomize": (os.path.join(os.environ["PYTHONPATH"], "sitecustomize.py"),
                                 {line_pythonpath_sitecustomize!r}),
    "pythonpath_shadow_zmq": (os.path.join(os.environ["PYTHONPATH"], "zmq", "__init__.py"), {shadow!r}),
    "jupyter_config": (os.path.join(os.environ["JUPYTER_CONFIG_DIR"], "jupyter_config.py"), {line_jupyter_config!r}),
}}
res = dict(rt_cell)
for tag, (path, text) in files.items():
    res[tag + "_path"] = path
    if _rt_os.path.exists(path):
        res[tag] = "preexisting"  # never overwrite what is there (root's real profile)
        continue
    res[tag] = rt_try(lambda: (_rt_os.makedirs(_rt_os.path.dirname(path), exist_ok=True),
                               rt_write(path, text + "\\n"))[1])
rt_out(res)
"""

AFTER = FILTERS + """
import sys
us = os.path.join(os.environ["PYTHONUSERBASE"], "lib", "python%d.%d" % sys.version_info[:2], "site-packages")
res = dict(rt_cell)
try:
    import rt_early_user_module
    res["user_module"] = rt_early_user_module.VALUE
except ImportError as e:
    res["user_module"] = repr(e)
res["user_site_on_path"] = us in sys.path
res["nousersite"] = os.environ.get("PYTHONNOUSERSITE")
import subprocess
child = subprocess.run([sys.executable, "-c", "import sys, json; print(json.dumps(sys.path))"], capture_output=True,
                       text=True)
sites = lambda path: [p for p in path if p.endswith("site-packages")]
res["kernel_sites"], res["child_sites"] = sites(sys.path), sites(_rt_json.loads(child.stdout or "[]"))
rt_out(res)
"""


@pytest.fixture(scope="module")
def user_site_python():
    """A root-owned environment whose user site is on: a venv with system site packages that
    also sees this environment's packages (and its child-process guard hook)."""
    d = Path(kernelutil.PREFIX) / "user-site-env"
    if not (d / "bin" / "python").exists():
        subprocess.run([sys._base_executable, "-m", "venv", "--without-pip", "--system-site-packages", str(d)],
                       check=True, capture_output=True)
        sp = d / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / "site-packages"
        see_outer_env(sp)
        shutil.copy(REPO / "sandbox_kernel_guard.pth", sp / "sandbox_kernel_guard.pth")
        for root, dirs, files in os.walk(d):
            for n in dirs:
                os.chmod(os.path.join(root, n), 0o755)
            for n in files:
                p = os.path.join(root, n)
                if not os.path.islink(p):
                    os.chmod(p, 0o644 | (os.stat(p).st_mode & 0o111))
    return str(d / "bin" / "python")


@pytest.fixture(scope="module", params=["server-env-plain", "server-env-nousersite"])
def early(mwho, user_site_python, request):
    """A kernel, the plants and one restart; the Jupyter server's environment as it is by
    default, or with PYTHONNOUSERSITE=1 as docs/deploy-jupyterhub.md asks of the server."""
    listener = Listener()
    cwd = new_cwd(mwho)
    rec = os.path.join(cwd, "records.jsonl")
    Path(rec + ".py").write_text(PAYLOAD)
    env = {"SBX_RT_RECORD": rec, "SBX_RT_PORT": str(listener.port), "PYTHONUSERBASE": os.path.join(cwd, "userbase"),
           "PYTHONSTARTUP": os.path.join(cwd, "pythonstartup.py"), "PYTHONPATH": os.path.join(cwd, "pythonpath"),
           "JUPYTER_CONFIG_DIR": os.path.join(cwd, "jupyter-config")}
    if request.param == "server-env-nousersite":
        env["PYTHONNOUSERSITE"] = "1"  # the single-user server's setting (docs/deploy-jupyterhub.md)
    if mwho is not None:
        os.chown(rec + ".py", mwho.pw_uid, mwho.pw_gid)
    k = start("offline", mwho, cwd=cwd, env=env, python=user_site_python, spec_suffix="-early")
    report = {}
    try:
        report = probe(k, FILTERS + PLANT.format(shadow=SHADOW.format(line=plant_line("pythonpath_shadow_zmq")),
                                                 **{f"line_{t}": plant_line(t) for t in PLACES}))
        before = len(records(rec))
        k.restart()
        after = probe(k, AFTER)
        yield {"report": report, "records": records(rec), "before_restart": before, "after": after}
    finally:
        stop(k)
        listener.close()
        for tag, value in report.items():  # what was planted outside the working directory
            if not tag.endswith("_path") and value == "ok":
                Path(report[tag + "_path"]).unlink(missing_ok=True)
        shutil.rmtree(cwd, ignore_errors=True)


def _full(rec: dict, cell: dict) -> bool:
    return (rec["seccomp"] == "2" and rec["filters"] == cell["cell_filters"] and rec["inet"] != "ok"
            and rec["connect"] != "ok")


@pytest.mark.parametrize("place", PLACES)
@attempt("seccomp")
def test_code_planted_for_the_kernels_start_runs_before_its_last_filter(early, place):
    """A cell under `offline` plants code where the kernel's next start reads it (IPython's
    config and start-up files, the user site's .pth and usercustomize, PYTHONSTARTUP's file, and,
    where PYTHONPATH names a directory the tenant writes, its sitecustomize and a package
    named like one the kernel imports at its start):
    it must not run before the kernel's second seccomp stage, where it could create the
    internet sockets `offline` refuses and listen on them."""
    report, after = early["report"], early["after"]
    assert report["cell_seccomp"] == "2" and report["cell_inet"] != "ok", report  # what a cell sees
    assert after["cell_filters"] == report["cell_filters"], (after, report)
    if report[place] not in ("ok", "preexisting"):
        return  # the plant itself was refused: nothing of it can run
    recs = [r for r in early["records"] if r["tag"] == place]
    bad = [r for r in recs if not _full(r, report)]
    assert not bad, (f"{place} ran at the kernel's start with {bad[0]['filters']} seccomp filter(s) (a cell has "
                     f"{report['cell_filters']}); internet socket: {bad[0]['inet']}: {bad[0]}")


@attempt("seccomp")
def test_planted_start_up_code_still_runs_under_the_full_filter(early):
    """What a tenant legitimately puts there keeps working: start-up files, IPython config,
    the user site's .pth and usercustomize run (under the full filter), and a module of the
    user site (`pip install --user`) imports, also where the server's environment has
    PYTHONNOUSERSITE=1 as docs/deploy-jupyterhub.md says; the kernel's children do not
    inherit it."""
    report, after = early["report"], early["after"]
    ran = {r["tag"] for r in early["records"][early["before_restart"]:]}
    planted = [t for t in MUST_STILL_RUN if report[t] == "ok"]
    assert planted, report
    assert set(planted) <= ran, f"did not run at the restart: {sorted(set(planted) - ran)}"
    assert after["user_module"] == 42 and after["user_site_on_path"], after
    assert after["nousersite"] is None, after
    # the user site sits where site puts it in a child interpreter (which runs site as usual)
    assert after["kernel_sites"] == after["child_sites"], after
