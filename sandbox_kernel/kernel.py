"""The sandboxed IPython kernel: ipykernel's kernel, with the policy applied first.

Start-up (``python -m sandbox_kernel -f {connection_file} --profile NAME``), normally
exec'd by the launcher (``sandbox-kernel run``), which has already applied the OS
layers and armed the import guard through the environment:

1. the policy is taken from the launcher (or resolved here when the profile turns
   every OS layer off); a kernel whose profile needs OS layers that were not applied
   refuses to start;
2. the import guard is installed (if the site hook has not already) and modules it
   denies are purged from ``sys.modules``;
3. the final filter first: the connection file is read (only if it is the one the
   launcher checked), the ZMQ sockets and the heartbeat are bound, and the seccomp
   stage-2 filter tightens sockets to the profile's network mode; only then does the
   kernel put back what the launcher held back (layers/environment.py: the user site with
   its ``.pth`` files and ``usercustomize``, ``PYTHONPATH``) and does IPython read its
   profile (``ipython_config.py``, ``sandbox_kernel_config.py``, their ``.json``, start-up
   files, ``PYTHONSTARTUP``): nothing a tenant can write runs before every filter is in
   force (docs/architecture.md, "The kernel's own start");
4. ipykernel's fork-output pipe moves from tcp://127.0.0.1 to an ipc:// endpoint
   (forked children's output is not lost when TCP is denied), and the debugger is
   advertised as unavailable where debugpy's TCP cannot work.

Each cell: the guard is put back at ``sys.meta_path[0]``, denied modules are purged
from ``sys.modules``, and the pre-execution check refuses the cell (an ``error``
reply; the kernel keeps serving) when it, or one of the request's
``user_expressions``, would import, install or fetch what the profile denies (the same
for every ``execute_request``, silent or not, on the shell or control channel or a
subshell, and for the debugger's ``evaluate``-like requests). No other message
evaluates code: ``inspect_request`` and ``complete_request`` read attributes of objects
that cells made, comm messages call handlers that cells registered, and ipykernel 7 no
longer serves ``apply_request``. PermissionErrors caused by the sandbox get one added line naming
the profile rule, and are audited.
"""

from __future__ import annotations

import os
import sys
import time

import zmq
from ipykernel.iostream import IOPubThread
from ipykernel.ipkernel import IPythonKernel
from ipykernel.kernelapp import IPKernelApp, kernel_aliases
from traitlets import Unicode
from zmq.eventloop.zmqstream import ZMQStream

from . import __version__, audit, connection, pool_handoff, precheck, standins
from .errors import ProfileError, SandboxError
from .guard import ImportGuard, current_guard
from . import accelerators
from .layers import environment as environment_layer
from .layers import import_guard
from .layers import seccomp as seccomp_layer
from .layers.handoff import HANDOFF_ENV, handoff_from_env
from .layers.status import STATUS_ENV, Status
from .childguard import POLICY_ENV
from .policy import Policy, effective



class _IpcPipeIOPubThread(IOPubThread):
    """IOPubThread whose pipe for forked children is an ipc:// endpoint, not TCP."""

    def _setup_pipe_in(self):
        ctx = self.socket.context
        self._pipe_uuid = os.urandom(16)
        # A Linux abstract socket: no file or directory to make, to fit a path limit (a long TMPDIR
        # lost forked output) or to leave behind (a killed kernel left its directory in a shared
        # /tmp). Landlock's scope (ABI 6+) lets only this kernel's own processes connect; anything
        # sent must begin with the pipe's random uuid, or ipykernel drops it.
        self._pipe_addr = f"ipc://@sandbox-kernel-iopub-{_kernel_id()}{os.urandom(8).hex()}"
        pipe_in = ctx.socket(zmq.PULL)
        pipe_in.linger = 0
        try:
            pipe_in.bind(self._pipe_addr)
        except zmq.ZMQError as e:
            print(f"sandbox-kernel: cannot bind the IOPub pipe {self._pipe_addr}: {e}; "
                  f"output of forked children will be lost", file=sys.__stderr__)
            self._pipe_flag = False
            pipe_in.close()
            return
        self._pipe_in = ZMQStream(pipe_in, self.io_loop)
        self._pipe_in.on_recv(self._handle_pipe_msg)

    def _setup_pipe_out(self):
        ctx = zmq.Context()
        pipe_out = ctx.socket(zmq.PUSH)
        pipe_out.linger = 3000
        pipe_out.connect(self._pipe_addr)
        return ctx, pipe_out


