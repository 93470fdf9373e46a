"""Which profile rule caused a PermissionError or EROFS, or a refused rlimit change (for the
one added line in a cell).

A heuristic over the error and its traceback; it only speaks when the sandbox is
the likely cause: the path is not writable under the profile while ordinary file
permissions would allow the write, the program is outside ``exec.allow``, the node
is a denied accelerator, a socket call failed under a restricted network mode, or
``resource.setrlimit``/``prlimit`` tried to raise a limit the sandbox fixed (or, as
root, any hard limit: the sandbox dropped CAP_SYS_RESOURCE).
"""

from __future__ import annotations

import ast
import errno
import linecache
import os
import resource
import textwrap
import traceback

from . import nethint
from . import accelerators
from .layers import rlimits
from .layers.base import LaunchContext, is_interpreter_name
from .paths import below, real_writable, within

EXEC_FUNCTIONS = {"_execute_child", "execv", "execve", "execvp", "execvpe", "posix_spawn", "posix_spawnp", "_fork_exec"}
SOCKET_FUNCTIONS = {"socket", "connect", "connect_ex", "bind", "create_connection", "socketpair", "sendto"}
# CPython's resource module turns setrlimit's EPERM and EINVAL into these ValueErrors;
# prlimit raises PermissionError for EPERM.
RLIMIT_MESSAGES = {"not allowed to raise maximum limit", "current limit exceeds maximum limit"}
RLIMIT_CALLS = {"setrlimit": 0, "prlimit": 1}  # function -> index of its resource argument
RLIMIT_NAMES: dict[int, str] = {}
for _n in sorted((n for n in dir(resource) if n.startswith("RLIMIT_")), key=lambda n: n == "RLIMIT_OFILE"):
    RLIMIT_NAMES.setdefault(getattr(resource, _n), _n)  # RLIMIT_OFILE is an old alias of RLIMIT_NOFILE
RLIMIT_SIZES = {getattr(resource, n) for n in ("RLIMIT_DATA", "RLIMIT_AS", "RLIMIT_FSIZE", "RLIMIT_CORE",
                                                 "RLIMIT_STACK", "RLIMIT_MEMLOCK", "RLIMIT_RSS") if hasattr(resource, n)}
CAP_SYS_RESOURCE = 24


def _within_any(p: str, roots: list[str]) -> bool:
    p = os.path.normpath(p)
    return any(within(p, r) for r in map(os.path.normpath, roots))


def explain(err: BaseException, tb, policy) -> tuple[str, str] | None:
    """(layer, rule text) of the sandbox's refusal behind `err`: `err` itself, else the errors a
    library wrapped it in (urllib's URLError, requests' ConnectionError: nethint.causes), each
    judged with its own traceback; a failed name lookup where the profile refuses DNS too."""
    why = _explain_one(err, tb, policy) if isinstance(err, (OSError, ValueError)) else None
    if why is None:
        why = nethint.explain_resolution(err, policy)
    for inner in () if why else nethint.causes(err):
        if isinstance(inner, OSError):
            why = _explain_one(inner, inner.__traceback__, policy) or nethint.explain_resolution(inner, policy)
            if why:
                break
    return why


def _explain_one(err: BaseException, tb, policy) -> tuple[str, str] | None:
    if isinstance(err, ValueError):
        return _explain_rlimit(tb, policy) if str(err) in RLIMIT_MESSAGES else None
    if not isinstance(err, OSError) or err.errno not in (errno.EPERM, errno.EACCES, errno.EROFS):
        return None
    if err.errno == errno.EPERM and err.filename is None:
        why = _explain_rlimit(tb, policy)
        if why:
            return why
    frames = traceback.extract_tb(tb) if tb is not None else []
    names = {f.name for f in frames}
    ctx = LaunchContext(env=dict(os.environ))
    filename = err.filename
    if filename is not None and not isinstance(filename, int):
        name = os.fsdecode(filename)
        if names & EXEC_FUNCTIONS and "/" not in name:  # a bare program name, looked up on PATH
            import shutil
            name = shutil.which(name) or name
        path = os.path.realpath(name)
        if path in {os.path.realpath(n) for n in accelerators.denied_nodes(policy)}:
            return "landlock", f"accelerators: the device node {path} is not in this tenant's profile"
        if names & EXEC_FUNCTIONS:
            tools = accelerators.tool_verdicts(policy)  # inside the sandbox: the launcher's verdicts
            allowed = [os.path.realpath(d) for d in ctx.expand_paths(policy.data["exec"]["allow"])]
            allowed += [p for _e, p, state, _d in tools if state == accelerators.GRANTED]
            if not _within_any(path, allowed):
                for _e, p, state, why in tools:
                    if state == accelerators.REFUSED and _within_any(path, [p]):
                        return "landlock", f"accelerators.gpu.tool_dirs: {p} may not run: {why}"
                gpu = ("; GPU tools run only where accelerators.gpu.enabled is true"
                       if not policy.gpu["enabled"] and os.path.basename(path).startswith("nvidia") else "")
                py = ("; {python} is the interpreter, not the directory it lies in"
                      if "{python}" in policy.data["exec"]["allow"]
                      and any(_within_any(path, [os.path.dirname(f)]) for f in ctx.python_paths()
                              if is_interpreter_name(os.path.basename(f)))
                      else "")
                return "landlock", (f"exec.allow: programs may run only from {', '.join(policy.data['exec']['allow'])}; "
                                    f"{path} is outside{py}{gpu}")
            return None
        writable = real_writable(policy, ctx)
        protected = [os.path.realpath(p) for p in ctx.protected_paths(policy)]
        target = path if os.path.exists(path) else os.path.dirname(path)
        if err.errno != errno.EROFS and not os.access(target, os.W_OK):
            return None  # ordinary permissions refuse it anyway (EROFS: a read-only mount of the sandbox's)
        # EROFS: a read-only mount of the sandbox's view (mount namespace), else Landlock's EACCES
        layer = "mount_namespace" if err.errno == errno.EROFS else "landlock"
        if _within_any(path, protected):
            return layer, (f"filesystem.protected: {path} is read-only in the sandbox (kernelspecs, profiles, "
                           f"the sandbox_kernel package and the guard hook cannot be changed from a cell)")
        if not _within_any(path, writable):
            return layer, f"filesystem.writable: writes are allowed only under {', '.join(writable)}"
        parent = os.path.dirname(path)
        if not os.path.exists(path) and any(below(p, parent) for p in protected):
            return "landlock", (f"filesystem.protected: new entries cannot be created directly in {parent}, which "
                                f"holds a protected path; create them in a subdirectory")
        return None
    if err.errno == errno.EPERM and frames and ".listen(" in (frames[-1].line or ""):
        listen = policy.network.get("listen_ports", [])
        ports = ", ".join(map(str, listen)) if isinstance(listen, list) and listen else "none"
        return "seccomp", (f"network.listen_ports: servers (listen() on IP sockets) only on ports {ports}, after "
                           f"bind() to one of them; UNIX sockets may listen")
    if names & SOCKET_FUNCTIONS or any(f.filename.endswith("socket.py") for f in frames):
        mode = policy.network["mode"]
        rule = nethint.rule_text(policy)
        if rule is None:
            return "seccomp", "network: raw and packet sockets are denied in every mode"
        return ("seccomp" if mode == "none" else "landlock"), rule
    return None


