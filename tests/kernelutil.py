"""Start real sandboxed kernels (jupyter_client) and run cells in them.

Kernelspecs are written into a per-session prefix on JUPYTER_PATH, with the same
argv ``sandbox-kernel install`` writes (optionally prefixed by setpriv to run as an
ordinary user), so every test goes through the launcher exactly as Jupyter does.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import pwd
import re
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from jupyter_client.manager import KernelManager

from sandbox_kernel import init_helper, policy_cache
from sandbox_kernel.errors import ProfileError
from sandbox_kernel.install import kernel_argv, launch_argv

TEST_USER = "sbxtest"

# The test being run (conftest.py's pytest_runtest_setup hook sets it): every helper that starts
# a kernel, or a launcher that execs one, checks that it carries the `kernel` marker, so that
# the fast tier (`pytest -m "not kernel"`) starts none.
current_test = None
MARKER_HINT = ("mark it with @pytest.mark.kernel (or the module's `pytestmark`), so that the fast tier "
               "`pytest -m \"not kernel\"` starts no kernel")


def require_kernel_marker(what: str = "a kernel") -> None:
    """Fail the running test (clearly, at once) if it starts `what` without the `kernel` marker."""
    item = current_test
    if item is not None and item.get_closest_marker("kernel") is None:
        if threading.current_thread() is not threading.main_thread():  # the test may not see the failure
            item.stash.setdefault(UNMARKED, []).append(what)
        pytest.fail(f"{item.nodeid} starts {what} but is not marked `kernel`: {MARKER_HINT}", pytrace=False)


UNMARKED = pytest.StashKey[list]()  # what an unmarked test started in a thread (failed at its teardown)

# Programs that start a kernel, a launcher, or a server or tool that starts kernels: what a test's
# subprocess.Popen (jupyter_client's and asyncio's included) may run only under the `kernel` marker.
KERNEL_PROGRAMS = ("jupyter-lab", "jupyter-server", "jupyter-notebook", "jupyterhub", "jupyter-enterprisegateway",
                   "papermill", "jupyter-nbconvert", "jupyter-execute", "sbatch", "srun", "salloc")


BOOT_IN_CODE = re.compile(r"boot\.py['\"]?,?\s+['\"]?run\b")


def kernel_command(argv) -> str | None:
    """What `argv` (a Popen argument: a list, or a shell string) starts that needs the `kernel`
    marker, or None: the launcher (boot.py), `sandbox-kernel run` or `doctor` (which starts
    each profile unless --no-try), the kernel itself (`-m sandbox_kernel`), the benchmarks,
    Jupyter servers, notebook runners and Slurm jobs."""
    words = argv.split() if isinstance(argv, (str, bytes)) else [os.fsdecode(a) for a in argv]
    words = [w.decode() if isinstance(w, bytes) else w for w in words]
    names = [os.path.basename(w) for w in words]
    for i, (w, name) in enumerate(zip(words, names)):
        nxt = words[i + 1] if i + 1 < len(words) else ""
        if name == "boot.py":
            return "the launcher (boot.py)"
        if BOOT_IN_CODE.search(w):  # a `python -c` script that runs the launcher's argv
            return "the launcher (boot.py ... run), from a script"
        if name in KERNEL_PROGRAMS or (name == "jupyter" and nxt in ("lab", "server", "notebook", "nbconvert",
                                                                        "execute", "enterprisegateway")):
            return f"{name} {nxt}".strip()
        if w == "-m" and nxt in ("sandbox_kernel", "ipykernel", "ipykernel_launcher", "benchmarks", "papermill",
                                 "jupyterhub", "jupyterlab", "nbclient", "enterprise_gateway"):
            return f"python -m {nxt}"
        if (name == "sandbox-kernel" or (w == "-m" and nxt == "sandbox_kernel.cli")) and i + 1 < len(words):
            sub = words[i + 2] if w == "-m" and i + 2 < len(words) else nxt
            if sub == "run" or (sub == "doctor" and "--no-try" not in words):
                return f"sandbox-kernel {sub}"
        if name.startswith("run_tour") or name == "run.py" and "benchmarks" in w:
            return w
    return None
# Outside /tmp on purpose: the kernelspec dir is protected, and a protected path inside
# a writable directory closes that directory to new entries (see layers/landlock.py).
PREFIX = Path(tempfile.mkdtemp(prefix="sandbox-kernel-tests-", dir="/var/tmp"))
os.chmod(PREFIX, 0o755)
SPECS = PREFIX / "share" / "jupyter" / "kernels"
PROFILES = PREFIX / "profiles"
AUDIT_DIR = PREFIX / "audit"


@dataclass
class Result:
    status: str
    stdout: str = ""
    stderr: str = ""
    ename: str = ""
    evalue: str = ""
    traceback: str = ""
    data: list = field(default_factory=list)
    execution_count: int | None = None

    @property
    def output(self) -> str:
        return self.stdout + self.stderr

    def __str__(self) -> str:
        return (f"status={self.status} ename={self.ename} evalue={self.evalue!r}\n--stdout--\n{self.stdout}"
                f"\n--stderr--\n{self.stderr}\n--traceback--\n{self.traceback}")


def write_profile(name: str, text: str) -> Path:
    PROFILES.mkdir(parents=True, exist_ok=True)
    os.chmod(PROFILES, 0o755)
    path = PROFILES / f"{name}.yaml"
    path.write_text(textwrap.dedent(text))
    os.chmod(path, 0o644)
    return path


def spec_name(profile: str, user: str | None) -> str:
    base = Path(profile).stem if ("/" in profile) else profile
    return f"t-{base}" + (f"-as-{user}" if user else "")


def spec_names() -> set[str]:
    """The kernelspecs the suite has installed so far (names)."""
    return set(os.listdir(SPECS)) if SPECS.is_dir() else set()


def remove_orphaned_specs(before: set[str]) -> list[str]:
    """Remove the kernelspecs installed since `before` (spec_names() then) whose profile no longer
    resolves (a test deleted or broke it): left behind, they are orphaned kernelspecs, which
    `sandbox-kernel doctor` names with exit status 1 in every later test that runs it (the same
    judgement: install.why_orphaned)."""
    from sandbox_kernel.install import why_orphaned

    removed = []
    for name in sorted(spec_names() - before):
        try:
            spec = json.loads((SPECS / name / "kernel.json").read_text())
        except (OSError, ValueError):
            continue
        if why_orphaned(spec)[1]:
            shutil.rmtree(SPECS / name, ignore_errors=True)
            removed.append(name)
    return removed


_INIT_HELPER: list = []  # the namespace's init in C, built once per test process (None: no compiler here)


def built_init_helper() -> str | None:
    """sandbox-kernel-init, built as `sandbox-kernel install` builds it (init_helper.build)."""
    if not _INIT_HELPER:
        d = PREFIX / f"init-helper-{os.getpid()}"  # (one per xdist worker: no two compilers write one file)
        d.mkdir(exist_ok=True)
        _INIT_HELPER.append(init_helper.build(str(d))[0])
    return _INIT_HELPER[0]


def install_spec(profile: str, user: str | None = None, prefix: list[str] | None = None,
                 python: str | None = None, suffix: str = "", init: str = "c") -> str:
    """A kernelspec for `profile` (a name or a file), run as `user` when given, behind `prefix`
    (a command run as root that execs the rest, e.g. one that shapes the host first), with
    `python` as the kernel's interpreter when given (a tenant's environment). `suffix` tells
    apart kernelspecs of one profile and user that a test wants side by side. `init`: "c", the
    namespace's init in C beside the policy cache, as `sandbox-kernel install` puts it where the
    host has a C compiler; "python", none there (the launcher's own init goes on)."""
    name = (spec_name(profile, user) + suffix + ("-pyinit" if init == "python" else "")
            + (f"-p{os.urandom(4).hex()}" if prefix else ""))
    d = SPECS / name
    d.mkdir(parents=True, exist_ok=True)
    helper = built_init_helper() if init == "c" else None
    dest = d / init_helper.FILE_NAME
    if helper and not (dest.exists() and dest.read_bytes() == Path(helper).read_bytes()):
        # (a kernel of this kernelspec may be running it: write beside it and rename, as a file
        # being executed cannot be opened for writing)
        tmp = d / f".{init_helper.FILE_NAME}.{os.getpid()}"
        shutil.copy(helper, tmp)
        os.replace(tmp, dest)
    argv = kernel_argv(profile, python) if python else kernel_argv(profile)
    if user:
        argv = setpriv(user) + argv
    argv = list(prefix or []) + argv
    (d / "kernel.json").write_text(json.dumps({
        "argv": argv, "display_name": name, "language": "python", "interrupt_mode": "signal"}))
    try:  # as `sandbox-kernel install` does; a stale entry (a test rewrote the profile) is ignored
        policy_cache.write(str(d / policy_cache.FILE_NAME), [profile])
    except ProfileError:
        pass  # a profile a test expects to fail: the launcher reports it
    os.chmod(d / policy_cache.FILE_NAME, 0o644) if (d / policy_cache.FILE_NAME).exists() else None
    return name


class _UserKernelManager(KernelManager):
    """Makes the connection file readable by the ordinary user the kernel runs as."""

    run_as: tuple[int, int] | None = None

    def write_connection_file(self, **kwargs):
        super().write_connection_file(**kwargs)
        if self.run_as:
            os.chown(self.connection_file, *self.run_as)


def user_kernel_manager_class(pw: pwd.struct_passwd) -> str:
    """A dotted name of a KernelManager class whose connection files `pw`'s user owns
    (for jupyter_client.MultiKernelManager.kernel_manager_class)."""
    name = f"UserKernelManager_{pw.pw_uid}"
    globals()[name] = type(name, (_UserKernelManager,), {"run_as": (pw.pw_uid, pw.pw_gid)})
    return f"kernelutil.{name}"


class Kernel:
    """A sandboxed kernel started the way Jupyter starts it: a kernelspec (install_spec) whose
    argv is the launcher's, through jupyter_client's KernelManager, as root or as `user`.

    `cwd` is the kernel's working directory; without one, a fresh directory owned by the
    kernel's user is made and removed at shutdown. The connection file lies where Jupyter puts
    root's (jupyter_client's default), in a private directory of the kernel's user (removed at
    shutdown) for `user` or under `connection_base`, or directly in `connection_dir` when given
    (a directory the test shaped itself). The launcher's stderr goes to `stderr_path`
    (`launcher_said()`); a start that fails or is refused raises RuntimeError with it."""

    def __init__(self, profile: str, *, cwd: str | None = None, user: str | None = None, env: dict | None = None,
                 startup_timeout: float = 60, transport: str = "tcp", prefix: list[str] | None = None,
                 connection_base: str | None = None, connection_dir: str | None = None,
                 python: str | None = None, spec_suffix: str = "", init: str = "c", _attempt: int = 0):
        require_kernel_marker(f"a kernel on profile {profile!r}")
        args = dict(cwd=cwd, user=user, env=env, startup_timeout=startup_timeout, transport=transport, prefix=prefix,
                    connection_base=connection_base, connection_dir=connection_dir, python=python,
                    spec_suffix=spec_suffix, init=init)
        self.profile = profile
        self.user = user
        pw = pwd.getpwnam(user) if user else None
        self.own_cwd = cwd is None
        if cwd is None:
            cwd = user_workdir(pw) if pw else tempfile.mkdtemp(prefix="sbx-kernel-")
        self.cwd = cwd
        self.connection_dir = None
        name = install_spec(profile, user, prefix, python, spec_suffix, init)
        km = _UserKernelManager(kernel_name=name, transport=transport)
        if transport == "ipc":
            km.ip = os.path.join(cwd, "kernel-ipc")
        run_env = dict(os.environ)
        if connection_dir:
            km.connection_file = os.path.join(connection_dir, f"kernel-{os.urandom(6).hex()}.json")
        elif user or connection_base:  # (root's default: jupyter_client's, a mkstemp file in /tmp)
            self.connection_dir = globals()["connection_dir"](pw, connection_base)
            km.connection_file = os.path.join(self.connection_dir, f"kernel-{os.urandom(6).hex()}.json")
        if user:
            km.run_as = (pw.pw_uid, pw.pw_gid)
            run_env.update(HOME=pw.pw_dir, USER=user, LOGNAME=user)
            run_env.pop("TMPDIR", None)
        run_env.update(env or {})
        self.km = km
        self.stderr_path = os.path.join(tempfile.mkdtemp(prefix="sbx-kernel-log-"), "launcher.err")
        self._stderr = open(self.stderr_path, "w")
        try:
            km.start_kernel(cwd=cwd, env=run_env, stderr=self._stderr)
            self.kc = km.client()
            self.kc.start_channels()
            self.kc.wait_for_ready(timeout=startup_timeout)
            check_not_refused(self.kc)
        except RuntimeError as e:
            said = self.launcher_said()  # (shutdown() removes the file)
            if "didn't respond" in str(e):
                said += "\n" + self.stuck_report()
            self.shutdown()
            if "Address already in use" in said and _attempt == 0:
                # jupyter_client picks free ports, and the kernel binds them a moment later: another
                # process (a parallel test worker) can take one in between. A fresh start, once.
                self.__init__(profile, **args, _attempt=1)
                return
            raise RuntimeError(f"{e}; the launcher said:\n{said}") from None
        except BaseException:
            self.shutdown()
            raise

    def stuck_report(self) -> str:
        """Where a kernel that does not answer waits: each thread of the launcher's process tree
        (the supervisor, the init, the kernel) with its state, the kernel function it sleeps in
        and the system call it is in, and what the kernel sent on iopub meanwhile (ipykernel
        sends a thread's traceback there, not to stderr)."""
        lines = ["-- where the kernel's processes wait (pid/tid comm state wchan syscall):"]
        try:
            root = self.km.provisioner.process.pid
        except AttributeError:
            return "-- no launcher process to look at"
        lines += process_tree_report(root)
        try:
            while True:
                msg = self.kc.iopub_channel.get_msg(timeout=0.2)
                if msg["msg_type"] in ("stream", "error"):
                    c = msg["content"]
                    lines.append(f"-- iopub {msg['msg_type']}: {c.get('text') or c.get('traceback')}"[:2000])
        except Exception:
            pass
        return "\n".join(lines)

    def launcher_said(self) -> str:
        """The end of what the launcher (and the kernel) wrote to stderr."""
        try:
            return Path(self.stderr_path).read_text()[-3000:]
        except OSError:
            return ""

    def run(self, code: str, timeout: float = 60, stdin: str | None = None) -> Result:
        """Execute `code`; a request ipykernel answers `aborted` (it aborts what arrives until the
        stop_on_error timer after an error reply has run: an event-loop callback, late on a loaded
        machine) executed nothing and is sent again, up to five times."""
        for _ in range(5):
            res = self._run_once(code, timeout, stdin)
            if res.status != "aborted":
                break
            time.sleep(0.5)
        return res

    def _run_once(self, code: str, timeout: float, stdin: str | None) -> Result:
        res = Result(status="?")
        out, err, tb = [], [], []

        def hook(msg):
            t, c = msg["msg_type"], msg["content"]
            if t == "stream":
                (out if c["name"] == "stdout" else err).append(c["text"])
            elif t == "error":
                tb.extend(c["traceback"])
            elif t in ("execute_result", "display_data"):
                res.data.append(c["data"])

        def stdin_hook(msg):
            self.kc.input(stdin or "")

        reply = self.kc.execute_interactive(textwrap.dedent(code), timeout=timeout, output_hook=hook,
                                            allow_stdin=stdin is not None,
                                            stdin_hook=stdin_hook if stdin is not None else None)
        c = reply["content"]
        res.status = c["status"]
        res.ename, res.evalue = c.get("ename", ""), c.get("evalue", "")
        res.execution_count = c.get("execution_count")
        res.stdout, res.stderr = "".join(out), "".join(err)
        res.traceback = _strip_ansi("\n".join(tb or c.get("traceback", [])))
        return res

    def ok(self, code: str, timeout: float = 60) -> Result:
        r = self.run(code, timeout)
        assert r.status == "ok", str(r)
        return r

    def is_alive(self) -> bool:
        return self.km.is_alive()

    def restart(self) -> None:
        self.km.restart_kernel(now=True)
        self.kc.wait_for_ready(timeout=60)

    def shutdown(self) -> None:
        """Stop the kernel and remove what this object made for it (idempotent)."""
        try:
            if getattr(self, "kc", None) is not None:
                self.kc.stop_channels()
        finally:
            try:
                if getattr(self, "km", None) is not None and self.km.has_kernel:
                    self.km.shutdown_kernel(now=True)
            finally:
                if self.connection_dir:
                    shutil.rmtree(self.connection_dir, ignore_errors=True)
                if getattr(self, "_stderr", None) is not None:
                    self._stderr.close()
                    shutil.rmtree(os.path.dirname(self.stderr_path), ignore_errors=True)
                if self.own_cwd:
                    shutil.rmtree(self.cwd, ignore_errors=True)


def process_tree_report(root: int) -> list[str]:
    """Each thread of `root` and its descendants: pid/tid, comm, state, wchan, and the system call
    it is in (/proc/<tid>/syscall: the number, by name where libseccomp knows it)."""
    children: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                ppid = int(Path(f"/proc/{d}/stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(d))
    out, todo = [], [root]
    while todo:
        pid = todo.pop(0)
        todo += sorted(children.get(pid, []))
        try:
            tids = sorted(os.listdir(f"/proc/{pid}/task"), key=int)
        except OSError:
            continue
        for tid in tids:
            base = f"/proc/{pid}/task/{tid}"
            try:
                comm = Path(f"{base}/comm").read_text().strip()
                state = Path(f"{base}/stat").read_text().rsplit(")", 1)[1].split()[0]
                wchan = Path(f"{base}/wchan").read_text().strip()
                call = Path(f"{base}/syscall").read_text().split()
            except OSError:
                continue
            name = call[0] if call else "?"
            if name.lstrip("-").isdigit() and int(name) >= 0:
                try:  # (a diagnostic: the few bytes libseccomp allocates for the name are not freed)
                    import ctypes

                    from sandbox_kernel import libseccomp
                    fn = libseccomp.library().seccomp_syscall_resolve_num_arch
                    fn.restype, fn.argtypes = ctypes.c_char_p, [ctypes.c_uint32, ctypes.c_int]
                    name = (fn(0, int(name)) or name.encode()).decode()
                except Exception:
                    pass
            out.append(f"{pid}/{tid} {comm} {state} {wchan or '-'} {name}")
    return out


class Pool:
    """One long-lived kernel per (profile, user) for tests that only probe it (never for a test
    that damages, restarts or shuts down its kernel): `get(profile, who)`, `who` a pwd entry or
    None for root; a kernel found dead is replaced. conftest.py's `shared_kernels` (per module)
    and the red-team `pool` (per session) hold one."""

    def __init__(self, spec_suffix: str = "-shared", startup_timeout: float = 60):
        self.spec_suffix, self.startup_timeout = spec_suffix, startup_timeout
        self.kernels: dict = {}

    def get(self, profile: str, who=None) -> Kernel:
        key = (profile, who.pw_name if who is not None else None)
        k = self.kernels.get(key)
        if k is not None and not k.is_alive():
            k.shutdown()
            k = None
        if k is None:
            k = Kernel(profile, user=key[1], spec_suffix=self.spec_suffix, startup_timeout=self.startup_timeout)
            self.kernels[key] = k
        return k

    def close(self) -> None:
        for k in self.kernels.values():
            try:
                k.shutdown()
            except Exception:
                pass
        self.kernels.clear()


def refused_reason(kc) -> str | None:
    """The reason, where the launcher refused the start and serves the refusal kernel
    (sandbox_kernel/refusal.py) on the kernel's ports; None for a kernel that started."""
    info = kc.kernel_info(reply=True, timeout=60)["content"]
    if info.get("implementation") == "sandbox-kernel-refusal":
        return info.get("sandbox_kernel", {}).get("reason") or info.get("banner", "")
    return None


def check_not_refused(kc) -> None:
    """RuntimeError("the kernel refused to start: REASON") where the start was refused."""
    reason = refused_reason(kc)
    if reason is not None:
        raise RuntimeError(f"the kernel refused to start: {reason}")


def setpriv(user: str) -> list[str]:
    pw = pwd.getpwnam(user)
    return ["setpriv", f"--reuid={pw.pw_uid}", f"--regid={pw.pw_gid}", "--init-groups", "--"]


def run_launcher(profile: str, *command: str, user: str | None = None, cwd: str | None = None,
                 env: dict | None = None, connection_file: str | None = None, policy_cache: str | None = None,
                 timeout: float = 60) -> subprocess.CompletedProcess:
    """The kernelspec's trusted start (`python -I -S boot.py run ...`) wrapping `command`."""
    require_kernel_marker(f"the launcher on profile {profile!r}")
    argv = launch_argv(profile, connection_file=connection_file, policy_cache_file=policy_cache)
    argv += ["--", *(command or ["/usr/bin/true"])]
    run_env = dict(os.environ)
    if user:
        pw = pwd.getpwnam(user)
        argv = setpriv(user) + argv
        run_env.update(HOME=pw.pw_dir, USER=user, LOGNAME=user)
        run_env.pop("TMPDIR", None)
    run_env.update(env or {})
    return subprocess.run(argv, capture_output=True, text=True, cwd=cwd, env=run_env, timeout=timeout)


def _strip_ansi(text: str) -> str:
    import re

    return re.sub(r"\x1b\[[0-9;]*[A-Za-z]", "", text)


# --------------------------------------------------------------------------- ordinary user


# What the suite's processes share on the host (pytest-xdist's workers, another run of the suite):
# the test user, and the directories opened for others (below), under one lock.
HOST_LOCK = "/var/tmp/sandbox-kernel-tests.lock"
OPENED = "/var/tmp/sandbox-kernel-tests-opened.json"


@contextlib.contextmanager
def host_lock():
    with open(HOST_LOCK, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def ensure_user() -> pwd.struct_passwd:
    with host_lock():  # (two workers would both run useradd, and one would fail)
        try:
            return pwd.getpwnam(TEST_USER)
        except KeyError:
            subprocess.run(["useradd", "-m", "-s", "/bin/bash", TEST_USER], check=True, capture_output=True)
            return pwd.getpwnam(TEST_USER)


@contextlib.contextmanager
def paths_open_for_others(paths: list[str]):
    """`open_paths_for_others(paths)` for the time of the block, shared with the suite's other
    processes: the modes are restored when the last process that holds them open leaves (one
    worker restoring /root's mode would stop another worker's user kernel from starting)."""
    with host_lock():
        state = _opened_state()
        state["changed"] += [[p, m] for p, m in open_paths_for_others(paths)]
        state["holders"].append(os.getpid())
        _write_opened_state(state)
    try:
        yield
    finally:
        with host_lock():
            state = _opened_state()
            state["holders"].remove(os.getpid())
            if state["holders"]:
                _write_opened_state(state)
            else:
                restore_modes([(p, m) for p, m in state["changed"]])
                os.unlink(OPENED)


def _opened_state() -> dict:
    """Who holds paths open (live processes only: one that died left its entry) and what changed."""
    try:
        with open(OPENED) as fh:
            state = json.load(fh)
    except (OSError, ValueError):
        state = {}
    live = [pid for pid in state.get("holders", []) if os.path.exists(f"/proc/{pid}")]
    return {"holders": live, "changed": state.get("changed", [])}


def _write_opened_state(state: dict) -> None:
    with open(OPENED + ".new", "w") as fh:
        json.dump(state, fh)
    os.replace(OPENED + ".new", OPENED)


def open_paths_for_others(paths: list[str]) -> list[tuple[str, int]]:
    """Give 'others' search (x) permission on every ancestor directory of `paths`.

    Root-only directories such as /root (where pyenv's interpreter lives on these
    machines) would otherwise keep an ordinary user from running this Python.
    Returns what was changed, for `restore_modes`.
    """
    changed = []
    for p in paths:
        cur = Path(p).resolve()
        for d in [cur, *cur.parents] if cur.is_dir() else list(cur.parents):
            st = d.stat()
            if not st.st_mode & stat.S_IXOTH:
                changed.append((str(d), st.st_mode))
                os.chmod(d, stat.S_IMODE(st.st_mode) | stat.S_IXOTH)
    return changed


def restore_modes(changed: list[tuple[str, int]]) -> None:
    for path, mode in reversed(changed):
        try:
            os.chmod(path, stat.S_IMODE(mode))
        except OSError:
            pass


def connection_dir(user: pwd.struct_passwd | None = None, base: str | None = None) -> str:
    """A private directory for a kernel's connection file, as Jupyter's runtime directory is (mode
    0700, owned by the kernel's account), never the kernel's working directory: the launcher
    refuses a connection file in a directory the tenant writes."""
    d = tempfile.mkdtemp(prefix="sbx-conn-", dir=base)
    if user is not None:
        os.chown(d, user.pw_uid, user.pw_gid)
    return d


def user_workdir(user: pwd.struct_passwd) -> str:
    d = tempfile.mkdtemp(prefix="sbx-user-")
    os.chown(d, user.pw_uid, user.pw_gid)
    return d


def wait_for(predicate, timeout: float = 10, interval: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


def python() -> str:
    return sys.executable




class Acceptor:
    """Accepts and closes every connection to a listening socket, in a thread, counting them
    in `accepted`, until close() (which closes the socket too): the far end of a connection
    a kernel should or should not be able to make."""

    def __init__(self, sock):
        self.sock = sock
        self.sock.settimeout(0.2)
        self.accepted = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self):
        while not self._stop.is_set():
            try:
                c, _ = self.sock.accept()
            except OSError:
                continue
            self.accepted += 1
            c.close()

    def close(self):
        self._stop.set()
        self._thread.join(timeout=5)
        self.sock.close()


class Listener(Acceptor):
    """A TCP listener on 127.0.0.1 (outside every sandbox) that counts connections (`port`,
    `accepted`; close() when done)."""

    def __init__(self):
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        sock.listen(64)
        self.port = sock.getsockname()[1]
        super().__init__(sock)


FORK_BOMB = """
    import os, time, errno
    children, error = [], None
    try:
        for _ in range(2000):
            pid = os.fork()
            if pid == 0:
                time.sleep(5)
                os._exit(0)
            children.append(pid)
    except OSError as e:
        error = errno.errorcode[e.errno]
    for pid in children:
        os.kill(pid, 9)
        os.waitpid(pid, 0)
    print(len(children), error)
    """


def uid_tasks(uid: int) -> int:
    """Tasks (threads) the uid holds on the host now: what a per-uid RLIMIT_NPROC counts where a
    kernel has no user namespace of its own (the red-team suite keeps kernels of the test user
    alive for the whole session)."""
    n = 0
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/status") as fh:
                fields = dict(line.split(":", 1) for line in fh if ":" in line)
        except OSError:
            continue
        if int(fields.get("Uid", "-1 ").split()[0]) == uid:
            n += int(fields.get("Threads", "1").strip() or 1)
    return n


def fork_bomb(k, bound: int) -> None:
    """A Python fork bomb in kernel `k` stops with EAGAIN before `bound` children."""
    r = k.ok(FORK_BOMB, timeout=120)
    count, error = r.stdout.split()
    assert error == "EAGAIN" and int(count) < bound, r.stdout
