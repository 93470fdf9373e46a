"""The refusal kernel: what a kernelspec start that the launcher refused serves instead.

When the launcher refuses to start a kernel (the kernelspec's profile was deleted or is
invalid, a layer the profile requires cannot be applied, the command is outside
``exec.allow``, ...), exiting would leave the notebook user with "No Kernel" or
"Disconnected" while Jupyter restarts the launcher five times, and nbclient, papermill and
``jupyter execute`` with 40 to 60 lines of "Kernel died before replying to kernel_info".
So where the kernel's connection file could be read, the launcher serves the Jupyter
messaging protocol on the connection file's ports instead, from this module:

- ``kernel_info_request``: a reply whose banner and implementation (``sandbox-kernel-refusal``)
  say that the kernel refused to start, and why;
- ``execute_request``: never executes anything; publishes a short ``stderr`` line saying so
  and an ``error`` output, and replies ``status: error`` with ``ename`` ``SandboxStartRefused``
  and the one-line reason as ``evalue`` (what nbclient, papermill and JupyterLab show);
- the other requests get empty or error replies; ``shutdown_request`` ends it.

It is not a kernel that runs code, so it needs no layer: it evaluates nothing it receives
(no ``eval``, no ``exec``, no import of anything named in a message), and runs with the
privileges of the launcher, which are those of the process that started the kernel (the
Jupyter server, or what the kernelspec's argv made of them, e.g. ``setpriv``) and never
more. What it parses: ZMTP 3 frames (bounded: 1 MiB per message) from connections to its
ports, and JSON only of messages whose HMAC signature (the connection file's key) is valid.
It is served only where the start itself is trusted (never after a trusted_start refusal,
and only if this file, the package and the standard library are not writable by the
tenant's uid) and never for a connection file that is not this uid's own and private, or
whose ipc socket directory was refused. It runs in the trusted start (``python -I -S
boot.py``): the standard library and this package only, no IPython, no pyzmq; ZMTP 3.0 with the NULL mechanism is written out here
(rfc.zeromq.org/spec/23), as far as Jupyter's clients use it (DEALER to ROUTER for shell,
control and stdin; SUB to PUB for IOPub; REQ to REP for the heartbeat).
"""

from __future__ import annotations

import os
import select
import signal
import socket
import sys
import time

from . import __version__, standins

DELIM = b"<IDS|MSG>"
MAX_MESSAGE = 1 << 20
PROTOCOL_VERSION = "5.3"
ENAME = "SandboxStartRefused"
IMPLEMENTATION = "sandbox-kernel-refusal"
CHANNELS = (("shell", "shell_port", b"ROUTER"), ("control", "control_port", b"ROUTER"),
            ("stdin", "stdin_port", b"ROUTER"), ("iopub", "iopub_port", b"PUB"), ("hb", "hb_port", b"REP"))
# signature, padding, 0x7f; version 3.0; mechanism NULL; as-server 0; filler
GREETING = b"\xff" + bytes(8) + b"\x7f" + b"\x03\x00" + b"NULL".ljust(20, b"\0") + b"\x00" + bytes(31)


def one_line(reason: str) -> str:
    """The reason on one line (a ProfileError lists one problem a line)."""
    return "; ".join(line.strip() for line in str(reason).splitlines() if line.strip())


def _frame(data: bytes, more: bool, command: bool = False) -> bytes:
    flags = (1 if more else 0) | (4 if command else 0)
    if len(data) > 255:
        return bytes([flags | 2]) + len(data).to_bytes(8, "big") + data
    return bytes([flags, len(data)]) + data


def _ready(socket_type: bytes) -> bytes:
    name, value = b"Socket-Type", socket_type
    body = b"\x05READY" + bytes([len(name)]) + name + len(value).to_bytes(4, "big") + value
    return _frame(body, more=False, command=True)


class ProtocolError(Exception):
    pass


