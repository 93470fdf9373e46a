"""The launcher: resolve the effective policy, apply the layers in order, exec.

``sandbox-kernel run --profile NAME [--connection-file F] -- CMD ARGS...``

Installed kernelspecs use it as their argv prefix, so every restriction is in
place before the kernel's interpreter runs ``site``, ``.pth`` files,
``sitecustomize`` or IPython start-up files from a user-writable place. The same
command wraps a Jupyter terminal's shell or any batch job.

The layers, in the order they are applied (layers.registry.LAYERS; each fails closed, see layers.status):
"""

from __future__ import annotations

from . import timing  # noqa: I001 - first: its import time is the end of the interpreter's start

import os
import sys

from . import connection as connection_file
from . import resources, standins, supervisor
from .errors import LayerUnavailable, SandboxError
from .layers import import_guard, trusted_start
from .layers.connection_dir import check_connection_dir
from .layers.context import LaunchContext
from .layers.handoff import HANDOFF_ENV
from .layers.registry import LAYERS  # the layers in the order applied, and why that order
from .layers.status import STATUS_ENV, Status
from .paths import below, real_exec_allowed, real_writable, within
from .resolved import Policy
from .standins import kernel_id_of, which

timing.mark("launcher imports")

__doc__ += "".join(f"\n{i}. {m.NAME}" for i, m in enumerate(LAYERS, 1))

def load_policy(profile: str | None, cache: str | None, env: dict[str, str]) -> Policy:
    """The effective policy: from the validated-policy cache where every name hits it, else
    resolved from the profile files, which imports YAML and JSON Schema from site-packages,
    allowed only where the tenant cannot write them."""
    from . import policy_cache
    from .profile_files import CEILING_ENV, DEFAULT_PROFILE

    names = [profile or DEFAULT_PROFILE]
    if env.get(CEILING_ENV, "").strip():
        names.append(env[CEILING_ENV].strip())
    hits = [policy_cache.lookup(cache, n, env) for n in names]
    if len(hits) == 1 and hits[0] is not None:
        return hits[0]  # what effective() returns for a cache hit without a ceiling, without importing it
    missed = [n for n, hit in zip(names, hits) if hit is None]
    if missed:
        allow_profile_loading(env)
    from .policy import effective

    try:
        return effective(profile, env, cache=cache)
    except ImportError as e:  # YAML or JSON Schema not importable from the environment's site-packages
        raise SandboxError(
            f"profile {missed[0]!r} is not in the validated-policy cache"
            + (f" {cache}" if cache else " (no --policy-cache given)")
            + f", and resolving it needs {e.name or 'PyYAML and jsonschema'}, which this environment's "
              f"site-packages does not provide: run `sandbox-kernel install` to write the cache, or install "
              f"sandbox-kernel's dependencies into the environment") from None


def allow_profile_loading(env: dict[str, str]) -> None:
    """Put the environment's site-packages on sys.path for YAML and JSON Schema, after
    checking that the tenant cannot write there; refuse to start otherwise."""
    if not sys.flags.no_site:
        return  # started without -S (a human's `sandbox-kernel run`): site-packages is on sys.path
    import sysconfig

    paths = sysconfig.get_paths()
    dirs = list(dict.fromkeys([paths["purelib"], paths["platlib"]]))
    # Where a tenant writes whatever the profile says (the profile that would say more is not
    # loaded yet): its home and working directory. Not /tmp, /var/tmp or /dev/shm as such: a
    # kernel writes only its private tmpfs there, the environment is brought back read-only into
    # its view (a protected path, also left out of Landlock's write grant), and the host's own
    # permissions on an environment under /tmp are what trusted_start.check judges above.
    writable = [os.path.realpath(w) for w in [env.get("HOME") or "/", os.getcwd()] if w != "/"]
    problems = trusted_start.check(dirs)
    for d in dirs:
        r = os.path.realpath(d)
        for w in writable:
            if within(r, w):
                problems.append(f"{d} lies in {w}, where the tenant may write")
    if problems:
        raise SandboxError(
            f"the profile is not in the validated-policy cache (or changed since `sandbox-kernel install`), "
            f"and resolving it would import YAML and JSON Schema code from {dirs[0]}, which the tenant could "
            f"have changed: {problems[0]}. Run `sandbox-kernel install` again to refresh the cache, or install "
            f"the environment where tenants cannot write")
    sys.path.extend(dirs)


def context_for(policy: Policy, command: list[str], conn: connection_file.Connection | None,
                env: dict[str, str] | None = None, policy_cache: str | None = None) -> LaunchContext:
    ctx = LaunchContext(dict(os.environ if env is None else env), command)
    ctx.policy_cache = os.path.abspath(policy_cache) if policy_cache else None
    ctx.use_tenant_home(policy)
    if conn is not None:
        ctx.connection = conn
        ctx.transport = conn.transport
        if conn.transport == "tcp":
            ctx.kernel_ports = conn.ports
        else:
            ctx.ipc_dir = _ipc_dir(policy, ctx, conn)
        ctx.kernel_id = kernel_id_of(conn.path)
    if not ctx.kernel_id:
        ctx.kernel_id = os.urandom(6).hex()
    return ctx


