"""One benchmark kernel: started by jupyter_client, driven over its shell channel.

Replies are read straight from the shell socket (no asyncio wrapper, no
``execute_interactive``), so the client adds the same small, constant cost to
every variant. Results come back as a ``user_expression`` of the execute request;
IOPub is subscribed (as a real frontend would) and drained between cells.
"""

from __future__ import annotations

import ast
import inspect
import json
import os
import time
from pathlib import Path
from queue import Empty

import zmq
from jupyter_client.manager import KernelManager

from . import cells


WRAPPERS = (b"bwrap", b"firejail")  # the peers' processes above the kernel (benchmarks/peers.py)


class KernelError(RuntimeError):
    pass


def cell_source(fn, **kwargs) -> str:
    """The cell for workload `fn`: the timing helper, the function, and the call."""
    call = f"__bench_result = __import__('json').dumps({fn.__name__}(**{kwargs!r}))"
    helpers = inspect.getsource(cells._timed) if fn not in (cells.import_torch, cells.environment) else ""
    return f"{helpers}\n{inspect.getsource(fn)}\n{call}\n"


class BenchKernel:
    def __init__(self, spec_name: str, *, cwd: str, env: dict, log_path: Path, connection_dir: str | None = None):
        self.spec_name = spec_name
        # None: jupyter_client's default for a bare KernelManager (a temporary file in /tmp);
        # a directory (--peers: Jupyter's runtime directory, where a Jupyter server puts it,
        # outside the private /tmp of bubblewrap and firejail)
        self.connection_dir = connection_dir
        self.cwd = cwd
        self.env = env
        self.log_path = log_path
        self.km: KernelManager | None = None
        self.kc = None
        self._log = None
        self.stream_tail: list[str] = []
        self.pass_fds: tuple[int, ...] = ()  # descriptors the kernel process inherits (Popen's pass_fds)

    # -- life cycle
    def start(self, timeout: float) -> float:
        """Start the kernel; milliseconds from the start request to the first execute_reply."""
        self._log = open(self.log_path, "ab", buffering=0)
        self.km = KernelManager(kernel_name=self.spec_name)
        if self.connection_dir:
            import uuid

            self.km.connection_file = os.path.join(self.connection_dir, f"kernel-{uuid.uuid4()}.json")
        # The client connects before the kernel has bound its ports; ZMQ then retries every
        # RECONNECT_IVL (100 ms by default), which would quantise every start-up figure to
        # 100 ms steps. Retrying every 2 ms measures the kernel, not the retry clock.
        zmq.Context.instance().setsockopt(zmq.RECONNECT_IVL, 2)
        self.t_start = time.monotonic()  # CLOCK_MONOTONIC: comparable with the launcher's timing marks
        t0 = time.perf_counter()
        extra = {"pass_fds": self.pass_fds} if self.pass_fds else {}
        self.km.start_kernel(cwd=self.cwd, env=self.env, stdout=self._log, stderr=self._log, **extra)
        self.kc = self.km.client()
        self.kc.start_channels(shell=True, iopub=True, stdin=False, hb=False, control=False)
        msg_id = self.kc.execute("", store_history=False)
        reply = self._reply(msg_id, timeout)
        elapsed = (time.perf_counter() - t0) * 1e3
        self.t_first_reply = time.monotonic()
        self._check(reply, "the start-up cell")
        self.drain()
        return elapsed

    @property
    def pid(self) -> int:
        return self.km.provisioner.process.pid  # plain kernels; the supervisor under a PID namespace

    @property
    def kernel_pid(self) -> int:
        """The process running the kernel: the pid Jupyter knows, or, where the launcher keeps a
        supervisor and an init (pid_namespace layer), the kernel at the end of that chain (whose
        processes still show the launcher's command line)."""
        pid = self.pid
        for _ in range(4):
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as fh:
                    cmd = fh.read()
                    # a supervisor/init (boot.py) or a peer's wrapper (bwrap, firejail): descend
                    if b"boot.py" not in cmd and os.path.basename(cmd.split(b"\0")[0]) not in WRAPPERS:
                        break
                with open(f"/proc/{pid}/task/{pid}/children") as fh:
                    children = fh.read().split()
            except OSError:
                break
            if not children:
                break
            pid = int(children[0])
        return pid

    def vm_hwm_mib(self) -> float:
        """Peak resident set size (VmHWM) of the kernel process, MiB."""
        with open(f"/proc/{self.kernel_pid}/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
        raise KernelError("no VmHWM in /proc/<pid>/status")

    def tree_pids(self) -> list[int]:
        """The process Jupyter started and every descendant (a wrapper, a supervisor, an init, the kernel)."""
        out, todo = [], [self.pid]
        while todo:
            pid = todo.pop()
            out.append(pid)
            try:
                for task in os.listdir(f"/proc/{pid}/task"):
                    with open(f"/proc/{pid}/task/{task}/children") as fh:
                        todo += [int(x) for x in fh.read().split()]
            except OSError:
                continue
        return out

    def pss_mib(self) -> float:
        """Proportional set size of the kernel's whole process tree (smaps_rollup), MiB: what one
        more kernel costs the machine, wrappers and supervisors included."""
        total = 0
        for pid in self.tree_pids():
            try:
                with open(f"/proc/{pid}/smaps_rollup") as fh:
                    for line in fh:
                        if line.startswith("Pss:"):
                            total += int(line.split()[1])
                            break
            except OSError:
                continue
        return total / 1024

    def cpu_seconds(self) -> float:
        """CPU time of the kernel process and its reaped children (DataLoader workers), seconds."""
        with open(f"/proc/{self.kernel_pid}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
        return sum(int(x) for x in fields[11:15]) / os.sysconf("SC_CLK_TCK")

    def shutdown(self) -> None:
        try:
            if self.kc is not None:
                self.kc.stop_channels()
        finally:
            if self.km is not None and self.km.has_kernel:
                self.km.shutdown_kernel(now=False)
            if self._log:
                self._log.close()

    # -- cells
    def empty_cells(self, n: int, timeout: float = 30.0) -> list[float]:
        """Round-trip times (ms) of `n` empty cells: execute_request sent to execute_reply received."""
        out = []
        for _ in range(n):
            t0 = time.perf_counter()
            msg_id = self.kc.execute("")
            reply = self._reply(msg_id, timeout)
            out.append((time.perf_counter() - t0) * 1e3)
            self._check(reply, "an empty cell")
            self.drain()
        return out

    def call(self, fn, timeout: float, **kwargs) -> dict:
        """Run workload `fn` as a cell; its result dict."""
        msg_id = self.kc.execute(cell_source(fn, **kwargs), user_expressions={"r": "__bench_result"})
        reply = self._reply(msg_id, timeout)
        self.drain()
        self._check(reply, f"the {fn.__name__} cell")
        expr = reply["content"]["user_expressions"]["r"]
        if expr.get("status") != "ok":
            raise KernelError(f"{fn.__name__}: cannot read the result: {expr.get('ename')}: {expr.get('evalue')}")
        return json.loads(ast.literal_eval(expr["data"]["text/plain"]))

    # -- plumbing
    def _reply(self, msg_id: str, timeout: float) -> dict:
        deadline = time.monotonic() + timeout
        chan = self.kc.shell_channel
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise KernelError(f"no execute_reply within {timeout:.0f} s{self._log_tail()}")
            try:
                msg = chan.get_msg(timeout=min(remaining, 1.0))
            except Empty:
                if not self.km.is_alive():
                    raise KernelError(f"the kernel died{self._log_tail()}") from None
                continue
            if msg.get("parent_header", {}).get("msg_id") == msg_id:
                return msg

    def _check(self, reply: dict, what: str) -> None:
        c = reply["content"]
        if c.get("status") != "ok":
            tb = "\n".join(c.get("traceback", []))
            raise KernelError(f"{what} failed: {c.get('ename')}: {c.get('evalue')}\n{_strip_ansi(tb)}"
                              f"{''.join(self.stream_tail[-20:])}")

    def drain(self) -> None:
        chan = self.kc.iopub_channel
        while chan.msg_ready():
            msg = chan.get_msg(timeout=0)
            if msg["msg_type"] == "stream":
                self.stream_tail.append(msg["content"]["text"])
                del self.stream_tail[:-50]

    def _log_tail(self) -> str:
        try:
            text = self.log_path.read_text(errors="replace")[-3000:]
        except OSError:
            return ""
        return f"; kernel log {self.log_path}:\n{text}" if text.strip() else ""


def _strip_ansi(text: str) -> str:
    import re

    return re.sub(r"\x1b\[[0-9;]*[A-Za-z]", "", text)


def system_cpu() -> tuple[float, float]:
    """(busy, steal) CPU seconds of the whole machine since boot, from /proc/stat."""
    with open("/proc/stat") as fh:
        f = [int(x) for x in fh.readline().split()[1:]]
    hz = os.sysconf("SC_CLK_TCK")
    busy = f[0] + f[1] + f[2] + f[5] + f[6]  # user nice system irq softirq (guest is inside user)
    steal = f[7] if len(f) > 7 else 0
    return busy / hz, steal / hz
