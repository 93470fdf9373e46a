"""Import-guard bypasses (research.md: `__subclasses__` walks, gc referents, direct loader
calls, `exec` of source, ctypes patching interpreter state, `sys.modules` planting) and
child interpreters that skip the guard hook.

The guard is SOFT: these tests expect that determined code may get a denied package to
run. What they assert is that the package's *effect* is still stopped by the hard layers:
the fake banned tool (a package named like a denied tunnel client) connects to a port the
profile does not list and runs a program it downloaded; the listener must see no
connection and the program must not run."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from rtutil import attempt

pytestmark = pytest.mark.redteam

TOOL = r'''
import json, os, shutil, socket, subprocess
_v, _cwd = os.environ["RT_VARIANT"], os.environ["RT_CWD"]
_out = {"started": True}
try:
    socket.create_connection(("127.0.0.1", int(os.environ["RT_PORT"])), timeout=3).close()
    _out["connect"] = "ok"
except OSError as e:
    _out["connect"] = str(e.errno)
_dst = os.path.join(_cwd, "rt-tool-bin-" + _v)
try:
    shutil.copy("/usr/bin/touch", _dst)
    os.chmod(_dst, 0o755)
    subprocess.run([_dst, os.path.join(_cwd, "rt-tool-ran-" + _v)], timeout=30)
    _out["exec"] = "ran"
except OSError as e:
    _out["exec"] = str(e.errno)
with open(os.path.join(_cwd, "rt-tool-" + _v + ".json"), "w") as fh:
    json.dump(_out, fh)
'''

# Each variant gets the denied package imported (or its code run) despite the guard. The
# name is assembled at run time so that the pre-execution check cannot read it.
NAME = "''.join(map(chr, [112, 121, 110, 103, 114, 111, 107]))"  # a denied tunnel client
VARIANTS = {
    "subclasses_walk": f"""
name = {NAME}
def walk(cls, seen=set()):
    for c in type.__subclasses__(cls):
        if c not in seen:
            seen.add(c)
            yield c
            yield from walk(c, seen)
loader_cls = next(c for c in walk(object) if c.__name__ == "SourceFileLoader")
loader_cls(name, os.path.join(tools, name, "__init__.py")).load_module()
""",
    "gc_referents": f"""
import gc, sys
name = {NAME}
for o in gc.get_objects():
    if type(o).__name__ == "ImportGuard":
        for ref in gc.get_referrers(o):
            if ref is sys.meta_path:
                sys.meta_path.remove(o)
sys.path.insert(0, tools)
__import__(name)
""",
    "direct_loader": f"""
import importlib.machinery, importlib.util
name = {NAME}
spec = importlib.util.spec_from_file_location(name, os.path.join(tools, name, "__init__.py"))
importlib.machinery.SourceFileLoader(name, spec.origin).exec_module(importlib.util.module_from_spec(spec))
""",
    "exec_source": f"""
name = {NAME}
exec(compile(open(os.path.join(tools, name, "__init__.py")).read(), "tool", "exec"), {{}})
""",
    "ctypes_pyrun": f"""
import ctypes
name = {NAME}
src = ("import sys\\nsys.meta_path[:] = [f for f in sys.meta_path if 'Guard' not in type(f).__name__]\\n"
       f"sys.path.insert(0, {{tools!r}})\\n__import__({{name!r}})\\n")
ctypes.pythonapi.PyRun_SimpleString(src.encode())
""",
    "sys_modules_plant": f"""
import sys, types
name = {NAME}
mod = types.ModuleType(name)
sys.modules[name] = mod
exec(compile(open(os.path.join(tools, name, "__init__.py")).read(), "tool", "exec"), mod.__dict__)
__import__(name)
""",
    "child_python_S": f"""
import subprocess, sys
name = {NAME}
subprocess.run([sys.executable, "-S", "-c", f"import sys; sys.path.insert(0, {{tools!r}}); import {{name}}"], timeout=60)
""",
    "child_without_policy_env": f"""
import subprocess, sys
name = {NAME}
env = dict(os.environ)
env.pop("SANDBOX_KERNEL_POLICY", None)
subprocess.run([sys.executable, "-c", f"import {{name}}"], env={{**env, "PYTHONPATH": tools}}, timeout=60)
""",
}


@pytest.mark.parametrize("variant", [pytest.param(v, marks=attempt("landlock+seccomp", hard=True))
                                     for v in VARIANTS])
def test_import_guard_bypass_still_cannot_reach_network_or_exec(pool, who, listener, variant):
    """The import guard (soft) may be bypassed; Landlock's TCP and exec rules (hard) stop the tool."""
    k = pool.get("free", who)
    tools = os.path.join(k.cwd, "rt_tools")
    pkg = Path(tools, "pyngrok")
    pkg.mkdir(parents=True, exist_ok=True)
    (pkg / "__init__.py").write_text(TOOL)
    if who is not None:
        for p in (tools, str(pkg), str(pkg / "__init__.py")):
            os.chown(p, who.pw_uid, who.pw_gid)
    r = k.run(f"""
import os
os.environ.update(RT_VARIANT={variant!r}, RT_CWD=os.getcwd(), RT_PORT="{listener.port}")
tools = {tools!r}
""" + VARIANTS[variant], timeout=120)
    report_path = Path(k.cwd, f"rt-tool-{variant}.json")
    report = json.loads(report_path.read_text()) if report_path.exists() else {"started": False, "cell": r.ename}
    ran = Path(k.cwd, f"rt-tool-ran-{variant}")
    print(f"{variant}: soft layer {'bypassed' if report.get('started') else 'held'}: {report}")
    try:
        assert listener.accepted == 0, f"the banned tool connected to an unlisted port ({variant}): {report}"
        assert not ran.exists(), f"the banned tool ran a program it downloaded ({variant}): {report}"
    finally:
        for p in (report_path, ran, Path(k.cwd, f"rt-tool-bin-{variant}")):
            p.unlink(missing_ok=True)
    k.run("import sys; [sys.modules.pop(m) for m in list(sys.modules) if m.startswith('pyngrok')]")
