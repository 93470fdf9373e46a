"""Helpers of the red-team suite (tests/redteam/); fixtures and hooks are in conftest.py.

Every test here is an *attempt* a hostile tenant makes from a cell. Each one

- runs through a real kernel (jupyter_client + the launcher), as root and as the
  ordinary user (the `who` fixture of tests/conftest.py);
- names the layer that must stop it with the `attempt` marker (`layer=...`,
  `hard=True|False`): soft layers (import guard, pre-check) are expected to be
  bypassed, and the test then asserts that a hard layer still stops the *effect*;
- asserts that the effect did not happen (the file was not written, the listener saw
  no connection, the process is gone), not that some error text appeared.

Kernels that an attempt does not damage are shared per (profile, user) for the whole
session (`pool`); destructive attempts (restarts, shutdowns, bombs) start their own.
docs/security.md has one row per attempt; tests/redteam/test_security_doc.py checks that
the table and the suite name the same tests.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import kernelutil
import pytest
from testenv import REPO

from sandbox_kernel.layers import registry

JSON_TAG = "RT-JSON:"

# what an attempt may name as stopping it: every layer, and two checks that are not layers (the
# pre-execution check and the launcher's connection-file validation)
LAYERS = set(registry.NAMES) | {"precheck", "connection_file"}


def attempt(layer: str, hard: bool = True):
    """Mark a test (or a pytest.param) as an attempt stopped by `layer` (a '+'-joined list
    when several layers each stop it on their own)."""
    for part in layer.split("+"):
        assert part in LAYERS, f"unknown layer {part!r}"
    return pytest.mark.attempt(layer=layer, hard=hard)


# --------------------------------------------------------------------------- cells


PRELUDE = r"""
import ctypes as _rt_ctypes, errno as _rt_errno, json as _rt_json, os as _rt_os
def rt_try(fn):
    try:
        r = fn()
        return "ok" if r is None else r
    except OSError as e:
        return _rt_errno.errorcode.get(e.errno, str(e.errno)) if e.errno else type(e).__name__
def rt_write(path, text, mode="w"):
    with open(path, mode) as fh:
        fh.write(text)
def rt_out(obj):
    print(%r + _rt_json.dumps(obj), flush=True)
""" % JSON_TAG


def probe(kernel, code: str, timeout: float = 120) -> dict:
    """Run `code` (after PRELUDE) in `kernel`; it reports with rt_out({...})."""
    r = kernel.run(PRELUDE + textwrap.dedent(code), timeout=timeout)
    lines = [line for line in r.stdout.splitlines() if line.startswith(JSON_TAG)]
    assert lines, f"the probe reported nothing:\n{r}"
    out = {}
    for line in lines:
        out.update(json.loads(line[len(JSON_TAG):]))
    return out


REPORT = ("import json as _rt_json\n"
          "def report(obj):\n"
          "    print('RESULT ' + _rt_json.dumps(obj), flush=True)\n")


def run_reporting(kernel, helpers: str, code: str, timeout: float = 120) -> dict:
    """Run `helpers` and `code` in `kernel`; the cell reports a dict with report({...}), and
    the last one is returned (the style of the memfd and side-door modules)."""
    r = kernel.run(helpers + REPORT + textwrap.dedent(code), timeout=timeout)
    lines = [line for line in r.stdout.splitlines() if line.startswith("RESULT ")]
    assert lines, f"the cell reported nothing:\n{r}"
    return json.loads(lines[-1][len("RESULT "):])


def child_python(code: str) -> str:
    """A cell snippet that runs `code` in a child interpreter and returns its last line (or the
    signal that killed it): attacks that could hurt the shared kernel run there."""
    return """
import subprocess as _rt_sp, sys as _rt_sys
def rt_child(src, *args):
    p = _rt_sp.run([_rt_sys.executable, "-c", src, *args], capture_output=True, text=True, timeout=60)
    if p.returncode < 0:
        return f"killed by signal {-p.returncode}"
    lines = p.stdout.strip().splitlines()
    return lines[-1] if lines else ("exit %d: %s" % (p.returncode, p.stderr.strip()[-300:]))
"""


# --------------------------------------------------------------------------- listeners


Listener = kernelutil.Listener  # (the red-team files' name for it)


class UnixDaemon(kernelutil.Acceptor):
    """A pathname UNIX-socket server, standing for a host daemon (docker, containerd, ...)."""

    def __init__(self, path: str):
        self.path = path
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.bind(path)
        os.chmod(path, 0o666)  # as many daemons' sockets are for their group or everyone
        sock.listen(16)
        super().__init__(sock)

    def close(self):
        super().close()
        try:
            os.unlink(self.path)
        except OSError:
            pass


# --------------------------------------------------------------------------- kernels


def new_cwd(who) -> str:
    """A fresh working directory owned by the kernel's user."""
    if who is not None:
        return kernelutil.user_workdir(who)
    return tempfile.mkdtemp(prefix="sbx-rt-root-")