# --------------------------------------------------------------------------- rlimits


def _explain_rlimit(tb, policy) -> tuple[str, str] | None:
    """A setrlimit/prlimit call in the innermost frame that the sandbox refused: which limit."""
    res = _rlimit_call(tb)
    if res is None:
        return None
    name = RLIMIT_NAMES.get(res, f"resource {res}")
    fixed = {r: key for key, r, _ in rlimits.planned(policy)}
    hard = resource.getrlimit(res)[1] if res in RLIMIT_NAMES else None
    if res in fixed and hard is not None:
        rule = "core dumps: off" if fixed[res] == "core dumps" else f"limits.{fixed[res]}"
        return "rlimits", (f"{rule}: {name} is fixed at {_amount(res, hard)} (soft and hard) for the kernel and its "
                           f"children and cannot be raised inside the sandbox")
    if hard is not None and os.geteuid() == 0 and not _has_capability(CAP_SYS_RESOURCE):
        return "capabilities", (f"capabilities: CAP_SYS_RESOURCE is dropped, so root cannot raise {name} above its "
                                f"hard limit ({_amount(res, hard)})")
    return None  # an ordinary user cannot raise a hard limit anyway: not the sandbox's doing


def _rlimit_call(tb) -> int | None:
    """The resource argument of the setrlimit/prlimit call on the innermost traceback line,
    read from the source (and the frame's variables) without running anything."""
    if tb is None:
        return None
    while tb.tb_next is not None:
        tb = tb.tb_next
    frame = tb.tb_frame
    summary = traceback.extract_tb(tb)[-1]
    node = None
    for text in (_source_segment(summary), _source_lines(summary)):
        if not text:
            continue
        try:
            tree = ast.parse(textwrap.dedent(text))
        except SyntaxError:
            continue
        calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call) and _call_name(n.func) in RLIMIT_CALLS]
        if calls:
            node = calls[0]
            break
    if node is None:
        return None
    index = RLIMIT_CALLS[_call_name(node.func)]
    if len(node.args) <= index:
        return None
    arg = node.args[index]
    if isinstance(arg, ast.Constant) and type(arg.value) is int:
        return arg.value
    ident = arg.attr if isinstance(arg, ast.Attribute) else arg.id if isinstance(arg, ast.Name) else None
    if ident is None:
        return None
    if ident.startswith("RLIMIT_") and isinstance(getattr(resource, ident, None), int):
        return getattr(resource, ident)
    if isinstance(arg, ast.Name):
        for scope in (frame.f_locals, frame.f_globals):
            if ident in scope:
                value = scope[ident]
                return value if type(value) is int else None
    return None


def _call_name(func) -> str | None:
    return func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else None


def _source_lines(summary) -> str:
    lines = linecache.getlines(summary.filename)
    end = getattr(summary, "end_lineno", None) or summary.lineno
    return "".join(lines[summary.lineno - 1:end]) if summary.lineno else ""


def _source_segment(summary) -> str:
    """Exactly the expression that raised (3.11 positions; columns are UTF-8 byte offsets)."""
    col, end_col = getattr(summary, "colno", None), getattr(summary, "end_colno", None)
    text = _source_lines(summary)
    if col is None or end_col is None or not text:
        return ""
    raw = text.encode()
    last_start = raw.rstrip(b"\n").rfind(b"\n") + 1
    return raw[col:last_start + end_col].decode(errors="replace")


def _amount(res: int, n: int) -> str:
    if n == resource.RLIM_INFINITY:
        return "unlimited"
    if res in RLIMIT_SIZES:
        for unit, k in (("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
            if n >= k and n % k == 0:
                return f"{n // k} {unit}"
        return f"{n} bytes" if n else "0"
    if res == getattr(resource, "RLIMIT_CPU", None):
        return f"{n} s"
    return str(n)


def _has_capability(cap: int) -> bool:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("CapEff:"):
                    return bool(int(line.split()[1], 16) & (1 << cap))
    except (OSError, ValueError):
        pass
    return True  # cannot tell: do not blame the sandbox