class Peer:
    """One connection to one of the ports: ZMTP 3 greeting, handshake, then multipart messages."""

    def __init__(self, sock: socket.socket, channel: str, socket_type: bytes):
        self.sock = sock
        self.channel = channel
        self.buf = bytearray()
        self.greeted = False
        self.parts: list[bytes] = []
        self.size = 0
        sock.settimeout(5)
        self.sock.sendall(GREETING + _ready(socket_type))

    def feed(self, data: bytes) -> list[list[bytes]]:
        """The complete messages in what arrived (raises ProtocolError on anything else)."""
        buf = self.buf
        buf += data
        out: list[list[bytes]] = []
        if not self.greeted:
            if len(buf) >= 1 and buf[0] != 0xFF or len(buf) >= 10 and buf[9] != 0x7F:
                raise ProtocolError("not a ZMTP peer")
            if len(buf) >= 11 and buf[10] < 3:
                raise ProtocolError("ZMTP before 3.0")
            if len(buf) < 64:
                return out
            if bytes(buf[12:32]).rstrip(b"\0") != b"NULL":
                raise ProtocolError("a security mechanism other than NULL")
            del buf[:64]
            self.greeted = True
        while len(buf) >= 2:
            flags = buf[0]
            if flags & 2:
                if len(buf) < 9:
                    break
                size, head = int.from_bytes(buf[1:9], "big"), 9
            else:
                size, head = buf[1], 2
            if size > MAX_MESSAGE or self.size + size > MAX_MESSAGE:
                raise ProtocolError("message too large")
            if len(buf) < head + size:
                break
            body = bytes(buf[head:head + size])
            del buf[:head + size]
            if flags & 4:  # a command: READY, SUBSCRIBE, PING, ERROR
                if body[:6] == b"\x05ERROR":
                    raise ProtocolError("the peer reported an error")
                if body[:5] == b"\x04PING" and len(body) >= 7:  # (ZMTP 3.1; answered for completeness)
                    self.sock.sendall(_frame(b"\x04PONG" + body[7:], more=False, command=True))
                continue
            self.parts.append(body)
            self.size += size
            if not flags & 1:
                out.append(self.parts)
                self.parts, self.size = [], 0
        return out

    def send(self, frames: list[bytes]) -> None:
        self.sock.sendall(b"".join(_frame(f, i < len(frames) - 1) for i, f in enumerate(frames)))