def _ipc_dir(policy: Policy, ctx: LaunchContext, conn) -> str:
    """The ipc transport's socket directory must be one the tenant may write anyway."""
    d = os.path.realpath(os.path.dirname(conn.ipc_prefix))
    writable = real_writable(policy, ctx)
    if not any(within(d, w) for w in writable):
        e = SandboxError(f"connection file {conn.path}: the ipc sockets would be created in {d}, outside the "
                         f"profile's writable directories ({', '.join(writable)}); refusing to start")
        e.no_refusal_kernel = True  # nor the refusal kernel's sockets
        raise e
    return d


def _refuse_blocked_tenant(policy: Policy, ctx: LaunchContext) -> None:
    """The violation policy's block (audit_policy): refuse to start, and say so in the trail."""
    from . import audit_policy, trail

    tenant = trail.tenant_of(ctx.env)
    why = audit_policy.blocked(policy, tenant)
    if why is None:
        return
    try:
        t = trail.Trail(policy.audit_log, tenant=tenant, profile=policy.label, kernel_id=ctx.kernel_id,
                        max_bytes=policy.data["audit"]["max_bytes"], keep=policy.data["audit"]["keep"])
        t.write("kernel refused", layer="launcher", detail=why)
    except OSError:
        pass
    raise SandboxError(why)




def _check_command(policy: Policy, ctx: LaunchContext) -> str:
    exe = which(ctx.command[0], ctx.env.get("PATH")) if ctx.command else None
    if not exe:
        raise SandboxError(f"command not found: {ctx.command[0] if ctx.command else '(none)'}")
    if policy.enforcement("landlock") != "off":
        allowed = real_exec_allowed(policy, ctx)
        if policy.gpu["enabled"]:  # `run -- nvidia-smi` under a GPU profile: the trusted tool paths too
            from . import accelerators

            allowed += accelerators.exec_dirs(policy, ctx)
        real = os.path.realpath(exe)
        if not any(within(real, d) for d in allowed):
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
        ctx.audit_target = policy.audit_log  # until the pid_namespace layer starts a supervisor to write it
        if policy.enforcement("pid_namespace") != "off" or policy.enforcement("cgroup") != "off":
            from . import trail

            try:
                ctx.audit_fifo = trail.make_fifo(policy.audit_log, ctx.kernel_id)
            except OSError as e:
                raise SandboxError(f"audit.log {policy.audit_log}: cannot create the kernel's audit channel beside "
                                   f"it ({e.strerror}); the directory must be writable by the launching user") from None
    # Missing protected directories inside writable ones are created (empty), so that
    # they can be mounted read-only (or, as a fallback, closed) rather than their parents.
    writable = real_writable(policy, ctx)
    landmarks = set(ctx.startup_landmarks(policy))
    for p in ctx.protected_paths(policy):
        real = os.path.realpath(p)
        if not os.path.exists(real) and any(below(real, w) for w in writable):
            try:
                os.makedirs(real, exist_ok=True)
            except OSError as e:
                if p in landmarks:  # without it a cell could plant the next start's standard library
                    raise SandboxError(f"{p}: cannot create it ({e.strerror}); Python's start looks for its "
                                       f"standard library there, inside a directory the tenant may write, so an "
                                       f"empty directory must hold the place. Install the kernels' Python outside "
                                       f"the writable directories ({', '.join(writable)})") from None


def apply_layers(policy: Policy, ctx: LaunchContext) -> Status:
    """Apply every layer in order to this process. Raises LayerUnavailable (fail closed).

    The pid_namespace layer forks: only the process that goes on to become the kernel
    returns from it; the supervisor and the namespace's init stay in that layer until the
    kernel exits.
    """
    status = Status()
    if policy.enforcement("import_guard") != "off":
        import_guard.check_hook()
    _prepare_files(policy, ctx)
    for layer in LAYERS:  # what must happen before any layer narrows the process
        layer.prepare(policy, ctx)
    timing.mark("prepare")
    results = {}  # what each layer handed on (layers.registry: NEEDS, RESULT)
    for layer in LAYERS:
        results[layer.NAME] = layer.apply(policy, ctx, status, {n: results[n] for n in layer.NEEDS})
        timing.mark(f"layer {layer.NAME}")
    ctx.env["TMPDIR"] = ctx.tmp  # the one place TMPDIR is set: the private /tmp where there is one
    return status


