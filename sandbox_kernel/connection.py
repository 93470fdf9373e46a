"""The kernel's connection file: read once, validated, and pinned by its hash.

The connection file names the ports the kernel binds (and so the TCP ports Landlock
lets it bind) and, for the ipc transport, a directory where it creates sockets. It
lives in Jupyter's runtime directory or another place a tenant may be able to write,
so the launcher treats it as untrusted input (issue: a helper process swapped it
during a restart and widened the sandbox):

- it is opened first, before the policy is read, with ``O_NOFOLLOW``, and read once;
- it must be a regular file owned by this uid (or root) and not writable by group or
  others;
- only values a kernel manager could have chosen are accepted: transport ``tcp`` or
  ``ipc``; five distinct ports in 1024-65535 (for ipc, socket file numbers); a loopback ``ip`` unless the kernelspec
  names another with ``--allow-kernel-ip`` (a platform setting, e.g. for kernels in a
  pod); an HMAC signature scheme with a non-empty key (an empty key would make the
  kernel obey unsigned messages from any local process);
- its SHA-256 is handed to the kernel (``SANDBOX_KERNEL_CONNECTION_SHA256``), which
  loads the file only if it still has that hash and refuses to start otherwise.

Standard library only: this runs before any layer is applied.
"""

from __future__ import annotations

import os
import stat

from . import standins
from .errors import SandboxError

SHA_ENV = "SANDBOX_KERNEL_CONNECTION_SHA256"
PORT_KEYS = ("shell_port", "iopub_port", "stdin_port", "control_port", "hb_port")
LOOPBACK = {"127.0.0.1", "::1", "localhost"}
MAX_BYTES = 64 * 1024
MIN_PORT, MAX_PORT = 1024, 65535


class Connection:
    """A validated connection file."""

    def __init__(self, path: str, info: dict, sha256: str):
        self.path = path
        self.info = info
        self.sha256 = sha256

    @property
    def transport(self) -> str:
        return self.info.get("transport", "tcp")

    @property
    def ports(self) -> list[int]:
        return sorted(int(self.info[k]) for k in PORT_KEYS)

    @property
    def ipc_prefix(self) -> str | None:
        """For the ipc transport: the path prefix of the sockets (``{ip}-{port}``), absolute."""
        if self.transport != "ipc":
            return None
        return os.path.abspath(self.info.get("ip") or "kernel-ipc")


def _is_loopback(ip: str) -> bool:
    return ip in LOOPBACK or ip.startswith("127.") and all(p.isdigit() for p in ip.split("."))


def read(path: str, allowed_ips: list[str] | None = None, *, any_ip: bool = False) -> Connection:
    """Open, read and validate the connection file; raise SandboxError naming what is wrong.
    `any_ip`: accept a non-loopback ip (only for the refusal kernel, which runs nothing)."""
    def bad(why: str) -> SandboxError:
        return SandboxError(f"connection file {path}: {why}; refusing to start")

    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError as e:
        why = "it is a symbolic link" if e.errno == 40 else f"cannot open it ({e.strerror})"
        raise bad(why) from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise bad("not a regular file")
        if st.st_uid not in (os.getuid(), 0):
            raise bad(f"owned by uid {st.st_uid}, not by this user ({os.getuid()}) or root")
        if st.st_mode & 0o022:
            raise bad(f"writable by group or others (mode {stat.S_IMODE(st.st_mode):o}); "
                      f"Jupyter writes it with mode 600")
        chunks, size = [], 0
        while size <= MAX_BYTES:
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    finally:
        os.close(fd)
    data = b"".join(chunks)
    if len(data) > MAX_BYTES:
        raise bad(f"larger than {MAX_BYTES} bytes")
    try:
        info = standins.json_loads(data)
    except ValueError as e:  # (standins.json_loads: "JSON nested too deeply" included)
        raise bad(f"not valid JSON ({e})") from None
    if not isinstance(info, dict):
        raise bad("not a JSON object")
    _validate(info, allowed_ips or [], bad, any_ip)
    return Connection(os.path.abspath(path), info, standins.sha256_hex(data))


def _validate(info: dict, allowed_ips: list[str], bad, any_ip: bool = False) -> None:
    transport = info.get("transport", "tcp")
    if transport not in ("tcp", "ipc"):
        raise bad(f"transport {transport!r} is not 'tcp' or 'ipc'")
    ports = []
    low = MIN_PORT if transport == "tcp" else 1  # ipc "ports" are socket file suffixes: 1, 2, 3, ...
    for k in PORT_KEYS:
        v = info.get(k)
        if isinstance(v, bool) or not isinstance(v, int) or not low <= v <= MAX_PORT:
            raise bad(f"{k} is {v!r}; expected a port number in {low}-{MAX_PORT} chosen by the kernel manager")
        ports.append(v)
    if len(set(ports)) != len(ports):
        raise bad(f"the five ports are not distinct ({ports})")
    ip = info.get("ip", "127.0.0.1")
    if not isinstance(ip, str) or not ip:
        raise bad(f"ip is {ip!r}")
    if transport == "tcp" and not _is_loopback(ip) and ip not in allowed_ips and not any_ip:
        raise bad(f"ip {ip!r} is not a loopback address; a kernelspec may allow it with --allow-kernel-ip {ip}")
    if transport == "ipc" and "\0" in ip:
        raise bad("the ipc path contains a NUL byte")
    scheme = info.get("signature_scheme", "hmac-sha256")
    if not isinstance(scheme, str) or not scheme.startswith("hmac-"):
        raise bad(f"signature_scheme {scheme!r} is not an HMAC scheme")
    key = info.get("key")
    if not isinstance(key, str) or not key:
        raise bad("the HMAC key is empty: the kernel would obey unsigned messages from any local process")


def verify(path: str, expected_sha256: str) -> dict:
    """In the kernel: the connection file's content, if it still has the launcher's hash."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            data = b""
            while len(data) <= MAX_BYTES:
                chunk = os.read(fd, 65536)
                if not chunk:
                    break
                data += chunk
        finally:
            os.close(fd)
    except OSError as e:
        raise SandboxError(f"connection file {path}: cannot read it ({e.strerror})") from None
    if standins.sha256_hex(data) != expected_sha256:
        raise SandboxError(f"connection file {path} changed after the launcher validated it; refusing to start")
    return standins.json_loads(data)