def _no_endpoint_class(real: type) -> type:
    """`real` (a zmq socket class) whose getsockopt(LAST_ENDPOINT) says b'' (SandboxKernelApp.init_control)."""

    class NoEndpoint(real):
        def getsockopt(self, option):
            return b"" if option == zmq.LAST_ENDPOINT else super().getsockopt(option)

    return NoEndpoint


def _kernel_id() -> str:
    """`<id>-` from this kernel's connection file name (`kernel-<id>.json`), or ''."""
    name = os.path.basename(IPKernelApp.instance().connection_file or "") if IPKernelApp.initialized() else ""
    kid = name[len("kernel-"):-len(".json")] if name.startswith("kernel-") and name.endswith(".json") else ""
    return f"{kid}-" if kid and all(c.isalnum() or c == "-" for c in kid) else ""


class SandboxKernel(IPythonKernel):
    implementation = "sandbox_kernel"
    implementation_version = __version__
    # the pool's hand-off (sandbox_kernel/pool_handoff.py): on the control channel only
    control_msg_types = [*IPythonKernel.control_msg_types, pool_handoff.REQUEST]

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        app = self.parent
        self.policy: Policy = app.policy
        self.guard: ImportGuard = app.guard
        self.layer_status: Status = app.layer_status
        self.debugger_enabled: bool = app.debugger_enabled
        self.pool_id: str = app.pool_id  # started ahead of need by a pool; "" for a cold start
        self.pool_info: dict | None = None  # what the hand-off said, once it happened
        self.pool_used = ""  # a request other than kernel_info reached it before its hand-off
        if self.shell is not None:
            self._setup_shell(self.shell)
        self._last_parent: dict = {}
        self._start_notices()

    def _process_children(self):
        """ipykernel terminates these at shutdown, found through psutil in /proc. Under a PID
        namespace without the mount namespace (its best-effort fallback) /proc is the host's: its
        pids are not this namespace's, and ipykernel signalled whatever process of the namespace
        had a host child's number, the kernel itself included. Then there is no child to find here:
        the namespace's init ends with the kernel, and every process left in it is killed."""
        try:
            foreign_proc = int(os.readlink("/proc/self")) != os.getpid()
        except (OSError, ValueError):
            foreign_proc = True
        return [] if foreign_proc else super()._process_children()

    # -- the supervisor's notices (violation policy; audit_policy.py): soft, printed in the notebook
    def _start_notices(self) -> None:
        import threading

        from .audit_policy import NOTICE_ENV

        try:
            fd = int(os.environ.pop(NOTICE_ENV, ""))
        except ValueError:
            return
        os.set_inheritable(fd, False)
        threading.Thread(target=self._relay_notices, args=(fd,), daemon=True, name="sandbox-notices").start()

    def _relay_notices(self, fd: int) -> None:
        import json

        with os.fdopen(fd, "rb") as fh:
            for line in fh:
                try:
                    text = json.loads(line)["notice"]
                except (ValueError, KeyError, TypeError):
                    continue
                from .audit_policy import _shown

                if text in _shown:
                    continue  # printed already, in the cell that was refused
                try:
                    self.session.send(self.iopub_socket, "stream", {"name": "stderr", "text": f"{text}\n"},
                                      parent=self._last_parent, ident=self._topic("stream"))
                except Exception:
                    pass

    # -- the pool's hand-off
    def set_parent(self, ident, parent, channel="shell"):
        """Every request passes here (shell, control, subshells): a pooled kernel that served
        anything but kernel_info before its hand-off (someone else held its key) is never handed out."""
        if self.pool_id and self.pool_info is None and not self.pool_used:
            kind = ((parent or {}).get("header") or {}).get("msg_type", "")
            if kind not in ("kernel_info_request", pool_handoff.REQUEST):
                self.pool_used = kind or "?"
        super().set_parent(ident, parent, channel)

    async def sandbox_handoff_request(self, stream, ident, parent):
        """Once, for a kernel the pool started: take the Jupyter kernel id and the variables
        known only when a notebook asked for a kernel (pool_handoff.py). Soft: environment only."""
        content = parent.get("content") or {}
        kernel_id, env = content.get("kernel_id"), content.get("env") or {}
        why = None
        if not self.pool_id:
            why = "this kernel was not started by a pool"
        elif self.pool_info is not None:
            why = "this kernel was already handed out"
        elif self.pool_used:
            why = f"this kernel served a {self.pool_used} before its hand-off"
        elif not standins.is_kernel_id(kernel_id):
            why = f"invalid kernel id {kernel_id!r}"
        elif not isinstance(env, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in env.items()):
            why = "env must map names to strings"
        else:
            bad = [(k, r) for k in env if (r := pool_handoff.handoff_refusal(k))]
            if bad:
                why = f"{bad[0][0]} cannot be applied at hand-off: {bad[0][1]}"
        if why:
            reply = {"status": "error", "ename": "HandoffRefused", "evalue": why, "traceback": []}
        else:
            os.environ.update(env)
            if env.get("JPY_SESSION_NAME") and self.shell is not None:
                self.shell.user_ns["__session__"] = env["JPY_SESSION_NAME"]  # as ipykernel does at a start
            os.environ[audit.KERNEL_ID_ENV] = kernel_id
            os.environ[pool_handoff.POOLED_ENV] = self.pool_id
            self.pool_info = {"pool_id": self.pool_id, "kernel_id": kernel_id, "env": sorted(env),
                              "handed_out": time.time()}
            reply = {"status": "ok", "pid": os.getpid(), "cwd": os.getcwd()}
        self.session.send(stream, pool_handoff.REPLY, reply, parent, ident)

    # -- identity
    @property
    def banner(self):
        text = super().banner or ""
        return f"{text}\nsandbox-kernel {__version__}: profile '{self.policy.label}' (run %sandbox for details)\n"

    @property
    def kernel_info(self):
        info = super().kernel_info
        if not self.debugger_enabled:
            info["supported_features"] = [f for f in info.get("supported_features", []) if f != "debugger"]
            info["debugger"] = False
        return info

    # -- shell integration
    def _setup_shell(self, shell) -> None:
        from .magics import SandboxMagics

        shell.register_magics(SandboxMagics(shell, kernel=self))
        from . import shellless

        if not shellless.install(shell, self.policy):  # `!` lines where no shell may run (offline)
            _hint_failed_network_commands(shell, self.policy)
        # PermissionError, OSError for EROFS from the read-only mounts of protected paths, and
        # the ValueError of resource.setrlimit refused by the sandbox's fixed limits
        shell.set_custom_exc((OSError, ValueError), self._explain_permission_error)

    def _explain_permission_error(self, shell, etype, value, tb, tb_offset=None):
        from .explain import explain

        try:
            why = explain(value, tb, self.policy)
        except Exception:  # a failing explanation must not unregister this handler
            why = None
        if why and not getattr(value, "_sandbox_explained", False):
            layer, rule_text = why
            value._sandbox_explained = True
            note = f"sandbox: refused by profile '{self.policy.label}': {rule_text}"
            if hasattr(value, "add_note"):
                value.add_note(note)
            audit.record(self.policy.audit_log, profile=self.policy.label, layer=layer,
                         what=f"{etype.__name__}: {getattr(value, 'strerror', None) or value}", detail=rule_text)
        shell.showtraceback((etype, value, tb), tb_offset=tb_offset)
        if why and not hasattr(value, "add_note"):
            print(note, file=sys.stderr)
        return None

    # -- execution
    async def do_execute(self, code, silent, store_history=True, user_expressions=None,
                         allow_stdin=False, **kwargs):
        try:
            self._last_parent = self.get_parent("shell")
        except Exception:
            pass
        if self.guard.ensure_first():
            audit.record(self.policy.audit_log, profile=self.policy.label, layer="import_guard",
                         what="restore finder", detail="the import guard was moved or removed; restored to sys.meta_path[0]")
        self.guard.purge_denied()
        # the cell, and every user expression (evaluated after it, in the same namespace, by
        # IPython's user_expressions(): `get_ipython().getoutput(...)` runs a shell there)
        sources = [code] + [e for e in (user_expressions or {}).values() if isinstance(e, str)]
        findings = self._precheck(*sources)
        if findings:
            return self._refuse(code, precheck.refusal(findings, self.policy), store_history)
        return await super().do_execute(code, silent, store_history, user_expressions, allow_stdin, **kwargs)

    def _precheck(self, *sources: str) -> list:
        """The pre-execution check's findings for `sources` (audited)."""
        findings = []
        for source in sources:
            findings += precheck.scan_cell(source, self.policy, namespace=self.shell.user_ns,
                                           transformer=self.shell.input_transformer_manager)
        for f in findings:
            if self.policy.audit_log:  # (before the record: the supervisor's copy must find it shown)
                from .audit_policy import notice_now

                notice_now(self.policy, f.rule["category"])
            audit.record(self.policy.audit_log, profile=self.policy.label, layer="precheck",
                         what=f"{f.kind} {f.what}", detail=f.message(self.policy.label), category=f.rule["category"])
        return findings

    # debug_request commands that evaluate an expression in the kernel (debugpy, under profiles
    # with the debugger: `full` network and `listen_ports: any`)
    DEBUG_EVALUATING = {"evaluate": ("expression",), "setExpression": ("expression", "value"),
                        "setVariable": ("value",)}

    async def do_debug_request(self, msg):
        keys = self.DEBUG_EVALUATING.get(msg.get("command"))
        if keys:
            args = msg.get("arguments") or {}
            findings = self._precheck(*[args[k] for k in keys if isinstance(args.get(k), str)])
            if findings:
                return {"type": "response", "request_seq": msg.get("seq"), "success": False,
                        "command": msg.get("command"), "message": str(precheck.refusal(findings, self.policy))}
        return await super().do_debug_request(msg)

    def _refuse(self, code: str, exc: Exception, store_history: bool) -> dict:
        """An `error` reply for a refused cell, as if the cell had raised `exc` itself."""
        shell = self.shell
        count = shell.execution_count
        if store_history:
            shell.history_manager.store_inputs(count, code, code)
            shell.execution_count += 1
        try:
            raise exc
        except Exception:
            shell.showtraceback(exception_only=True)
        return {
            "status": "error",
            "execution_count": count,
            "ename": type(exc).__name__,
            "evalue": str(exc),
            "traceback": shell._last_traceback or [],
            "user_expressions": {},
            "payload": [],
        }


