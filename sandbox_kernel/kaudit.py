"""What Landlock refused, read by the supervisor from the kernel audit subsystem.

Enforcement of the refusal: hard (Landlock). The record of it: hard where this host gives it,
absent where it does not (never a guess). Linux 6.15+ (Landlock ABI 7) logs each access a
Landlock domain denies as an ``AUDIT_LANDLOCK_ACCESS`` record (``domain=<id> blockers=fs.read_file
path="..." ...``) and, with the first denial of a domain, an ``AUDIT_LANDLOCK_DOMAIN`` record
``status=allocated`` naming the pid that created it (global pid namespace). The supervisor
(host side, ``supervisor.py``) joins the audit netlink multicast group
(``AUDIT_NLGRP_READLOG``: needs ``CAP_AUDIT_READ`` in the host's user namespace, works without
auditd, so the socket is bound before the launcher enters the kernel's user namespace) and:

- learns which domain is its kernel's: the one whose ``allocated`` record names the kernel's
  process (pid 2 of the kernel's PID namespace, or the supervisor's child where there is no PID
  namespace). Landlock reports a refusal under the youngest domain that refuses it, so a domain a
  cell stacks on top (its own ``landlock_restrict_self``) would take the kernel's refusals with
  it: a domain made by another process of the kernel's PID namespace is recorded too, marked
  ``stacked`` (while its maker, or the parent of a maker gone already, lives when the record is read); and seccomp refuses
  ``landlock_restrict_self`` with the flags that turn logging off (``layers/seccomp.py``);
- writes one record per denial of that domain (``device open refused``, layer ``accelerators``,
  for device nodes; ``file access refused``, layer ``landlock``, for other files; ``connect``
  and ``execve`` refusals are recorded from the call's arguments already, see listen_broker).

What it needs from the host, which ``sandbox-kernel doctor`` reports: audit enabled
(``audit_enabled``, host-wide: ``auditctl -e 1``, ``audit=1`` on the kernel command line, or
auditd's configuration; sandbox-kernel never turns it on), and a root launcher (an ordinary
user has no ``CAP_AUDIT_READ``). The Landlock layer asks for the records of the kernel's
processes after ``execve`` too (``LANDLOCK_RESTRICT_SELF_LOG_NEW_EXEC_ON``) when the profile
keeps an audit trail. Nothing is added on the kernel's hot path: no system call is routed.
"""

from __future__ import annotations

import os
import re
import socket
import stat
import struct

NETLINK_AUDIT = 9
AUDIT_GET = 1000
AUDIT_NLGRP_READLOG = 1
AUDIT_SYSCALL = 1300
AUDIT_EOE = 1320
AUDIT_LANDLOCK_ACCESS = 1423
AUDIT_LANDLOCK_DOMAIN = 1424
_HEAD = re.compile(r"audit\((\d+)\.(\d+):(\d+)\):\s?")
_FIELD = re.compile(r'(\w+)=("[^"]*"|\S*)')


def audit_enabled() -> bool | None:
    """audit_enabled of this host (AUDIT_GET), or None where it cannot be asked."""
    try:
        s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_AUDIT)
    except OSError:
        return None
    try:
        s.settimeout(1)
        s.send(struct.pack("=IHHII", 16, AUDIT_GET, 1, 1, 0))
        for _ in range(3):
            data = s.recv(8192)
            typ = struct.unpack_from("=H", data, 4)[0]
            if typ == AUDIT_GET and len(data) >= 24:
                return bool(struct.unpack_from("=I", data, 20)[0])
            if typ == 2 and struct.unpack_from("=i", data, 16)[0] != 0:
                return None
    except OSError:
        return None
    finally:
        s.close()
    return None


def open_reader() -> tuple[socket.socket | None, str]:
    """A socket in the audit log's multicast group, or (None, why not). Call it while this
    process still holds CAP_AUDIT_READ in the host's user namespace (before unshare)."""
    from .layers import landlock

    abi = landlock.abi_version()
    if abi < 7:
        return None, f"Landlock ABI {abi} logs no refusals to audit (needs ABI 7, Linux 6.15+)"
    try:
        s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC | socket.SOCK_NONBLOCK,
                          NETLINK_AUDIT)
    except OSError as e:
        return None, f"no audit netlink socket ({e.strerror}: a container, or a kernel without CONFIG_AUDIT)"
    try:
        s.bind((0, AUDIT_NLGRP_READLOG))
    except OSError as e:
        s.close()
        return None, f"cannot join the kernel audit log group ({e.strerror}: no CAP_AUDIT_READ; a root launcher has it)"
    try:  # room for a burst of denials between two polls
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    except OSError:
        pass
    if audit_enabled() is False:
        return s, "joined, but kernel audit is off on this host (audit_enabled=0): Landlock logs nothing until it is on"
    return s, ""


