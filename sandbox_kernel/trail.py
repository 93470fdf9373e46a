"""The audit trail, written by the supervisor (outside the sandbox).

Enforcement: hard for the file, soft for what the kernel says. The supervisor is the
launcher process that stays outside the kernel's PID namespace, mount namespace and
Landlock domain (``supervisor.py``); it is the only writer of ``audit.log``. The kernel
cannot open the log at all: it is not in the kernel's Landlock grants and, inside a
writable directory, it is a read-only bind mount in the kernel's view. So a record, once
written, is never rewritten or truncated from a cell.

What reaches the trail:

- **the supervisor's own records** (``source: supervisor``): the kernel's start and end
  (with its exit status or signal), ``listen()`` calls it refused, system calls the seccomp
  filter refused and sent to it (``layers/seccomp.py``, ``NOTIFIED``), device opens and file
  access Landlock refused (read from kernel audit where the host gives it, ``kaudit.py``),
  flood summaries, and violation-policy actions. These are facts the tenant cannot forge or suppress.
- **the kernel's events** (``source: kernel``, ``verified: false``): what the in-process
  hooks saw (a refused import, a pre-execution finding, an explained PermissionError). They
  arrive over a FIFO whose path is in ``SANDBOX_KERNEL_AUDIT_FIFO`` (Landlock grants the
  kernel ``write_file`` on it, nothing else). The supervisor overwrites the identifying
  fields (time, tenant, kernel id, profile) with its own, and keeps what the kernel claimed
  for them under ``claimed``: a forged event is one extra, marked line, never a rewrite.

Bounded: each kernel may write ``FLOOD_BURST`` of its events at once, then
``FLOOD_RATE`` per second; the rest are counted and summarized in one ``flood`` record per
``FLOOD_WINDOW`` second in which some were suppressed (and at the kernel's end). Lines longer
than ``MAX_LINE`` are cut. The kernel's writes on the FIFO block while it is full (back
pressure: nothing is dropped on the kernel's side while the supervisor lives).
The file is rotated at ``audit.max_bytes`` (``log`` -> ``log.1`` -> ... ``log.<keep>``),
under an advisory lock shared by every supervisor writing the same file.

Crash-safe: every record is one ``write(2)`` of one whole line on an ``O_APPEND``
descriptor; rotation is a rename. A ``kill -9`` of the kernel loses nothing the supervisor
has read; a ``kill -9`` of the supervisor loses what was still in the FIFO (``CHANNEL_BYTES``,
one page: a dozen events at most, the kernel waits while it is full) and, during a flood, the
count of the events suppressed in the last second; the file stays valid JSON lines.
"""

from __future__ import annotations

import json
import os
import time

FIFO_ENV = "SANDBOX_KERNEL_AUDIT_FIFO"
MAX_LINE = 4000          # below PIPE_BUF (4096): one write to the FIFO is never interleaved
CHANNEL_BYTES = 4096    # the FIFO's capacity (F_SETPIPE_SZ, one page): what a kill -9 of the supervisor can lose
FLOOD_BURST = 200
FLOOD_RATE = 20.0
FLOOD_WINDOW = 1.0      # a flood summary at most once a second: what a kill -9 of the supervisor loses
DEFAULT_MAX_BYTES = 64 * 1024 * 1024
DEFAULT_KEEP = 5
IDENTITY = ("time", "tenant", "kernel_id", "profile", "source", "verified", "supervisor_pid")


def utc_now() -> str:
    t = time.time()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int(t % 1 * 1000):03d}+00:00"


def fifo_path(log: str, kernel_id: str) -> str:
    """Where the kernel's channel is made: beside the log, named by kernel and launcher pid."""
    d, name = os.path.split(os.path.abspath(log))
    return os.path.join(d, f".{name}.{kernel_id}.{os.getpid()}.fifo")