class SandboxKernelApp(IPKernelApp):
    name = "sandbox-kernel"
    kernel_class = SandboxKernel
    sandbox_profile = Unicode("", config=True, help="sandbox-kernel policy profile (name or file)")
    aliases = {**kernel_aliases, "profile": "SandboxKernelApp.sandbox_profile",
               "ipython-profile": "BaseIPythonApplication.profile"}

    policy: Policy
    guard: ImportGuard
    layer_status: Status
    handoff: dict  # the launcher's hand-off (layers.handoff.handoff_from_env)
    debugger_enabled = False
    pool_id = ""
    _bound_early = False

    def initialize(self, argv=None):
        try:
            self._init_sandbox(argv)
        except (SandboxError, ProfileError) as e:
            print(f"sandbox-kernel: {e}", file=sys.stderr)
            sys.exit(1)
        self._bind_and_tighten()
        super().initialize(argv)  # IPython's profile, config files, the shell, start-up files

    def _bind_and_tighten(self) -> None:
        """Bind every socket, install the final seccomp filter, then put back what the launcher
        deferred: all before IPython's own initialisation (``BaseIPythonApplication.initialize``)
        reads the profile directory, its config files (Python code) and start-up files, which
        the tenant may write. Configuration therefore cannot change the sockets or the session
        (the connection file the launcher checked decides them)."""
        self.init_connection_file()
        self.init_sockets()
        self.init_heartbeat()
        self._bound_early = True
        self._wait_until_listening()
        try:
            seccomp_layer.apply_stage_two(self.policy, self.layer_status, self.handoff)
        except SandboxError as e:
            print(f"sandbox-kernel: seccomp stage 2 failed: {e}", file=sys.stderr)
            sys.exit(1)
        except OSError as e:
            print(f"sandbox-kernel: seccomp stage 2 failed: {e.strerror}", file=sys.stderr)
            sys.exit(1)
        os.environ[STATUS_ENV] = self.layer_status.to_json()
        if self.handoff:
            os.environ[HANDOFF_ENV] = standins.json_dumps(self.handoff, separators=(",", ":"), sort_keys=True)
        environment_layer.restore_deferred()

    def init_connection_file(self):
        if not self._bound_early:
            super().init_connection_file()

    def init_sockets(self):
        if not self._bound_early:
            super().init_sockets()

    def init_heartbeat(self):
        if not self._bound_early:
            super().init_heartbeat()

    def _init_sandbox(self, argv) -> None:
        self.parse_command_line(argv)
        self.pool_id = os.environ.pop(pool_handoff.POOL_ENV, "")  # the pool's mark, not the tenant's
        requested = self.sandbox_profile or None
        if POLICY_ENV in os.environ:
            self.policy = Policy.from_json(os.environ[POLICY_ENV])
            if requested and requested != self.policy.name and os.path.basename(requested).rsplit(".", 1)[0] != self.policy.name:
                raise SandboxError(f"the launcher applied profile '{self.policy.name}' but the kernel was asked "
                                   f"for '{requested}'; fix the kernelspec's argv")
        else:
            self.policy = effective(requested)
        self.layer_status = Status.from_env() or Status()
        try:
            self.handoff = handoff_from_env()
        except ValueError as e:
            raise SandboxError(f"{HANDOFF_ENV} is not what the launcher writes ({e}); start the kernel "
                               f"with `sandbox-kernel run` (installed kernelspecs do this)") from None
        self._check_os_layers()
        guard = current_guard()
        if guard is None or guard.policy != self.policy:
            guard = ImportGuard(self.policy)
            accelerators.install_runtime_hooks(guard, self.policy)
            guard.install()
        self.guard = guard
        self.layer_status.active(import_guard.NAME, f"{len(self.policy.deny_rules())} modules denied; finder at "
                                                    f"sys.meta_path[0]; armed in child interpreters by "
                                                    f"sandbox_kernel_guard.pth", hard=import_guard.HARD)
        # debugpy listens on ports it picks at run time: only where any port may listen
        self.debugger_enabled = (self.policy.network["mode"] == "full"
                                 and self.policy.network.get("listen_ports") == "any")

    def _check_os_layers(self) -> None:
        """Refuse to run without the OS layers the profile requires (never fail open)."""
        if not self.layer_status.layers:  # not started by the launcher
            from .layers.registry import CHECKED_BY_KERNEL  # (imports every layer module: only here)

            wanted = [layer for layer in CHECKED_BY_KERNEL if self.policy.enforcement(layer) != "off"]
            if not wanted:
                return
            raise SandboxError(
                f"profile '{self.policy.label}' requires the OS layers {', '.join(wanted)}, which are applied by "
                f"the launcher: start the kernel with `sandbox-kernel run --profile {self.policy.name} "
                f"--connection-file F -- {sys.executable} -m sandbox_kernel -f F` (installed kernelspecs do this)")
        if self.layer_status.layers.get("seccomp", {}).get("state") == "active" and "seccomp" not in self.handoff:
            raise SandboxError(f"the launcher applied seccomp but its hand-off to the kernel "
                               f"({HANDOFF_ENV}) is missing, so stage 2 could not run; start the kernel "
                               f"with `sandbox-kernel run`")
        mode, _ = seccomp_layer.process_seccomp_state()
        if self.policy.enforcement("seccomp") == "required" and mode != 2:
            raise SandboxError("the launcher reported seccomp active but this process has no seccomp filter")

    def load_connection_file(self, connection_file=None):
        """Load the connection file only if it is still the one the launcher validated
        (its SHA-256 in SANDBOX_KERNEL_CONNECTION_SHA256): a file swapped after the launcher
        read it cannot make the kernel bind other ports or addresses, or use another key."""
        expected = os.environ.pop(connection.SHA_ENV, None)
        if expected is None:
            return super().load_connection_file(connection_file)
        try:
            info = connection.verify(connection_file or self.connection_file, expected)
        except SandboxError as e:
            print(f"sandbox-kernel: {e}", file=sys.stderr)
            sys.exit(1)
        self.load_connection_info(info)

    def init_poller(self):
        """ipykernel's parent poller takes a parent pid of 1 for "my parent exited"; under the
        pid_namespace layer pid 1 is the kernel's own init, which dies with the supervisor, and
        the supervisor watches the Jupyter process (JPY_PARENT_PID) instead."""
        if os.getppid() == 1 and self.layer_status.layers.get("pid_namespace", {}).get("state") == "active":
            return
        super().init_poller()

    def init_path(self):
        """The working directory is importable, as in stock IPython.

        The kernel runs with ``-P`` so that a ``sandbox_kernel`` directory in the working
        directory cannot replace the package at start-up; IPython then skips adding
        '' to sys.path (it respects safe_path), so it is added here, after start-up,
        where IPython would put it: before the first site-packages.
        """
        super().init_path()
        if "" not in sys.path:
            at = next((i for i, p in enumerate(sys.path) if p.endswith(("site-packages", "dist-packages"))),
                      len(sys.path))
            sys.path.insert(at, "")

    def init_iopub(self, context):
        self.iopub_socket = context.socket(zmq.XPUB)
        self.iopub_socket.linger = 1000
        self._apply_curve_server_options(self.iopub_socket)
        self.iopub_port = self._bind_socket(self.iopub_socket, self.iopub_port)
        self.log.debug("iopub PUB Channel on port: %i", self.iopub_port)
        self.configure_tornado_logger()
        self.iopub_thread = _IpcPipeIOPubThread(self.iopub_socket, pipe=True, session=self.session)
        self.iopub_thread.start()
        self.iopub_socket = self.iopub_thread.background_socket

    def init_control(self, context):
        """Without the debugger (debugpy needs TCP), ipykernel's debugger socket never connects
        to the kernel's own shell port: the network rules would refuse that connect and the trail
        would count it against the tenant. ipykernel connects it when the shell socket reports an
        endpoint, so the shell socket reports none while ipykernel sets the control channel up."""
        if self.debugger_enabled:
            return super().init_control(context)
        shell = self.shell_socket
        real = type(shell)
        shell.__class__ = _no_endpoint_class(real)
        try:
            super().init_control(context)
        finally:
            shell.__class__ = real
        self.debug_shell_socket.close(linger=0)

    def init_kernel(self):
        if not self.debugger_enabled:
            _import_debugger_without_debugpy()
        super().init_kernel()

    def _wait_until_listening(self, timeout: float = 10.0) -> None:
        """The heartbeat binds in its own thread: wait for every port (or ipc socket file) before
        tightening sockets (stage 2 may refuse listen() where no supervisor decides it)."""
        ports = {self.shell_port, self.iopub_port, self.stdin_port, self.control_port, self.hb_port}
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.transport == "tcp":
                if ports <= _listening_ports():
                    return
            elif all(os.path.exists(f"{self.ip}-{port}") for port in ports):
                return
            time.sleep(0.002)


