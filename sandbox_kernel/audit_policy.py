"""Per-tenant counters (Prometheus text format) and the violation policy, kept by the supervisor.

Enforcement: counting, stopping and blocking are hard (the supervisor, outside the sandbox,
decides them from the records it writes, and the launcher refuses a blocked tenant before any
layer); the notice in the notebook is soft (the kernel prints what the supervisor sends it).

Every record of the trail with a category (``CATEGORIES``; see ``category_of``) is counted per
tenant, category and source (``supervisor``: verified; ``kernel``: what the in-process hooks
said). The counts live in ``<audit.log>.state.json`` (updated under ``<audit.log>.lock`` by every
supervisor that writes the log), and after each change the Prometheus text file
(``audit.metrics``, default ``<audit.log>.prom``) is rewritten atomically (written beside, then
renamed): point node_exporter's textfile collector, or any scraper that reads files, at it.

The violation policy (``audit.violations``): a refusal in one of its ``categories`` is a
violation. The first in a kernel shows ``notice`` in the notebook; at ``stop_after`` violations of
the tenant within ``window_seconds`` (across its kernels) the supervisor records ``kernel
stopped``, tells the notebook why and kills the kernel, and with ``block_seconds`` the launcher
refuses that tenant's new kernels until then, saying why (and records ``kernel refused``).
"""

from __future__ import annotations

import json
import os
import time

CATEGORIES = ("deepfake", "mining", "torrent", "cracking", "tunnel", "network", "exec", "device", "file", "syscall")
BOOKKEEPING = {"kernel started", "kernel exited", "flood", "violation", "kernel stopped", "kernel refused",
               "malformed event"}
NOTICE_ENV = "SANDBOX_KERNEL_NOTICE_FD"
_shown: set[str] = set()  # notices this process printed itself (the kernel's relay skips them)


def notice_now(policy, category: str | None) -> None:
    """In-process (soft): the platform's notice on this process's first refusal of a banned
    category, printed at once into the running cell; the supervisor's copy of it, which comes
    later over the notice pipe, is then not printed again."""
    if not policy.audit_log or not category:
        return
    v = policy.data["audit"]["violations"]
    text = v.get("notice")
    if not text or category not in v["categories"] or text in _shown:
        return
    _shown.add(text)
    import sys

    try:
        print(text, file=sys.stderr, flush=True)
    except Exception:
        pass


def category_of(rec: dict) -> str | None:
    """The counted category of a record, or None (bookkeeping, or not a refusal)."""
    if rec.get("what") in BOOKKEEPING:
        return None
    c = rec.get("category")
    if c in CATEGORIES:
        return c
    layer = str(rec.get("layer", ""))
    text = f"{rec.get('rule', '')} {rec.get('detail', '')} {rec.get('what', '')}".lower()
    if layer in ("landlock", "seccomp", "accelerators", "mount_namespace"):
        if any(w in text for w in ("network", "connect", "listen", "socket")):
            return "network"
        if "exec" in text:
            return "exec"
        if any(w in text for w in ("device", "/dev/", "gpu", "tpu")):
            return "device"
        if layer == "seccomp":
            return "syscall"
    return None


def paths(log: str, metrics: str | None) -> tuple[str, str, str]:
    """(state file, lock file, Prometheus file) of a log."""
    return log + ".state.json", log + ".lock", metrics or log + ".prom"


def _load(state_path: str) -> dict:
    try:
        with open(state_path) as fh:
            data = json.load(fh)
        return data if isinstance(data, dict) and isinstance(data.get("tenants"), dict) else {"tenants": {}}
    except (OSError, ValueError):
        return {"tenants": {}}


def _replace(path: str, text: str) -> None:
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as fh:
        fh.write(text)
    os.replace(tmp, path)


