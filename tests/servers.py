"""Real Jupyter servers for the end-to-end tests: start on 127.0.0.1, wait (bounded) until
they answer, talk to their kernels over REST and websockets, and stop every process
they started.

Waits are on conditions (a port answering, a message arriving) with an upper bound,
never fixed sleeps.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
import uuid
from pathlib import Path

import kernelutil


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _children() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                stat = fh.read()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        kids.setdefault(ppid, []).append(int(entry))
    return kids


def descendants(pid: int) -> list[int]:
    """Every process below `pid` (kernels start their own sessions, so process groups miss them)."""
    kids, out, todo = _children(), [], [pid]
    while todo:
        for c in kids.get(todo.pop(), []):
            out.append(c)
            todo.append(c)
    return out


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


class Server:
    """A server process (in its own session) whose output goes to a log file."""

    def __init__(self, name: str, argv: list[str], *, env: dict, cwd: str, log_dir: Path, user=None):
        self.name = name
        self.log_path = Path(log_dir) / f"{name}.log"
        self._log = open(self.log_path, "wb")
        if user is not None:
            argv = ["setpriv", f"--reuid={user.pw_uid}", f"--regid={user.pw_gid}", "--init-groups", "--"] + argv
        self.proc = subprocess.Popen(argv, env=env, cwd=cwd, stdout=self._log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        self.seen: set[int] = set()

    def log(self, tail: int = 6000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-tail:]
        except OSError:
            return ""

    def wait_until(self, predicate, what: str, timeout: float = 90):
        """Poll `predicate` until it returns something truthy; fail with the log on timeout or exit."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.seen.update(descendants(self.proc.pid))
            if self.proc.poll() is not None:
                raise AssertionError(f"{self.name} exited ({self.proc.returncode}) while waiting for {what}:\n{self.log()}")
            try:
                got = predicate()
            except (OSError, ValueError):
                got = None
            if got:
                return got
            time.sleep(0.2)
        raise AssertionError(f"{self.name}: no {what} within {timeout:.0f} s:\n{self.log()}")

    def wait_http(self, url: str, timeout: float = 90, headers: dict | None = None):
        import requests

        def up():
            r = requests.get(url, headers=headers or {}, timeout=5)
            return r if r.status_code < 500 else None

        return self.wait_until(up, f"answer from {url}", timeout)

    def stop(self, timeout: float = 20) -> None:
        """SIGTERM (servers shut their kernels down), then SIGKILL whatever is left below it."""
        if self.proc.poll() is None:
            self.seen.update(descendants(self.proc.pid))
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.seen.update(descendants(self.proc.pid))
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        leftover = [p for p in self.seen if alive(p)]
        for p in leftover:
            try:
                os.kill(p, signal.SIGKILL)
            except ProcessLookupError:
                pass
        kernelutil.wait_for(lambda: not any(alive(p) for p in leftover), timeout=10)
        self._log.close()


# --------------------------------------------------------------------------- kernels over HTTP


class RemoteKernel:
    """A kernel of a Jupyter server (or Enterprise Gateway), driven through its REST API and websocket."""

    def __init__(self, base_url: str, token: str, name: str, *, env: dict | None = None, timeout: float = 120):
        import requests

        self.base = base_url.rstrip("/")
        self.headers = {"Authorization": f"token {token}"}
        body = {"name": name}
        if env is not None:
            body["env"] = env
        r = requests.post(f"{self.base}/api/kernels", json=body, headers=self.headers, timeout=timeout)
        assert r.status_code == 201, (r.status_code, r.text)
        self.model = r.json()
        self.id = self.model["id"]
        self.session = uuid.uuid4().hex
        self.ws = self._connect(timeout)

    def _connect(self, timeout: float):
        import websocket

        url = self.base.replace("http://", "ws://", 1) + f"/api/kernels/{self.id}/channels?session_id={self.session}"
        deadline = time.monotonic() + timeout
        while True:  # the server accepts the websocket once the kernel answers
            try:
                return websocket.create_connection(url, header=[f"{k}: {v}" for k, v in self.headers.items()],
                                                   timeout=timeout)
            except (OSError, websocket.WebSocketException):
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)

    def execute(self, code: str, timeout: float = 120) -> dict:
        """Run one cell; returns {'status', 'stdout', 'stderr', 'ename', 'evalue', 'traceback'}."""
        msg_id = uuid.uuid4().hex
        self.ws.send(json.dumps({
            "header": {"msg_id": msg_id, "msg_type": "execute_request", "username": "test",
                       "session": self.session, "version": "5.3", "date": ""},
            "parent_header": {}, "metadata": {}, "channel": "shell", "buffers": [],
            "content": {"code": code, "silent": False, "store_history": True, "user_expressions": {},
                        "allow_stdin": False, "stop_on_error": True}}))
        out = {"status": None, "stdout": "", "stderr": "", "ename": "", "evalue": "", "traceback": "", "idle": False}
        deadline = time.monotonic() + timeout
        while not (out["status"] and out["idle"]):
            self.ws.settimeout(max(1.0, deadline - time.monotonic()))
            if time.monotonic() > deadline:
                raise AssertionError(f"no reply to {code!r} within {timeout} s: {out}")
            msg = json.loads(self.ws.recv())
            if msg.get("parent_header", {}).get("msg_id") != msg_id:
                continue
            t, c = msg["msg_type"], msg["content"]
            if t == "stream":
                out[c["name"]] += c["text"]
            elif t == "error":
                out["traceback"] = kernelutil._strip_ansi("\n".join(c["traceback"]))
            elif t == "execute_reply":
                out["status"] = c["status"]
                out["ename"], out["evalue"] = c.get("ename", ""), c.get("evalue", "")
            elif t == "status" and c["execution_state"] == "idle":
                out["idle"] = True
        return out

    def shutdown(self) -> None:
        import requests

        try:
            self.ws.close()
        finally:
            requests.delete(f"{self.base}/api/kernels/{self.id}", headers=self.headers, timeout=60)