def _hint_failed_network_commands(shell, policy) -> None:
    """`!cmd` as ipykernel runs it (ZMQInteractiveShell.system_piped), plus one line under a
    failed command that the profile's network rules likely stopped (nethint.command_hint:
    `!curl` says only "Couldn't connect to server"). Soft: a message; what is refused stays
    seccomp's and Landlock's. Not installed under `full`, where nothing is refused."""
    from . import nethint

    if nethint.rule_text(policy) is None:
        return
    from IPython.utils.process import system as run_piped

    def system(cmd):
        if cmd.rstrip().endswith("&"):
            raise OSError("Background processes not supported.")
        expanded = shell.var_expand(cmd, depth=1)  # the caller's frame, as system_piped reads it
        exit_code = run_piped(expanded)
        shell.user_ns["_exit_code"] = exit_code
        hint = nethint.command_hint(expanded, exit_code, policy)
        if hint:
            print(hint, file=sys.stderr, flush=True)
        if getattr(shell, "system_raise_on_error", False) and exit_code != 0:
            from subprocess import CalledProcessError

            raise CalledProcessError(exit_code, cmd)

    shell.system = system


def _import_debugger_without_debugpy() -> None:
    """Import ``ipykernel.debugger`` as ipykernel does where debugpy is not installed.

    Where the debugger is off (every network mode but ``full``: debugpy serves on a TCP
    port), the stock kernel would still import debugpy when it creates the kernel object,
    50 to 100 ms of every start on a 2-core machine, for nothing. A
    ``None`` entry in ``sys.modules`` makes the debugger module's ``from debugpy.server
    import api`` raise ImportError, which ipykernel handles as "debugpy unavailable"
    (``_is_debugpy_available = False``); the entry is removed afterwards, so that user code
    can still import debugpy.
    """
    if "ipykernel.debugger" not in sys.modules and "debugpy" not in sys.modules:
        sys.modules["debugpy"] = None
        try:
            import ipykernel.debugger  # noqa: F401
        finally:
            if sys.modules.get("debugpy", False) is None:
                del sys.modules["debugpy"]
    import ipykernel.debugger

    ipykernel.debugger._is_debugpy_available = False


def _listening_ports() -> set[int]:
    out = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as fh:
                next(fh)
                for line in fh:
                    parts = line.split()
                    if parts[3] == "0A":  # LISTEN
                        out.add(int(parts[1].rsplit(":", 1)[1], 16))
        except (OSError, StopIteration):
            continue
    return out


def main() -> None:
    SandboxKernelApp.launch_instance()


__all__ = ["SandboxKernel", "SandboxKernelApp", "main"]