def sweep_fifos(log: str) -> None:
    """Remove the FIFOs beside `log` whose supervisor is gone (it was killed: it removes its own
    at the kernel's end). The name holds the supervisor's pid (the launcher's)."""
    d, name = os.path.split(os.path.abspath(log))
    prefix = f".{name}."
    try:
        entries = os.listdir(d)
    except OSError:
        return
    for e in entries:
        if not (e.startswith(prefix) and e.endswith(".fifo")):
            continue
        pid = e[:-len(".fifo")].rsplit(".", 1)[-1]
        if pid.isdigit() and not os.path.exists(f"/proc/{pid}"):
            try:
                os.unlink(os.path.join(d, e))
            except OSError:
                pass


def make_fifo(log: str, kernel_id: str) -> str:
    sweep_fifos(log)
    path = fifo_path(log, kernel_id)
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    os.mkfifo(path, 0o600)
    return path


def tenant_of(env: dict) -> str:
    """The tenant a record names: SANDBOX_KERNEL_TENANT (set by the platform in the Jupyter
    server's environment), else the launching user's name, else its uid."""
    t = env.get("SANDBOX_KERNEL_TENANT", "").strip()
    if t:
        return t
    try:
        import pwd

        return pwd.getpwuid(os.getuid()).pw_name
    except (KeyError, ImportError):
        return str(os.getuid())


def for_launch(policy, ctx) -> Trail | None:
    """The supervisor's trail for this launch (with the kernel's FIFO open), or None."""
    if not policy.audit_log or not ctx.audit_fifo:
        return None
    audit = policy.data["audit"]
    t = Trail(policy.audit_log, tenant=tenant_of(ctx.env), profile=policy.label, kernel_id=ctx.kernel_id,
              max_bytes=audit.get("max_bytes") or DEFAULT_MAX_BYTES, keep=audit.get("keep") or DEFAULT_KEEP,
              policy=policy)
    t.open_fifo(ctx.audit_fifo)
    # write-only for its owner once the supervisor holds it open: the kernel (the same uid, no
    # CAP_DAC_OVERRIDE) writes events to it but cannot read them off it (Landlock grants it write-only
    # too, where Landlock handles the read rights; the read view mounts it read-only, so no chmod)
    os.chmod(ctx.audit_fifo, 0o200)
    from .audit_policy import Accounting

    t.accounting = Accounting(t, policy)
    t.listeners.append(t.accounting)
    return t


def kernel_side(ctx, trail_: Trail) -> None:
    """In the process that becomes the kernel, after the supervisor's fork: no trail
    descriptor stays open here; the kernel writes to the FIFO only."""
    for fd in (trail_.fd, trail_.fifo_fd, getattr(trail_, "notice_w", None)):
        try:
            os.close(fd)
        except (OSError, TypeError):
            pass
    sock = getattr(trail_, "kaudit", (None, ""))[0]
    if sock is not None:  # the kernel audit reader is the supervisor's alone
        sock.close()
    r = getattr(trail_, "notice_r", None)
    if r is not None:  # the kernel prints the supervisor's notices from this pipe (soft)
        os.set_inheritable(r, True)
        from .audit_policy import NOTICE_ENV

        ctx.env[NOTICE_ENV] = str(r)
    ctx.env[FIFO_ENV] = ctx.audit_fifo
    ctx.audit_target = ctx.audit_fifo


def no_supervisor(ctx) -> None:
    """No supervisor will run: the kernel writes audit.log itself (soft), no FIFO."""
    sock = (getattr(ctx, "kaudit", None) or (None, ""))[0]
    if sock is not None:
        sock.close()
        ctx.kaudit = None
    if ctx.audit_fifo:
        try:
            os.unlink(ctx.audit_fifo)
        except OSError:
            pass
        ctx.audit_fifo = None