def start(profile: str, who, *, cwd: str | None = None, env: dict | None = None, python: str | None = None,
          spec_suffix: str = "", connection_dir: str | None = None) -> kernelutil.Kernel:
    """kernelutil.Kernel on `profile` as `who` (None: root), optionally with another interpreter
    (a tenant's environment) and its connection file in `connection_dir`. The launcher's stderr
    goes to `kernel.stderr_path` (start-up refusals)."""
    return kernelutil.Kernel(profile, cwd=cwd, user=who.pw_name if who is not None else None, env=env,
                             python=python, spec_suffix=spec_suffix, connection_dir=connection_dir,
                             startup_timeout=90)


def stop(k) -> None:
    """Shut the kernel down and remove what start() created for it."""
    try:
        k.shutdown()
    except Exception:
        pass


# --------------------------------------------------------------------------- processes


def process_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            state = fh.read().rsplit(")", 1)[1].split()[0]
        return state not in ("Z", "X")
    except (OSError, IndexError):
        return False


def kill_leftovers(pids) -> None:
    """Kill processes an attempt left behind (only pids that the attempt reported)."""
    for pid in pids:
        try:
            os.kill(int(pid), signal.SIGKILL)
        except (OSError, ValueError):
            pass


# --------------------------------------------------------------------------- a tenant's environment


def see_outer_env(site_packages) -> None:
    """Let an environment see this one's packages with path lines in a .pth, as a platform's .pth
    would add a shared package directory (the launcher grants read on the directories .pth path
    lines name; it cannot follow code in an `import` line): this environment's site-packages and
    what its own .pth path lines add (an editable checkout)."""
    import sysconfig

    from sandbox_kernel.layers.python_files import pth_dirs

    real_sp = sysconfig.get_paths()["purelib"]
    Path(site_packages, "_rt_outer_env.pth").write_text("".join(f"{d}\n" for d in [real_sp] + pth_dirs(real_sp)))


def tenant_venv(parent: str, who) -> str:
    """A virtual environment inside the tenant's working directory, owned by the tenant (as
    `python -m venv .venv` in a checkout, or a platform that lets tenants `pip install` into
    the kernel's environment), which sees this environment's packages. Returns its python."""
    venv = os.path.join(parent, "tenant-venv")
    subprocess.run([sys._base_executable, "-m", "venv", "--without-pip", venv], check=True, capture_output=True)
    ver = f"python{sys.version_info.major}.{sys.version_info.minor}"
    sp = Path(venv) / "lib" / ver / "site-packages"
    see_outer_env(sp)
    shutil.copy(REPO / "sandbox_kernel_guard.pth", sp / "sandbox_kernel_guard.pth")
    if who is not None:
        for root, dirs, files in os.walk(venv):
            for n in dirs + files:
                os.lchown(os.path.join(root, n), who.pw_uid, who.pw_gid)
        os.lchown(venv, who.pw_uid, who.pw_gid)
    return os.path.join(venv, "bin", "python")


# --------------------------------------------------------------------------- planted code

# What planted code records about the process it runs in. It acts only where the test set
# SBX_RT_RECORD (so a plant left in a shared interpreter does nothing to anyone else).
PAYLOAD = r'''
import json, os, socket
def _field(name):
    for line in open("/proc/self/status"):
        if line.startswith(name + ":"):
            return line.split(":", 1)[1].strip()
rec = {"tag": TAG, "pid": os.getpid(), "seccomp": _field("Seccomp"), "nnp": _field("NoNewPrivs"),
       "capeff": _field("CapEff"), "filters": _field("Seccomp_filters"),
       "argv": open("/proc/self/cmdline", "rb").read().replace(b"\0", b" ").decode(errors="replace")[:200]}
try:
    socket.create_connection(("127.0.0.1", int(os.environ["SBX_RT_PORT"])), timeout=3).close()
    rec["connect"] = "ok"
except OSError as e:
    rec["connect"] = str(e.errno)
try:
    socket.socket(socket.AF_INET, socket.SOCK_STREAM).close()
    rec["inet"] = "ok"
except OSError as e:
    rec["inet"] = str(e.errno)
with open(os.environ["SBX_RT_RECORD"], "a") as fh:
    fh.write(json.dumps(rec) + "\n")
'''


def plant_line(tag: str) -> str:
    """One line that runs PAYLOAD (kept beside the record file) where SBX_RT_RECORD is set."""
    return (f'import os; os.environ.get("SBX_RT_RECORD") and exec(compile(open(os.environ["SBX_RT_RECORD"] '
            f'+ ".py").read(), "rt-payload", "exec"), {{"TAG": {tag!r}}})')


def records(path: str) -> list[dict]:
    try:
        return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
    except OSError:
        return []


def unconfined(rec: dict) -> bool:
    return rec["seccomp"] != "2" or rec["nnp"] != "1" or rec["connect"] == "ok"


def user_name(who) -> str:
    return who.pw_name if who is not None else "root"


def home_of(who) -> str:
    return who.pw_dir if who is not None else pwd.getpwuid(0).pw_dir