def _label(v: str) -> str:
    return str(v).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def prometheus(state: dict) -> str:
    out = ["# HELP sandbox_kernel_refusals_total Refusals recorded in the audit trail, by tenant, category and "
           "source (supervisor: seen outside the sandbox; kernel: reported by the in-process hooks, unverified).",
           "# TYPE sandbox_kernel_refusals_total counter"]
    for tenant, t in sorted(state["tenants"].items()):
        for key, n in sorted(t.get("refusals", {}).items()):
            cat, _, source = key.partition("|")
            out.append(f'sandbox_kernel_refusals_total{{tenant="{_label(tenant)}",category="{_label(cat)}",'
                       f'source="{_label(source)}"}} {n}')
    out += ["# HELP sandbox_kernel_violation_stops_total Kernels stopped by the violation policy.",
            "# TYPE sandbox_kernel_violation_stops_total counter"]
    for tenant, t in sorted(state["tenants"].items()):
        out.append(f'sandbox_kernel_violation_stops_total{{tenant="{_label(tenant)}"}} {t.get("stops", 0)}')
    out += ["# HELP sandbox_kernel_tenant_blocked_until_seconds Unix time until which new kernels are refused (0: not).",
            "# TYPE sandbox_kernel_tenant_blocked_until_seconds gauge"]
    for tenant, t in sorted(state["tenants"].items()):
        out.append(f'sandbox_kernel_tenant_blocked_until_seconds{{tenant="{_label(tenant)}"}} '
                   f'{int(t.get("blocked_until", 0))}')
    return "\n".join(out) + "\n"


class Accounting:
    """A listener of trail.Trail: counts, and applies the violation policy."""

    def __init__(self, trail, policy, stop_kernel=None):
        audit = policy.data["audit"]
        self.trail = trail
        self.violations = audit["violations"]
        self.state_path, self.lock_path, self.prom_path = paths(policy.audit_log, audit.get("metrics"))
        self.stop_kernel = stop_kernel  # callable(): kill the kernel (the supervisor's)
        self.notice_fd: int | None = None  # write end of the pipe the kernel prints notices from
        self.noticed = False
        self.stopped = False

    def notify(self, text: str) -> None:
        if self.notice_fd is None:
            return
        data = (json.dumps({"notice": text}) + "\n").encode()[:4000]
        try:
            os.write(self.notice_fd, data)
        except OSError:
            pass

    def __call__(self, rec: dict) -> None:
        cat = category_of(rec)
        if cat is None or self.stopped:
            return
        import fcntl

        tenant = rec.get("tenant", "")
        banned = cat in self.violations["categories"]
        now = time.time()
        lock = os.open(self.lock_path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX)
            state = _load(self.state_path)
            t = state["tenants"].setdefault(tenant, {})
            refusals = t.setdefault("refusals", {})
            key = f"{cat}|{rec.get('source', '')}"
            refusals[key] = refusals.get(key, 0) + 1
            count = 0
            stop = False
            if banned:
                window = self.violations["window_seconds"]
                t["violations"] = [x for x in t.get("violations", []) if now - x < window] + [now]
                count = len(t["violations"])
                stop = bool(self.violations["stop_after"]) and count >= self.violations["stop_after"]
                if stop:
                    t["stops"] = t.get("stops", 0) + 1
                    t["violations"] = []
                    if self.violations["block_seconds"]:
                        t["blocked_until"] = now + self.violations["block_seconds"]
                        t["block_reason"] = (f"{count} violations ({cat}: {rec.get('what', '')}) within "
                                             f"{self.violations['window_seconds']} s")
            _replace(self.state_path, json.dumps(state))
            _replace(self.prom_path, prometheus(state))
        finally:
            os.close(lock)
        if not banned:
            return
        self.trail.write("violation", layer="audit", category=cat, count=count, of=rec.get("what", ""),
                         detail=f"a refusal in the banned category {cat} ({count} within "
                                f"{self.violations['window_seconds']} s)")
        if not self.noticed and self.violations["notice"]:
            self.noticed = True
            self.notify(self.violations["notice"])
        if stop:
            self.stopped = True
            block = self.violations["block_seconds"]
            reason = (f"stopped by the platform's violation policy: {count} refusals in banned categories within "
                      f"{self.violations['window_seconds']} s (last: {cat}, {rec.get('what', '')})"
                      + (f"; new kernels are refused for {block} s" if block else ""))
            self.trail.write("kernel stopped", layer="audit", category=cat, detail=reason, block_seconds=block)
            self.notify("sandbox: this kernel was " + reason)
            if self.stop_kernel is not None:
                self.stop_kernel()


