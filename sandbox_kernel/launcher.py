"""The launcher: resolve the effective policy, apply the layers in order, exec.

``sandbox-kernel run --profile NAME [--connection-file F] -- CMD ARGS...``

Installed kernelspecs use it as their argv prefix, so every restriction is in
place before the kernel's interpreter runs ``site``, ``.pth`` files,
``sitecustomize`` or IPython start-up files from a user-writable place. The same
command wraps a Jupyter terminal's shell or any batch job.

The layers, in the order they are applied (each fails closed, see layers.base):
"""

from __future__ import annotations

from . import timing  # noqa: I001 - first: its import time is the end of the interpreter's start

import json
import os
import re
import shutil
import sys

from . import resources
from .errors import LayerUnavailable, SandboxError
from .layers import capabilities, cgroup, environment, landlock, mountns, nnp, rlimits, seccomp
from .layers.base import STATUS_ENV, LaunchContext, Status
from .policy import Policy

timing.mark("launcher imports")

# The order matters: the environment is computed first (TMPDIR, accelerators); the
# cgroup is joined and rlimits set while /sys is still writable and CAP_SYS_RESOURCE
# held; the mount namespace needs CAP_SYS_ADMIN (or a fresh user namespace) and must
# precede Landlock, which forbids mounting; no_new_privs precedes the capability drop,
# Landlock and seccomp (which need it as an ordinary user); Landlock precedes seccomp,
# whose filter is the last word.
LAYERS = [environment, cgroup, rlimits, mountns, nnp, capabilities, landlock, seccomp]
__doc__ += "".join(f"\n{i}. {m.NAME}" for i, m in enumerate(LAYERS, 1))


def read_connection_file(path: str) -> dict:
    try:
        with open(path) as fh:
            info = json.load(fh)
    except (OSError, ValueError) as e:
        raise SandboxError(f"{path}: cannot read the connection file ({e})") from None
    if not isinstance(info, dict):
        raise SandboxError(f"{path}: the connection file is not a JSON object")
    return info


def context_for(policy: Policy, command: list[str], connection_file: str | None,
                env: dict[str, str] | None = None) -> LaunchContext:
    ctx = LaunchContext(dict(os.environ if env is None else env), command)
    if connection_file:
        info = read_connection_file(connection_file)
        ctx.transport = info.get("transport", "tcp")
        if ctx.transport == "tcp":
            ctx.kernel_ports = sorted({int(info[k]) for k in
                                       ("shell_port", "iopub_port", "stdin_port", "control_port", "hb_port")
                                       if info.get(k)})
        else:
            ctx.ipc_dir = os.path.dirname(os.path.abspath(info.get("ip", "kernel-ipc"))) or os.getcwd()
        m = re.match(r"kernel-(.+)\.json$", os.path.basename(connection_file))
        ctx.kernel_id = m.group(1) if m else ""
    if not ctx.kernel_id:
        ctx.kernel_id = os.urandom(6).hex()
    return ctx


def _check_hook() -> None:
    hook = resources.guard_hook_path()
    if not hook.is_file():
        raise LayerUnavailable(
            "import_guard", f"the child-process guard hook {hook} is missing, so Python processes started "
                            f"from the kernel would run unguarded; run `sandbox-kernel install` once in this environment")


def _check_command(policy: Policy, ctx: LaunchContext) -> str:
    exe = shutil.which(ctx.command[0], path=ctx.env.get("PATH")) if ctx.command else None
    if not exe:
        raise SandboxError(f"command not found: {ctx.command[0] if ctx.command else '(none)'}")
    if policy.enforcement("landlock") != "off":
        allowed = [os.path.realpath(d) for d in ctx.expand_paths(policy.data["exec"]["allow"])]
        real = os.path.realpath(exe)
        if not any(real == d or real.startswith(d.rstrip("/") + "/") for d in allowed):
            raise SandboxError(f"{exe} is outside the profile's exec.allow ({', '.join(allowed)}); "
                               f"it could not run inside the sandbox")
    return exe


def _prepare_files(policy: Policy, ctx: LaunchContext) -> None:
    """Create what Landlock rules must name before they exist."""
    if policy.audit_log:
        try:
            fd = os.open(policy.audit_log, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
            os.close(fd)
        except OSError as e:
            raise SandboxError(f"audit.log {policy.audit_log}: cannot create it ({e.strerror}); "
                               f"create its directory or fix the profile's audit.log") from None
    # Missing protected directories inside writable ones are created (empty), so that
    # they can be mounted read-only (or, as a fallback, closed) rather than their parents.
    writable = [os.path.realpath(w) for w in ctx.expand_paths(policy.data["filesystem"]["writable"])]
    for p in ctx.protected_paths(policy):
        real = os.path.realpath(p)
        if not os.path.exists(real) and any(real.startswith(w.rstrip("/") + "/") for w in writable):
            try:
                os.makedirs(real, exist_ok=True)
            except OSError:
                pass


def apply_layers(policy: Policy, ctx: LaunchContext) -> Status:
    """Apply every layer in order to this process. Raises LayerUnavailable (fail closed)."""
    status = Status()
    if policy.enforcement("import_guard") != "off":
        _check_hook()
    _prepare_files(policy, ctx)
    for layer in LAYERS:  # what must happen before any layer narrows the process
        if hasattr(layer, "prepare"):
            layer.prepare(policy, ctx)
    timing.mark("prepare")
    for layer in LAYERS:
        layer.apply(policy, ctx, status)
        timing.mark(f"layer {layer.NAME}")
    return status


def run(policy: Policy, command: list[str], connection_file: str | None = None) -> None:
    """Apply the layers and exec `command`; returns only by raising."""
    timing.mark("policy")
    ctx = context_for(policy, command, connection_file)
    exe = _check_command(policy, ctx)
    timing.mark("launch context")
    status = apply_layers(policy, ctx)
    ctx.env[STATUS_ENV] = status.to_json()
    timing.emit(ctx.env)
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execve(exe, command, ctx.env)
    except OSError as e:
        raise SandboxError(f"cannot execute {exe}: {e.strerror}") from None


__all__ = ["LAYERS", "apply_layers", "context_for", "run"]
