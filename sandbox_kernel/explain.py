"""Which profile rule caused a PermissionError or EROFS (for the one added line in a cell).

A heuristic over the error and its traceback; it only speaks when the sandbox is
the likely cause: the path is not writable under the profile while ordinary file
permissions would allow the write, the program is outside ``exec.allow``, the node
is a denied accelerator, or a socket call failed under a restricted network mode.
"""

from __future__ import annotations

import errno
import os
import traceback

from .layers import accelerators
from .layers.base import LaunchContext

EXEC_FUNCTIONS = {"_execute_child", "execv", "execve", "execvp", "execvpe", "posix_spawn", "posix_spawnp", "_fork_exec"}
SOCKET_FUNCTIONS = {"socket", "connect", "connect_ex", "bind", "create_connection", "socketpair", "sendto"}


def _within(p: str, roots: list[str]) -> bool:
    p = os.path.normpath(p)
    return any(p == r or p.startswith(r.rstrip("/") + "/") for r in map(os.path.normpath, roots))


def explain(err: BaseException, tb, policy) -> tuple[str, str] | None:
    if not isinstance(err, OSError) or err.errno not in (errno.EPERM, errno.EACCES, errno.EROFS):
        return None
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
            if not _within(path, allowed):
                for _e, p, state, why in tools:
                    if state == accelerators.REFUSED and _within(path, [p]):
                        return "landlock", f"accelerators.gpu.tool_dirs: {p} may not run: {why}"
                gpu = ("; GPU tools run only where accelerators.gpu.enabled is true"
                       if not policy.gpu["enabled"] and os.path.basename(path).startswith("nvidia") else "")
                return "landlock", (f"exec.allow: programs may run only from {', '.join(policy.data['exec']['allow'])}; "
                                    f"{path} is outside{gpu}")
            return None
        writable = [os.path.realpath(w) for w in ctx.expand_paths(policy.data["filesystem"]["writable"])]
        protected = [os.path.realpath(p) for p in ctx.protected_paths(policy)]
        target = path if os.path.exists(path) else os.path.dirname(path)
        if err.errno != errno.EROFS and not os.access(target, os.W_OK):
            return None  # ordinary permissions refuse it anyway (EROFS: a read-only mount of the sandbox's)
        if _within(path, protected):
            return "landlock", (f"filesystem.protected: {path} is read-only in the sandbox (kernelspecs, profiles, "
                                f"the sandbox_kernel package and the guard hook cannot be changed from a cell)")
        if not _within(path, writable):
            return "landlock", f"filesystem.writable: writes are allowed only under {', '.join(writable)}"
        parent = os.path.dirname(path)
        if not os.path.exists(path) and any(p.startswith(parent.rstrip("/") + "/") for p in protected):
            return "landlock", (f"filesystem.protected: new entries cannot be created directly in {parent}, which "
                                f"holds a protected path; create them in a subdirectory")
        return None
    if names & SOCKET_FUNCTIONS or any(f.filename.endswith("socket.py") for f in frames):
        net = policy.network
        if net["mode"] == "none":
            return "seccomp", "network.mode is 'none': only UNIX sockets can be created"
        if net["mode"] == "restricted":
            ports = ", ".join(map(str, net["tcp_connect_ports"])) or "none"
            return "landlock", (f"network.mode is 'restricted': TCP connections only to ports {ports}"
                                + ("" if net["udp"] else ", no UDP") + ", no listening sockets, no raw sockets")
        return "seccomp", "network: raw and packet sockets are denied in every mode"
    return None