def blocked(policy, tenant: str) -> str | None:
    """Why `tenant` may not start a kernel now (the violation policy's block), or None."""
    if not policy.audit_log or not policy.data["audit"]["violations"]["block_seconds"]:
        return None
    state_path, _lock, _prom = paths(policy.audit_log, policy.data["audit"].get("metrics"))
    t = _load(state_path)["tenants"].get(tenant) or {}
    until = t.get("blocked_until", 0)
    if until > time.time():
        return (f"tenant {tenant!r} may not start kernels until "
                f"{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime(until))}: {t.get('block_reason', 'violations')}")
    return None


def kernel_audit_facts() -> dict:
    """What this host's kernel audit subsystem gives (Landlock ABI 7 logs its refusals there,
    AUDIT_LANDLOCK_ACCESS): whether audit is enabled, whether this process may read its records
    (CAP_AUDIT_READ, the multicast group), the Landlock ABI, and whether the kernel command line
    sets audit=. The supervisor reads them (sandbox_kernel/kaudit.py) where it can, see docs/audit.md."""
    import socket
    import struct

    from .layers import landlock

    out = {"enabled": None, "readable": False, "why": "", "landlock_abi": landlock.abi_version(), "cmdline": None}
    try:
        with open("/proc/cmdline") as fh:
            out["cmdline"] = next((w for w in fh.read().split() if w.startswith("audit=")), None)
    except OSError:
        pass
    try:
        s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 9)  # NETLINK_AUDIT
    except OSError as e:
        out["why"] = f"no audit netlink socket ({e.strerror}: a container, or a kernel without CONFIG_AUDIT)"
        return out
    try:
        s.settimeout(1)
        s.send(struct.pack("=IHHII", 16, 1000, 1 | 4, 1, 0))  # AUDIT_GET, NLM_F_REQUEST | NLM_F_ACK
        for _ in range(3):
            data = s.recv(8192)
            typ = struct.unpack_from("=H", data, 4)[0]
            if typ == 1000 and len(data) >= 24:
                out["enabled"] = bool(struct.unpack_from("=I", data, 20)[0])
                break
            if typ == 2 and struct.unpack_from("=i", data, 16)[0] != 0:
                out["why"] = "AUDIT_GET refused (no CAP_AUDIT_CONTROL here)"
                break
    except OSError as e:
        out["why"] = f"AUDIT_GET failed ({e.strerror})"
    finally:
        s.close()
    try:
        m = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 9)
        try:
            m.bind((0, 1))  # AUDIT_NLGRP_READLOG: needs CAP_AUDIT_READ
            out["readable"] = True
        finally:
            m.close()
    except OSError as e:
        out["why"] = "; ".join(w for w in (f"cannot join the audit log group ({e.strerror}: no CAP_AUDIT_READ)",
                                           out["why"]) if w)
    return out


def kernel_audit_line() -> str:
    f = kernel_audit_facts()
    always = ("recorded by the supervisor: refused system calls and listen(), TCP connect and exec refused by "
              "Landlock (from the call's arguments)")
    where = (f"the platform sets it host-wide (kernel command line {f['cmdline']}; `auditctl -e 1` or auditd's "
             f"configuration; sandbox-kernel never turns it on)" if f["cmdline"] else
             "the platform sets it host-wide (`auditctl -e 1`, auditd's configuration, or `audit=1` on the kernel "
             "command line; sandbox-kernel never turns it on)")
    unseen = ("device opens and file access refused by Landlock reach the trail only as the in-process hooks "
              "report them (unverified)")
    if f["landlock_abi"] < 7:
        state = f"Landlock ABI {f['landlock_abi']} logs no refusals to kernel audit (ABI 7, Linux 6.15+); {unseen}"
    elif f["enabled"] is None or not f["readable"]:
        state = (f"kernel audit records unavailable to this user ({f['why'] or 'unknown'}); a root launcher's "
                 f"supervisor reads them where audit is on; here {unseen}")
    elif not f["enabled"]:
        state = f"kernel audit is OFF on this host (audit_enabled=0): {where}; until then {unseen}"
    else:
        state = ("kernel audit is on and readable: the supervisor also records device opens and file access "
                 "refused by Landlock (AUDIT_LANDLOCK_ACCESS, attributed by the kernel's Landlock domain)")
    return f"audit trail: {always}; {state}"