def run(profile: str | None, command: list[str], connection_path: str | None = None, *,
        policy_cache: str | None = None, allowed_ips: list[str] | None = None) -> None:
    """Read the connection file, resolve the policy, apply the layers and exec `command`;
    returns only by raising. A refused kernel start (a connection file is given) serves the
    reason on the kernel's ports instead of exiting (refusal.py) and exits when shut down."""
    parent_fd = supervisor.watch_jupyter_parent()  # before anything slow: Jupyter may die meanwhile
    conn = None
    # (judged in the host's view, before a layer changes it: a refusal may come after the mount
    # namespace, where the mount points of a checkout under /tmp belong to the tenant's private /tmp)
    own_files_ok = bool(connection_path) and _refusal_files_trusted()
    try:
        conn = connection_file.read(connection_path, allowed_ips) if connection_path else None
        timing.mark("connection file")
        _launch(profile, command, conn, policy_cache, parent_fd)
    except SandboxError as e:
        if connection_path is None:
            raise
        refused = conn or _readable_for_refusal(connection_path, allowed_ips)
        if refused is None or not own_files_ok or not _may_serve_refusal(e) or not _private_dir(refused.path):
            raise
        label = "refusing to start" if isinstance(e, LayerUnavailable) else "error"
        print(f"sandbox-kernel: {label}: {e}", file=sys.stderr)
        print("sandbox-kernel: serving this refusal on the kernel's ports (no code runs) until the kernel is shut "
              "down", file=sys.stderr)
        from . import refusal

        raise SystemExit(refusal.serve(refused.info, str(e), profile or "default", parent_fd)) from None


def _may_serve_refusal(e: SandboxError) -> bool:
    """Not where the start itself is in doubt: a trusted_start refusal (files the launcher ran
    could be the tenant's; refusal.py lies beside them) or a refusal of the connection file's
    directory or ipc socket directory. (The refusal kernel's own files: _refusal_files_trusted.)"""
    return not (getattr(e, "layer", None) == trusted_start.NAME or getattr(e, "no_refusal_kernel", False))


def _refusal_files_trusted() -> bool:
    """The refusal kernel's own files (refusal.py, what it imports, the interpreter) are not
    writable by the tenant."""
    stdlib = os.path.dirname(os.__file__)
    files = [os.path.join(resources.PACKAGE_DIR, n) for n in ("refusal.py", "standins.py", "__init__.py")]
    return not trusted_start.check(files + [stdlib, os.path.join(stdlib, "lib-dynload"), sys.executable])


def _private_dir(path: str) -> bool:
    """The refusal kernel's check of the connection file's directory where the profile may not
    have loaded (the full one, layers.connection_dir.check_connection_dir, needs it): owned by this uid or
    root, writable by neither group nor others unless sticky (/tmp, where nbclient and papermill
    put them: there only the owner can replace the file, which connection.read checked), and not
    the working directory or inside it."""
    d = os.path.dirname(os.path.realpath(path))
    try:
        st = os.stat(d)
    except OSError:
        return False
    cwd = os.path.realpath(os.getcwd())
    return (st.st_uid in (os.getuid(), 0) and (not st.st_mode & 0o022 or bool(st.st_mode & 0o1000))
            and not within(d, cwd))


def _readable_for_refusal(path: str, allowed_ips: list[str] | None) -> connection_file.Connection | None:
    """The connection file, where it was refused only for a non-loopback ip (a kernelspec that
    lacks --allow-kernel-ip): the refusal kernel says so on that address. Anything else (not
    ours, writable by others, malformed) gets no answer from the launcher but its exit status."""
    try:
        return connection_file.read(path, allowed_ips, any_ip=True)
    except SandboxError:
        return None


def _launch(profile: str | None, command: list[str], conn, policy_cache: str | None, parent_fd) -> None:
    env = dict(os.environ)
    policy = load_policy(profile, policy_cache, env)
    timing.mark("policy")
    ctx = context_for(policy, command, conn, env, policy_cache)
    ctx.jupyter_parent_fd = parent_fd
    check_connection_dir(ctx, policy, private_tmp=policy.enforcement("mount_namespace") != "off")
    if policy.audit_log and policy.data["audit"]["violations"]["block_seconds"]:
        _refuse_blocked_tenant(policy, ctx)
    exe = _check_command(policy, ctx)
    timing.mark("launch context")
    status = apply_layers(policy, ctx)
    ctx.env[STATUS_ENV] = status.to_json()
    ctx.env[HANDOFF_ENV] = standins.json_dumps(ctx.handoff, separators=(",", ":"), sort_keys=True)
    if conn is not None:
        ctx.env[connection_file.SHA_ENV] = conn.sha256
    timing.emit(ctx.env)
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execve(exe, command, ctx.env)
    except OSError as e:
        raise SandboxError(f"cannot execute {exe}: {e.strerror}") from None


__all__ = ["apply_layers", "context_for", "load_policy", "run"]