class RefusalKernel:
    def __init__(self, info: dict, reason: str, profile: str):
        self.info = info
        self.reason = one_line(reason)
        self.profile = profile
        self.key = str(info.get("key", "")).encode()
        scheme = str(info.get("signature_scheme", "hmac-sha256"))
        self.digest = scheme[len("hmac-"):] if scheme.startswith("hmac-") else "sha256"
        self.session = os.urandom(16).hex()
        self.count = 0
        self.peers: dict[int, Peer] = {}
        self.listeners: dict[int, tuple[socket.socket, str, bytes]] = {}
        self.unlink: list[str] = []
        self.done = False

    # ------------------------------------------------------------------ the messages
    def banner(self) -> str:
        return (f"sandbox-kernel {__version__}: this kernel REFUSED TO START (profile '{self.profile}') and runs "
                f"no code.\nReason: {self.reason}\n")

    def lines(self) -> list[str]:
        return [f"\x1b[0;31m{ENAME}\x1b[0m: the sandbox kernel (profile '{self.profile}') refused to start; "
                f"nothing in this cell ran, and no cell will run until the cause is fixed and the kernel restarted "
                f"(ask the platform's administrators: `sandbox-kernel doctor` on the server names the cause).",
                f"Reason: {self.reason}"]

    def _sign(self, parts: list[bytes]) -> bytes:
        import hmac

        if not self.key:
            return b""
        if self.digest == "sha256":
            digestmod = standins.sha256_constructor()  # no OpenSSL (standins.py)
        else:
            digestmod = self.digest
        h = hmac.new(self.key, digestmod=digestmod)
        for p in parts:
            h.update(p)
        return h.hexdigest().encode()

    def _header(self, msg_type: str) -> dict:
        t = time.time()
        date = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int(t % 1 * 1e6):06d}Z"
        return {"msg_id": os.urandom(16).hex(), "msg_type": msg_type, "username": "sandbox-kernel",
                "session": self.session, "date": date, "version": PROTOCOL_VERSION}

    def _pack(self, msg_type: str, parent: dict, content: dict) -> list[bytes]:
        parts = [standins.json_dumps(x).encode() for x in (self._header(msg_type), parent, {}, content)]
        return [DELIM, self._sign(parts)] + parts

    def publish(self, msg_type: str, parent: dict, content: dict) -> None:
        frames = [f"kernel.{self.session[:8]}.{msg_type}".encode()] + self._pack(msg_type, parent, content)
        for peer in [p for p in self.peers.values() if p.channel == "iopub"]:
            self._send(peer, frames)

    def _send(self, peer: Peer, frames: list[bytes]) -> None:
        try:
            peer.send(frames)
        except OSError:
            self._close(peer.sock.fileno())

    def kernel_info(self) -> dict:
        return {"status": "ok", "protocol_version": PROTOCOL_VERSION, "implementation": IMPLEMENTATION,
                "implementation_version": __version__,
                "language_info": {"name": "python", "version": sys.version.split()[0], "mimetype": "text/x-python",
                                  "file_extension": ".py", "codemirror_mode": {"name": "ipython", "version": 3},
                                  "pygments_lexer": "ipython3", "nbconvert_exporter": "python"},
                "banner": self.banner(), "help_links": [], "debugger": False,
                "sandbox_kernel": {"refused": True, "profile": self.profile, "reason": self.reason}}

    def reply_content(self, msg_type: str, content: dict) -> tuple[str, dict]:
        if msg_type == "kernel_info_request":
            return "kernel_info_reply", self.kernel_info()
        if msg_type == "is_complete_request":
            return "is_complete_reply", {"status": "complete"}
        if msg_type == "complete_request":
            pos = content.get("cursor_pos") if isinstance(content.get("cursor_pos"), int) else 0
            return "complete_reply", {"status": "ok", "matches": [], "cursor_start": pos, "cursor_end": pos,
                                      "metadata": {}}
        if msg_type == "inspect_request":
            return "inspect_reply", {"status": "ok", "found": False, "data": {}, "metadata": {}}
        if msg_type == "history_request":
            return "history_reply", {"status": "ok", "history": []}
        if msg_type == "comm_info_request":
            return "comm_info_reply", {"status": "ok", "comms": {}}
        if msg_type == "interrupt_request":
            return "interrupt_reply", {"status": "ok"}
        if msg_type == "shutdown_request":
            return "shutdown_reply", {"status": "ok", "restart": bool(content.get("restart"))}
        return msg_type[:-len("_request")] + "_reply", {
            "status": "error", "ename": ENAME, "evalue": self.reason, "traceback": self.lines()}

    def handle(self, peer: Peer, frames: list[bytes]) -> None:
        if peer.channel == "hb":
            self._send(peer, frames)  # the REQ envelope and the payload, echoed
            return
        if peer.channel in ("iopub", "stdin") or DELIM not in frames:
            return  # subscriptions; input replies (nothing ever asks for input)
        i = frames.index(DELIM)
        idents, rest = frames[:i], frames[i + 1:]
        if len(rest) < 5:
            return
        import hmac

        if self.key and not hmac.compare_digest(self._sign(rest[1:5]), rest[0]):
            return  # not from the holder of the connection file's key: not parsed further
        try:
            header, content = standins.json_loads(rest[1]), standins.json_loads(rest[4])
        except ValueError:
            return
        if not isinstance(header, dict) or not isinstance(content, dict):
            return
        msg_type = header.get("msg_type")
        if not isinstance(msg_type, str) or not msg_type.endswith("_request"):
            return  # comm_open, comm_msg, ...: no reply in the protocol
        self.publish("status", header, {"execution_state": "busy"})
        if msg_type == "execute_request":
            self._execute(peer, idents, header, content)
        else:
            reply_type, reply = self.reply_content(msg_type, content)
            self._send(peer, idents + self._pack(reply_type, header, reply))
        self.publish("status", header, {"execution_state": "idle"})
        if msg_type == "shutdown_request":
            self.publish("shutdown_reply", header, {"status": "ok", "restart": bool(content.get("restart"))})
            self.done = True

    def _execute(self, peer: Peer, idents: list[bytes], header: dict, content: dict) -> None:
        silent = bool(content.get("silent"))
        if not silent and content.get("store_history", True):
            self.count += 1
        count = self.count
        if not silent:
            code = content.get("code") if isinstance(content.get("code"), str) else ""
            self.publish("execute_input", header, {"code": code, "execution_count": count})
            self.publish("stream", header, {"name": "stderr", "text": "sandbox-kernel: this kernel refused to "
                                                                      "start and runs no code (why: below)\n"})
            self.publish("error", header, {"ename": ENAME, "evalue": self.reason, "traceback": self.lines()})
        reply = {"status": "error", "execution_count": count, "ename": ENAME, "evalue": self.reason,
                 "traceback": self.lines(), "user_expressions": {}, "payload": []}
        self._send(peer, idents + self._pack("execute_reply", header, reply))

    # ------------------------------------------------------------------ the sockets
    def bind(self) -> None:
        transport = self.info.get("transport", "tcp")
        ip = self.info.get("ip") or "127.0.0.1"
        for channel, key, socket_type in CHANNELS:
            port = int(self.info[key])
            if transport == "ipc":
                path = f"{os.path.abspath(ip)}-{port}"
                s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                try:
                    os.unlink(path)  # as ZMQ does with a stale socket file
                except OSError:
                    pass
                s.bind(path)
                self.unlink.append(path)
            else:
                host = {"localhost": "127.0.0.1", "*": "0.0.0.0"}.get(ip, ip)
                s = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                s.bind((host, port))
            s.listen(16)
            s.set_inheritable(False)
            self.listeners[s.fileno()] = (s, channel, socket_type)

    def _close(self, fd: int) -> None:
        peer = self.peers.pop(fd, None)
        if peer is not None:
            try:
                self.poller.unregister(fd)
            except (KeyError, ValueError):
                pass
            peer.sock.close()

    def serve(self, parent_fd: int | None = None) -> int:
        self.poller = select.poll()
        for fd in self.listeners:
            self.poller.register(fd, select.POLLIN)
        if parent_fd is not None:
            self.poller.register(parent_fd, select.POLLIN)
        try:
            while not self.done:
                for fd, _event in self.poller.poll():
                    if fd == parent_fd:  # Jupyter is gone
                        return 0
                    if fd in self.listeners:
                        lsock, channel, socket_type = self.listeners[fd]
                        try:
                            s, _ = lsock.accept()
                        except OSError:
                            continue
                        try:
                            peer = Peer(s, channel, socket_type)
                        except OSError:  # gone before the greeting could be sent
                            s.close()
                            continue
                        self.peers[s.fileno()] = peer
                        self.poller.register(s.fileno(), select.POLLIN)
                        continue
                    peer = self.peers.get(fd)
                    if peer is None:
                        continue
                    try:
                        data = peer.sock.recv(65536)
                        if not data:
                            raise ProtocolError("closed")
                        for message in peer.feed(data):
                            self.handle(peer, message)
                    except (OSError, ProtocolError):
                        self._close(fd)
            return 0
        finally:
            for fd in list(self.peers):
                self._close(fd)
            for s, _, _ in self.listeners.values():
                s.close()
            for path in self.unlink:
                try:
                    os.unlink(path)
                except OSError:
                    pass


def serve(info: dict, reason: str, profile: str, parent_fd: int | None = None) -> int:
    """Serve the refusal on the connection file's ports until shut down (or Jupyter exits);
    returns the exit status (1: the ports could not be bound either)."""
    try:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # interrupt_mode "signal": nothing to interrupt
    except (ValueError, OSError):
        pass
    k = RefusalKernel(info, reason, profile)
    try:
        k.bind()
    except OSError as e:
        print(f"sandbox-kernel: cannot serve the refusal to the notebook either (binding the kernel's ports: "
              f"{e.strerror or e})", file=sys.stderr)
        return 1
    sys.stderr.flush()
    return k.serve(parent_fd)


__all__ = ["ENAME", "IMPLEMENTATION", "RefusalKernel", "serve"]