def parse(text: str) -> tuple[str | None, dict]:
    """(the event's serial, its fields) of one audit record's text; quoted values unquoted, a
    path in hex (audit writes untrusted strings so when they hold spaces or quotes) decoded."""
    m = _HEAD.match(text)
    if not m:
        return None, {}
    fields = {}
    for k, v in _FIELD.findall(text[m.end():]):
        if v.startswith('"') and v.endswith('"') and len(v) >= 2:
            v = v[1:-1]
        elif k in ("path", "exe", "comm", "ocomm", "name") and v and len(v) % 2 == 0 \
                and re.fullmatch(r"[0-9A-F]+", v):
            try:
                v = bytes.fromhex(v).decode("utf-8", "replace")
            except ValueError:
                pass
        fields[k] = v
    return f"{m.group(1)}.{m.group(2)}:{m.group(3)}", fields


class LandlockAudit:
    """The supervisor's reader: Landlock denials of its kernel's domain into its trail."""

    def __init__(self, sock: socket.socket, trail, child: int, pid_namespace: bool, recorded=None):
        self.sock = sock
        self.trail = trail
        self.child = child
        self.pid_namespace = pid_namespace
        # whether the supervisor's broker has a record that stands for a refused connect or exec
        # (listen_broker.Broker.recorded: it records them from the call's arguments, before
        # Landlock decides; a thread that changes those arguments meanwhile can make it miss one,
        # and then this reader records Landlock's own log of it)
        self.recorded = recorded
        self.ours: dict[str, str] = {}  # domain id -> "kernel" or "stacked"
        self.foreign: set[str] = set()
        self.pending: dict[str, list] = {}
        self.old: set[str] = set()
        self.lost_said = False
        self._ns = None

    def fileno(self) -> int:
        return self.sock.fileno()

    def _kernel_ns(self):
        if self._ns is None:
            try:
                self._ns = os.stat(f"/proc/{self.child}/ns/pid_for_children").st_ino
            except OSError:
                pass
        return self._ns

    def owns(self, pid: int) -> str | None:
        """Whose domain a process made: "kernel" for the kernel's process (its Landlock layer made
        the kernel's domain), "stacked" for another process of the kernel (a cell stacked a domain
        of its own on top), None for a process that is not the kernel's (or is gone already)."""
        if not self.pid_namespace:
            return "kernel" if pid == self.child else None
        try:
            if os.stat(f"/proc/{pid}/ns/pid").st_ino != self._kernel_ns():
                return None
            with open(f"/proc/{pid}/status") as fh:
                for line in fh:
                    if line.startswith("NSpid:"):
                        return "kernel" if line.split()[-1] == "2" else "stacked"
        except OSError:
            return None
        return None

    def drain(self) -> None:
        before = set(self.pending)
        while True:
            try:
                data = self.sock.recv(65536)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as e:  # ENOBUFS: the socket overflowed, records were lost
                if not self.lost_said:
                    self.lost_said = True
                    self.trail.write("kernel audit records lost", layer="audit",
                                     detail=f"the supervisor missed kernel audit records ({e.strerror}): "
                                            f"some Landlock refusals of this kernel may not be in the trail")
                continue
            off = 0
            while off + 16 <= len(data):
                ln, typ = struct.unpack_from("=IH", data, off)
                if ln < 16:
                    break
                text = data[off + 16:off + ln].rstrip(b"\0").decode("utf-8", "replace")
                off += (ln + 3) & ~3
                if typ not in (AUDIT_LANDLOCK_ACCESS, AUDIT_LANDLOCK_DOMAIN, AUDIT_SYSCALL, AUDIT_EOE):
                    continue
                serial, fields = parse(text)
                if serial is None:
                    continue
                if typ == AUDIT_EOE:
                    self._event(self.pending.pop(serial, []))
                    continue
                if typ == AUDIT_SYSCALL and serial not in self.pending:
                    continue  # not a Landlock event
                self.pending.setdefault(serial, []).append((typ, fields))
        for serial in list(self.pending):  # events seen in an earlier drain: complete by now
            if serial in before or serial in self.old:
                self._event(self.pending.pop(serial))
        self.old = set(self.pending)

    def close(self) -> None:
        self.drain()
        for serial in list(self.pending):
            self._event(self.pending.pop(serial))
        try:
            self.sock.close()
        except OSError:
            pass

    def _event(self, records: list) -> None:
        pid = ppid = None
        for typ, f in records:
            if typ == AUDIT_SYSCALL and f.get("pid", "").isdigit():
                pid = int(f["pid"])
                ppid = int(f["ppid"]) if f.get("ppid", "").isdigit() else None
        for typ, f in records:
            if typ == AUDIT_LANDLOCK_DOMAIN and f.get("status") == "allocated" and f.get("domain"):
                d = f["domain"]
                if d not in self.ours and d not in self.foreign:
                    maker = int(f["pid"]) if f.get("pid", "").isdigit() else None
                    whose = self.owns(maker) if maker is not None else None
                    if whose is None and maker is not None and maker == pid and ppid \
                            and not os.path.exists(f"/proc/{maker}"):
                        # its maker (the process refused) is gone already: its parent says whose it was
                        whose = "stacked" if self.owns(ppid) else None
                    if whose:
                        self.ours[d] = whose
                    else:
                        self.foreign.add(d)
        for typ, f in records:
            if typ == AUDIT_LANDLOCK_ACCESS and f.get("domain") in self.ours:
                self._record(f, pid, self.ours[f["domain"]])

    def _record(self, f: dict, pid: int | None, whose: str = "kernel") -> None:
        blockers = [b for b in f.get("blockers", "").split(",") if b]
        if not blockers:
            return
        key = None
        if blockers == ["net.connect_tcp"] and (f.get("dest") or "").isdigit():
            key = ("connect", int(f["dest"]))
        elif blockers == ["fs.execute"] and f.get("path"):
            key = ("exec", f["path"])
        if key and whose == "kernel" and self.recorded is not None and self.recorded(key):
            return  # the broker's record of it is in the trail already
        rule = "landlock " + ",".join(blockers)
        extra = {"blockers": blockers, "seen": "kernel audit", "domain": f.get("domain")}
        if whose == "stacked":  # the kernel's rules may or may not have allowed it: the cell's own domain decided
            rule = "a Landlock domain a process of the kernel stacked itself: " + rule
            extra["stacked"] = True
        if pid is not None:
            extra["pid"] = pid
        path = f.get("path")
        if path is not None:
            extra["path"] = path
            if f.get("ioctlcmd"):
                extra["ioctlcmd"] = f["ioctlcmd"]
            if key is not None:  # exec of a program outside exec.allow
                self.trail.write("exec refused", layer="landlock", category="exec",
                                 rule=rule + ": outside the profile's exec.allow",
                                 detail=f"{path}: fs.execute refused by Landlock (kernel audit)", **extra)
            elif self._is_device(path, pid) or "fs.ioctl_dev" in blockers:
                what = "device ioctl refused" if blockers == ["fs.ioctl_dev"] else "device open refused"
                self.trail.write(what, layer="accelerators", category="device",
                                 rule=rule + ": a device node the profile does not grant (accelerators, filesystem)",
                                 detail=f"{path}: {', '.join(blockers)} refused by Landlock (kernel audit)", **extra)
            else:
                self.trail.write("file access refused", layer="landlock", category="file",
                                 rule=rule + ": outside the profile's filesystem grants",
                                 detail=f"{path}: {', '.join(blockers)} refused by Landlock (kernel audit)", **extra)
            return
        if any(b.startswith("net.") for b in blockers):
            port = f.get("dest") or f.get("src")
            if port and port.isdigit():
                extra["port"] = int(port)
            if f.get("daddr"):
                extra["address"] = f["daddr"]
            self.trail.write("connect refused" if key else "network refused", layer="landlock", category="network",
                             rule=rule,
                             detail=f"{', '.join(blockers)} refused by Landlock (kernel audit)", **extra)
            return
        for k in ("opid", "ocomm"):
            if f.get(k):
                extra[k] = f[k]
        self.trail.write("refused by landlock", layer="landlock",
                         category="network" if "scope.abstract_unix_socket" in blockers else "syscall", rule=rule,
                         detail=f"{', '.join(blockers)} refused by Landlock (kernel audit)", **extra)

    def _is_device(self, path: str, pid: int | None) -> bool:
        if path.startswith("/dev/"):
            return True
        for p in ([f"/proc/{pid}/root{path}"] if pid else []) + [path]:
            try:
                return stat.S_ISCHR(os.stat(p).st_mode) or stat.S_ISBLK(os.stat(p).st_mode)
            except OSError:
                continue
        return False