class Trail:
    """The supervisor's writer for one kernel."""

    def __init__(self, path: str, *, tenant: str, profile: str, kernel_id: str,
                 max_bytes: int = DEFAULT_MAX_BYTES, keep: int = DEFAULT_KEEP, policy=None):
        self.path = path
        self.ident = {"tenant": tenant, "kernel_id": kernel_id, "profile": profile}
        self.max_bytes = max(int(max_bytes), 4096)
        self.keep = max(int(keep), 1)
        self.fd = self._open()
        self.tokens = float(FLOOD_BURST)
        self.last = time.monotonic()
        self.suppressed = 0
        self.suppressed_bytes = 0
        self.suppressed_sample = ""
        self.sup_tokens = float(FLOOD_BURST)
        self.sup_last = self.last
        self.sup_suppressed: dict[str, int] = {}  # the supervisor's own refusal records not written, by kind
        self.window_start = self.last
        self.pending = b""
        self.fifo_fd: int | None = None
        self.fifo_path: str | None = None
        self.listeners = []  # callables(record) run after each write (counters, violation policy)
        self.broken = False

    # -- the file
    def _open(self) -> int:
        return os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)

    def _rotate_if_needed(self, size: int) -> None:
        try:
            st = os.fstat(self.fd)
        except OSError:
            return
        if st.st_size + size <= self.max_bytes:
            return
        import fcntl

        lock = os.open(self.path + ".lock", os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                cur = os.stat(self.path)
            except FileNotFoundError:
                cur = None
            if cur is not None and (cur.st_ino, cur.st_dev) == (st.st_ino, st.st_dev) \
                    and cur.st_size + size > self.max_bytes:
                for i in range(self.keep - 1, 0, -1):
                    try:
                        os.rename(f"{self.path}.{i}", f"{self.path}.{i + 1}")
                    except FileNotFoundError:
                        pass
                os.rename(self.path, f"{self.path}.1")
            # another supervisor rotated it (or we did): write to the new file
            new = self._open()
            os.close(self.fd)
            self.fd = new
        finally:
            os.close(lock)

    def _write_line(self, record: dict) -> None:
        line = (json.dumps(record, ensure_ascii=False, default=str) + "\n").encode("utf-8", "replace")
        try:
            self._rotate_if_needed(len(line))
            os.write(self.fd, line)
        except OSError as e:
            if not self.broken:
                self.broken = True
                try:
                    os.write(2, f"sandbox-kernel supervisor: cannot write audit log {self.path}: {e}\n".encode())
                except OSError:
                    pass
            return
        for fn in self.listeners:
            try:
                fn(record)
            except Exception:
                pass

    def write(self, what: str, *, layer: str, detail: str = "", **extra) -> dict:
        """A record of the supervisor's own (hard: the tenant cannot forge or suppress it).
        Refusals (records with a category) share the flood limit of their own: a cell that
        repeats a refused call a million times gets its first FLOOD_BURST recorded, then
        FLOOD_RATE a second, and the rest counted by category in the flood records, so it cannot
        rotate older records out of the trail."""
        rec = {"time": utc_now(), **self.ident, "source": "supervisor", "verified": True,
               "layer": layer, "what": what, "detail": detail, **extra}
        if "category" in extra and what not in ("violation", "kernel stopped"):
            now = time.monotonic()
            self.sup_tokens = min(float(FLOOD_BURST), self.sup_tokens + (now - self.sup_last) * FLOOD_RATE)
            self.sup_last = now
            if self.sup_tokens < 1:
                key = f"{extra['category']}: {what}"
                self.sup_suppressed[key] = self.sup_suppressed.get(key, 0) + 1
                self.maybe_summarize()
                return rec
            self.sup_tokens -= 1
        self._write_line(rec)
        return rec

    # -- the kernel's channel
    def open_fifo(self, path: str) -> int:
        """Open the kernel's FIFO for reading (O_RDWR: it never reports end of file)."""
        import fcntl

        self.fifo_path = path
        self.fifo_fd = os.open(path, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
        try:  # a small channel: the kernel waits rather than queueing events a crash would lose
            fcntl.fcntl(self.fifo_fd, getattr(fcntl, "F_SETPIPE_SZ", 1031), CHANNEL_BYTES)
        except OSError:
            pass
        return self.fifo_fd

    def drain(self, limit: int = 1 << 20) -> None:
        """Read what the FIFO holds now (up to `limit` bytes) and record it."""
        if self.fifo_fd is None:
            return
        got = 0
        while got < limit:
            try:
                data = os.read(self.fifo_fd, 65536)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                break
            if not data:
                break
            got += len(data)
            self.feed(data)

    def feed(self, data: bytes) -> None:
        buf = self.pending + data
        *lines, rest = buf.split(b"\n")
        if len(rest) > MAX_LINE:  # a line without end: cut it here
            lines.append(rest[:MAX_LINE])
            rest = b""
        self.pending = rest
        if not lines:
            return
        self._refill()
        take = min(len(lines), int(self.tokens))
        self.tokens -= take
        for line in lines[:take]:
            self.from_kernel(line)
        over = len(lines) - take
        if over > 0:
            self.suppressed += over
            self.suppressed_bytes += sum(len(x) + 1 for x in lines[take:])
            if not self.suppressed_sample:
                self.suppressed_sample = lines[take][:200].decode("utf-8", "replace")
        self.maybe_summarize()

    def _refill(self) -> None:
        now = time.monotonic()
        self.tokens = min(float(FLOOD_BURST), self.tokens + (now - self.last) * FLOOD_RATE)
        self.last = now

    def maybe_summarize(self, final: bool = False) -> None:
        now = time.monotonic()
        if (self.suppressed or self.sup_suppressed) and (final or now - self.window_start >= FLOOD_WINDOW):
            sup, self.sup_suppressed = self.sup_suppressed, {}
            n_sup = sum(sup.values())
            self.write("flood", layer="audit", suppressed=self.suppressed, suppressed_bytes=self.suppressed_bytes,
                       sample=self.suppressed_sample, suppressed_refusals=sup,
                       detail=f"{self.suppressed} events from the kernel and {n_sup} refusals seen by the supervisor "
                              f"were counted but not written (more than {FLOOD_BURST} at once or {FLOOD_RATE:g} "
                              f"per second)")
            self.suppressed = self.suppressed_bytes = 0
            self.suppressed_sample = ""
        if now - self.window_start >= FLOOD_WINDOW:
            self.window_start = now

    def from_kernel(self, line: bytes) -> None:
        """One event the kernel sent: marked, with the supervisor's identity fields."""
        line = line[:MAX_LINE]
        try:
            ev = json.loads(line)
            if not isinstance(ev, dict):
                raise ValueError
        except ValueError:
            ev = {"what": "malformed event", "raw": line[:500].decode("utf-8", "replace")}
        claimed = {k: ev.pop(k) for k in IDENTITY if k in ev}
        rec = {"time": utc_now(), **self.ident, "source": "kernel", "verified": False}
        claimed = {k: v for k, v in claimed.items() if k != "time" and rec.get(k) != v}
        for k, v in ev.items():
            if k not in rec:
                rec[k] = v
        rec.setdefault("layer", "")
        rec.setdefault("what", "")
        if claimed:
            rec["claimed"] = claimed
        self._write_line(rec)

    def close(self) -> None:
        self.drain(limit=1 << 24)
        if self.pending:
            self.from_kernel(self.pending)
            self.pending = b""
        self.maybe_summarize(final=True)
        if self.fifo_fd is not None:
            os.close(self.fifo_fd)
            self.fifo_fd = None
        if self.fifo_path:
            try:
                os.unlink(self.fifo_path)
            except OSError:
                pass


def send(event: dict) -> bool:
    """The kernel's side: one event, one write on the FIFO named in the environment (it waits
    while the FIFO is full; with no reader, the open fails and the event is lost). False when
    there is no channel."""
    path = os.environ.get(FIFO_ENV)
    if not path:
        return False
    line = (json.dumps(event, ensure_ascii=False, default=str)).encode("utf-8", "replace")
    if len(line) > MAX_LINE - 1:
        event = dict(event, detail=str(event.get("detail", ""))[:1000] + " [cut]")
        line = json.dumps(event, ensure_ascii=False, default=str).encode("utf-8", "replace")[:MAX_LINE - 1]
    try:
        fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)  # ENXIO where no supervisor reads
    except OSError:
        return True  # the supervisor is gone or the channel is closed: nothing else may be written
    try:
        os.set_blocking(fd, True)
        os.write(fd, line + b"\n")
    except OSError:
        pass
    finally:
        os.close(fd)
    return True
