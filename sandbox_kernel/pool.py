"""A warm pool of sandboxed kernels: a jupyter_client kernel provisioner (issue 18).

Kernelspecs written by ``sandbox-kernel install --pool N`` name this provisioner in their
metadata (``kernel_provisioner.provisioner_name: sandbox-pool``), so jupyter_server,
JupyterLab, nbclient, papermill and any ``KernelManager`` use it unchanged.

The design (docs/pool.md says it for operators):

- **A pooled kernel is a cold start done early.** It is started by the kernelspec's own
  argv (the launcher, every layer, the kernel) in the working directory and with the
  environment the request will have, through a plain ``KernelManager`` of the same kind
  that would start it cold. Landlock and seccomp only ever narrow a live process, and the
  mount namespace, the cgroup and the rlimits are fixed at the start too, so nothing that
  a rule depends on is left to the hand-off: the pool is **keyed** by all of it — the
  kernelspec (name, directory, argv), the server's uid, the working directory, the whole
  environment but the few hand-off variables (HOME, the ceiling, the tenant, the profile
  path, ... are all in it), the transport and address — and a request whose key has no
  kernel ready is started cold, as without the pool. The first start of a key is always
  cold; it arms the pool for that key.
- **What is only known at the hand-off** is applied then, by a signed control message the
  kernel accepts once (sandbox_kernel/pool_handoff.py): the Jupyter kernel id and the
  hand-off variables (``handoff_env``, by default ``JPY_SESSION_NAME``: the notebook's path,
  ``__session__``). The connection (ports, key) is the pooled kernel's own, given to the
  ``KernelManager`` as any provisioner does, and so is its connection file: the manager
  takes over the file the kernel was started with (``kernel-<pool id>.json``, in the
  directory the manager's own would be in), because the kernel's view holds that very file
  read-only where the directory is one the tenant writes (layers/mount_namespace.py): a file
  written at the hand-off would not be, and removing the file would take the mount away.
- **Never an older policy.** Each pooled kernel carries the fingerprint of everything its
  start read: the kernelspec directory (kernel.json, the validated-policy cache), every
  profile file on the search path, this package's files and the guard hook. It is
  compared again at the hand-off (and every ``check_interval`` seconds): a kernel whose
  fingerprint is not the current one is shut down, never handed out.
- **Handed out once, never returned**; a restart takes a fresh kernel (so new ports and
  key: clients reconnect as after ``restart_kernel(newports=True)``; JupyterLab does).
- **A pool that behaves**: ``pool_size`` (or ``pool_sizes`` per profile) kernels per key,
  refilled one at a time by a background thread, and only once no start has been asked
  for during ``refill_delay`` seconds and no cold start is still coming up (a refill already
  running is not stopped); ready kernels idle for ``cull_idle_after`` seconds are shut down
  and the key is not refilled until it is asked for again; when the server process exits
  every pooled kernel is killed (atexit), and a server killed outright takes them along
  (the supervisor of each watches the Jupyter process, supervisor.py).

Enforcement: the pool adds no rule and removes none. The kernels' rules are the layers'
(hard/soft as for a cold start); keying and the fingerprint are what keep a pooled kernel's
rules equal to a cold start's for the same request.
"""

from __future__ import annotations

import asyncio
import atexit
import hashlib
import os
import signal
import threading
import time
import uuid
from typing import Any

from jupyter_client.connect import LocalPortCache
from jupyter_client.provisioning.local_provisioner import LocalProvisioner
from jupyter_client.provisioning.provisioner_base import KernelProvisionerBase
from traitlets import Dict, Float, Integer, List, Unicode

from . import pool_handoff, resources
from .pool_handoff import POOL_ENV

PROVISIONER_NAME = "sandbox-pool"
PORT_NAMES = ("shell_port", "iopub_port", "stdin_port", "hb_port", "control_port")


class PoolMiss(Exception):
    """The claimed kernel cannot be handed out (it failed, died or is stale): start cold."""


# --------------------------------------------------------------------------- fingerprint


def _hash_file(h, path: str, content: bool) -> None:
    try:
        st = os.stat(path)
    except OSError:
        h.update(f"{path}:missing\n".encode())
        return
    h.update(f"{path}:{st.st_size}:{st.st_mtime_ns}:{st.st_ino}\n".encode())
    if content:
        try:
            with open(path, "rb") as fh:
                h.update(hashlib.sha256(fh.read()).digest())
        except OSError:
            h.update(b"unreadable")


def _files(d: str, suffixes: tuple[str, ...] | None = None) -> list[str]:
    try:
        names = sorted(os.listdir(d))
    except OSError:
        return [d]  # missing: its absence is part of the fingerprint
    return [os.path.join(d, n) for n in names if suffixes is None or n.endswith(suffixes)]


def fingerprint(resource_dir: str | None, env: dict[str, str]) -> str:
    """What a start of this kernelspec reads that a pool must not outlive: the kernelspec's
    directory (kernel.json, the validated-policy cache), every profile file on the search
    path the kernel gets (a ceiling or a parent may be any of them), this package's files
    (their size and time: an upgrade) and the guard hook."""
    from .profile_files import search_path

    h = hashlib.sha256()
    if resource_dir:
        for f in _files(resource_dir):
            if os.path.isfile(f):
                _hash_file(h, f, content=not f.endswith((".png", ".svg")))
    for d in search_path(env):
        for f in _files(d, (".yaml", ".yml", ".json")):
            _hash_file(h, f, content=True)
    for sub in ("", "layers"):
        for f in _files(os.path.join(resources.PACKAGE_DIR, sub), (".py",)):
            _hash_file(h, f, content=False)
    _hash_file(h, resources.guard_hook_path(), content=True)
    return h.hexdigest()[:32]


# --------------------------------------------------------------------------- the pool


class _Entry:
    """One pooled kernel: started (or starting) ahead of need for one key."""

    def __init__(self, key: str, fp: str):
        self.pool_id = str(uuid.uuid4())
        self.key = key
        self.fingerprint = fp
        self.km = None  # the KernelManager that started it (LocalProvisioner)
        self.state = "starting"  # starting -> ready | failed; claimed; discarded
        self.error = ""
        self.ready = threading.Event()
        self.created = time.monotonic()
        self.ready_at: float | None = None
        self.claimed = False

    @property
    def process(self):
        prov = getattr(self.km, "provisioner", None)
        return getattr(prov, "process", None)


class _Demand:
    """What the pool knows about one key: how to start a kernel for it, how many to keep."""

    def __init__(self, key: str, template: dict):
        self.key = key
        self.template = template
        self.size = 1
        self.dormant = False
        self.last_asked = time.monotonic()
        self.fp = ""
        self.fp_checked = 0.0


class Pool:
    """The process-wide pool (one per Jupyter server process), served by one thread."""

    def __init__(self):
        self.lock = threading.RLock()
        self.entries: dict[str, list[_Entry]] = {}
        self.demand: dict[str, _Demand] = {}
        self.cold_starts = 0  # cold starts not yet answering kernel_info
        self.last_request = 0.0
        self.refill_delay = 1.0
        self.cull_idle_after = 600.0
        self.check_interval = 2.0
        self.ready_timeout = 60.0
        self.log = None
        self.stats = {"handed_out": 0, "cold": 0, "started": 0, "failed": 0, "culled": 0, "stale": 0}
        self._wake = threading.Event()
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._prestarting: _Entry | None = None

    # -- the server's side
    def configure(self, prov: SandboxPoolProvisioner) -> None:
        with self.lock:
            self.refill_delay = prov.refill_delay
            self.cull_idle_after = prov.cull_idle_after
            self.check_interval = prov.check_interval
            self.ready_timeout = prov.ready_timeout
            self.log = prov.log
            if self._thread is None:
                self._thread = threading.Thread(target=self._serve, name="sandbox-kernel-pool", daemon=True)
                self._thread.start()
                atexit.register(self.shutdown)

    def ask(self, key: str, template: dict, size: int) -> _Entry | None:
        """A request for `key`: arms the pool for it; returns a kernel (ready or still
        starting) to hand out, taken out of the pool, or None (start cold)."""
        with self.lock:
            self.last_request = time.monotonic()
            d = self.demand.get(key)
            if d is None:
                d = self.demand[key] = _Demand(key, template)
            d.template, d.size, d.dormant, d.last_asked = template, max(0, size), False, time.monotonic()
            live = [e for e in self.entries.get(key, []) if e.state in ("starting", "ready")]
            # ready ones first, oldest first; then the one coming up furthest along
            live.sort(key=lambda e: (e.state != "ready", e.created))
            for e in live:
                e.claimed = True
                self.entries[key].remove(e)
                self._wake.set()
                return e
            self._wake.set()
            return None

    def cold_start_began(self) -> None:
        with self.lock:
            self.cold_starts += 1
            self.stats["cold"] += 1

    def cold_start_ended(self) -> None:
        with self.lock:
            self.cold_starts -= 1
            self.last_request = max(self.last_request, time.monotonic())
            self._wake.set()

    def hand_off(self, entry: _Entry, kernel_id: str, env: dict[str, str], current_fp: str) -> dict:
        """Wait for `entry`, check it is still current, send the hand-off; its connection info."""
        if not entry.ready.wait(self.ready_timeout):
            self.discard(entry, "not ready in time")
            raise PoolMiss(f"pooled kernel {entry.pool_id} did not become ready in {self.ready_timeout:.0f} s")
        if entry.state != "ready":
            self.discard(entry, entry.error)
            raise PoolMiss(f"pooled kernel {entry.pool_id} failed to start: {entry.error}")
        if entry.fingerprint != current_fp:
            self.stats["stale"] += 1
            self.discard(entry, "started under an older policy")
            raise PoolMiss(f"pooled kernel {entry.pool_id} was started under an older policy, kernelspec or "
                           f"package; it was shut down")
        proc = entry.process
        if proc is None or proc.poll() is not None:
            self.discard(entry, "died while pooled")
            raise PoolMiss(f"pooled kernel {entry.pool_id} died while pooled")
        km = entry.km
        sock = km.connect_control()
        try:
            km.session.send(sock, pool_handoff.REQUEST, {"kernel_id": kernel_id, "env": env})
            if not sock.poll(int(self.ready_timeout * 1000)):
                self.discard(entry, "no hand-off reply")
                raise PoolMiss(f"pooled kernel {entry.pool_id} did not answer the hand-off")
            _, reply = km.session.recv(sock, mode=0)
        finally:
            sock.close(linger=0)
        content = (reply or {}).get("content", {})
        if content.get("status") != "ok":
            self.discard(entry, "hand-off refused")
            raise PoolMiss(f"pooled kernel {entry.pool_id} refused the hand-off: {content.get('evalue')}")
        with self.lock:
            self.stats["handed_out"] += 1
        info = km.get_connection_info()
        km._close_control_socket()
        return info

    def discard(self, entry: _Entry, why: str) -> None:
        """Shut `entry` down (killed with its process group, files removed); never handed out."""
        with self.lock:
            entry.state = "discarded"
            lst = self.entries.get(entry.key, [])
            if entry in lst:
                lst.remove(entry)
        if self.log:
            self.log.info("sandbox-kernel pool: shutting down pooled kernel %s (%s)", entry.pool_id, why)
        _kill(entry)

    # -- the pool's thread
    def _serve(self) -> None:
        while not self._stopping:
            self._wake.wait(0.25)
            self._wake.clear()
            if self._stopping:
                break
            try:
                self._tend()
            except Exception as e:  # the pool must never take the server down
                if self.log:
                    self.log.error("sandbox-kernel pool: %s", e, exc_info=True)
                time.sleep(1)

    def _tend(self) -> None:
        now = time.monotonic()
        to_discard: list[tuple[_Entry, str]] = []
        with self.lock:
            demands = list(self.demand.values())
        for d in demands:
            if now - d.fp_checked >= self.check_interval:
                d.fp = fingerprint(d.template["resource_dir"], d.template["env"])
                d.fp_checked = now
            with self.lock:
                for e in list(self.entries.get(d.key, [])):
                    if e.state == "ready" and e.fingerprint != d.fp:
                        to_discard.append((e, "the policy, kernelspec or package changed"))
                        self.stats["stale"] += 1
                    elif e.state == "ready" and now - (e.ready_at or now) >= self.cull_idle_after:
                        to_discard.append((e, f"idle for {self.cull_idle_after:g} s"))
                        self.stats["culled"] += 1
                        d.dormant = True
                    elif e.state in ("failed",):
                        to_discard.append((e, "failed"))
                    elif e.state == "ready" and e.process is not None and e.process.poll() is not None:
                        to_discard.append((e, "died while pooled"))
        for e, why in to_discard:
            self.discard(e, why)
        # refill: one kernel at a time, never while a start is coming up
        with self.lock:
            if self._stopping or self.cold_starts > 0 or now - self.last_request < self.refill_delay:
                return
            todo = None
            for d in demands:
                have = [e for e in self.entries.get(d.key, []) if e.state in ("starting", "ready")]
                if not d.dormant and len(have) < d.size:
                    todo = d
                    break
            if todo is None:
                return
            fp = todo.fp or fingerprint(todo.template["resource_dir"], todo.template["env"])
            entry = _Entry(todo.key, fp)
            self.entries.setdefault(todo.key, []).append(entry)
            self._prestarting = entry
        try:
            self._prestart(entry, todo.template)
        finally:
            with self.lock:
                self._prestarting = None
            self._wake.set()

    def _prestart(self, entry: _Entry, t: dict) -> None:
        """Start one kernel as a cold start of the same request would be started."""
        fp = fingerprint(t["resource_dir"], t["env"])  # before the start reads anything
        entry.fingerprint = fp
        km = t["factory"](entry.pool_id)
        entry.km = km
        env = dict(t["raw_env"])
        for name in t["handoff"]:
            env.pop(name, None)
        env[POOL_ENV] = entry.pool_id
        try:
            km.start_kernel(env=env, cwd=t["cwd"])
            with self.lock:
                self.stats["started"] += 1
            kc = km.client()
            kc.start_channels()
            try:
                kc.wait_for_ready(timeout=self.ready_timeout)
            finally:
                kc.stop_channels()
        except Exception as e:
            entry.error = str(e) or type(e).__name__
            entry.state = "failed"
            with self.lock:
                self.stats["failed"] += 1
            if self.log:
                self.log.warning("sandbox-kernel pool: a pooled kernel failed to start: %s", entry.error)
            _kill(entry)
            entry.ready.set()
            return
        with self.lock:
            if entry.state == "starting":
                entry.state = "ready"
                entry.ready_at = time.monotonic()
            discard = entry.state == "discarded"
        entry.ready.set()
        if discard:
            _kill(entry)

    def shutdown(self) -> None:
        """The server is stopping: every pooled kernel is killed, every file removed."""
        with self.lock:
            self._stopping = True
            entries = [e for lst in self.entries.values() for e in lst]
            if self._prestarting is not None and self._prestarting not in entries:
                entries.append(self._prestarting)
            self.entries.clear()
            self.demand.clear()
        self._wake.set()
        for e in entries:
            e.state = "discarded"
            _kill(e)
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)
        for e in entries:  # one that was coming up when the thread stopped
            _kill(e)

    def counts(self) -> dict[str, dict[str, int]]:
        with self.lock:
            return {k: {"ready": sum(e.state == "ready" for e in v), "starting": sum(e.state == "starting" for e in v)}
                    for k, v in self.entries.items() if v}


def _remove(path: str | None) -> None:
    if path:
        try:
            os.unlink(path)
        except OSError:
            pass


def _kill(entry: _Entry) -> None:
    """Kill the kernel's process group (what LocalProvisioner.kill does) and reap it; remove its
    connection file; return its ports to jupyter_client's cache."""
    km = entry.km
    if km is None:
        return
    prov = getattr(km, "provisioner", None)
    proc = getattr(prov, "process", None)
    if proc is not None:
        try:
            os.killpg(prov.pgid or proc.pid, signal.SIGKILL)
        except OSError:
            try:
                proc.kill()
            except OSError:
                pass
        try:
            proc.wait(timeout=10)
        except Exception:
            pass
    _remove(getattr(km, "connection_file", None))
    if getattr(prov, "ports_cached", False):
        prov.ports_cached = False
        cache = LocalPortCache.instance()
        for name in PORT_NAMES:
            port = getattr(km, name, 0)
            if port:
                cache.return_port(port)
    try:
        km._close_control_socket()
    except Exception:
        pass


_POOL: Pool | None = None
_POOL_LOCK = threading.Lock()


def get_pool() -> Pool:
    global _POOL
    with _POOL_LOCK:
        if _POOL is None:
            _POOL = Pool()
        return _POOL


# --------------------------------------------------------------------------- the provisioner


def _pool_manager_factory(parent, kernel_spec, connection_dir: str | None):
    """How the pool starts kernels for requests of `parent`: a synchronous KernelManager of the
    requesting manager's class where that is one (a subclass may decide how connection files
    are written: owner, place), else jupyter_client's own; with the plain LocalProvisioner
    (not this one), the same kernelspec, transport and address, and a connection file named as
    the requesting manager's would be (kernel-<id>.json in the same directory), or where an
    unnamed one goes (a temporary file)."""
    from jupyter_client.manager import AsyncKernelManager, KernelManager

    cls = type(parent) if isinstance(parent, KernelManager) and not isinstance(parent, AsyncKernelManager) \
        else KernelManager
    ksm = getattr(parent, "kernel_spec_manager", None)

    def make(pool_id: str):
        kw: dict[str, Any] = {"kernel_name": parent.kernel_name, "transport": parent.transport, "ip": parent.ip}
        if ksm is not None:
            kw["kernel_spec_manager"] = ksm
        if connection_dir:
            kw["connection_file"] = os.path.join(connection_dir, f"kernel-{pool_id}.json")
        km = cls(**kw)
        km.kernel_id = pool_id
        km._kernel_spec = kernel_spec
        km.provisioner = LocalProvisioner(kernel_id=pool_id, kernel_spec=kernel_spec, parent=km)
        return km

    return make


class SandboxPoolProvisioner(LocalProvisioner):
    """LocalProvisioner that hands out a kernel pre-started for the same request when the pool
    has one, and otherwise starts one cold (and arms the pool for such requests)."""

    pool_size = Integer(1, config=True, help="kernels kept ready per key (kernelspec, working directory, "
                                             "environment); 0 turns pooling off")
    pool_sizes = Dict(value_trait=Integer(), config=True,
                      help="per profile (the kernelspec's metadata.sandbox_kernel.profile): its pool_size")
    refill_delay = Float(1.0, config=True, help="seconds without any start request before the pool refills")
    cull_idle_after = Float(600.0, config=True, help="seconds a ready pooled kernel may wait before it is shut "
                                                     "down (its key then waits for a new request to refill)")
    check_interval = Float(2.0, config=True, help="seconds between checks of the policy fingerprint")
    ready_timeout = Float(60.0, config=True, help="seconds a pooled kernel may take to start, or to answer")
    handoff_env = List(Unicode(), default_value=list(pool_handoff.DEFAULT_HANDOFF_ENV), config=True,
                       help="variables applied at the hand-off rather than keyed (never one read at a start)")

    _entry: _Entry | None = None
    _raw_kwargs: dict | None = None
    pooled_from: str = ""  # the pool id of the kernel handed out, "" for a cold start

    def _size(self) -> int:
        profile = ((self.kernel_spec.metadata or {}).get("sandbox_kernel") or {}).get("profile", "")
        return int(self.pool_sizes.get(profile, self.pool_size))

    def _poolable(self, km, kwargs: dict) -> str:
        """Why this request cannot use the pool ('' when it can)."""
        if km is None:
            return "no kernel manager"
        if getattr(km, "transport", "tcp") != "tcp":
            return "the ipc transport"
        policy = getattr(km, "_transport_encryption_policy", None)
        if policy is not None:  # CurveZMQ keys are the manager's: only where LocalProvisioner would use them
            level = policy(kwargs.get("transport_encryption", getattr(km, "transport_encryption", "disabled")))
            curve = getattr(km, "_kernel_supports_curve_encryption", lambda: False)
            if level == "required" or (level == "auto" and curve()):
                return "CurveZMQ transport encryption"
        if kwargs.get("extra_arguments"):
            return "extra kernel arguments"
        extra = set(kwargs) - {"env", "cwd", "kernel_id", "transport_encryption", "extra_arguments"}
        if extra:
            return f"launch arguments a pooled kernel cannot honour ({', '.join(sorted(extra))})"
        return ""

    def _handoff_names(self) -> list[str]:
        names = []
        for n in self.handoff_env:
            why = pool_handoff.handoff_refusal(n)
            if why:
                self.log.warning("sandbox-kernel pool: handoff_env %s ignored: %s (it is keyed instead)", n, why)
            else:
                names.append(n)
        return names

    async def pre_launch(self, **kwargs: Any) -> dict[str, Any]:
        self._entry = None
        self.pooled_from = ""
        self._raw_kwargs = dict(kwargs)
        km = self.parent
        size = self._size()
        why = self._poolable(km, kwargs) if size > 0 else "pool_size is 0"
        if not why:
            final = await KernelProvisionerBase.pre_launch(self, cmd=list(self.kernel_spec.argv), **dict(kwargs))
            handoff = self._handoff_names()
            env = final["env"]
            cwd = os.path.realpath(final.get("cwd") or os.getcwd())
            key = self._key(km, cwd, {k: v for k, v in env.items() if k not in handoff and k != POOL_ENV})
            conn = km.connection_file
            template = {
                "resource_dir": self.kernel_spec.resource_dir, "env": env, "cwd": cwd, "handoff": handoff,
                "raw_env": dict(kwargs.get("env") if kwargs.get("env") is not None else os.environ),
                "factory": _pool_manager_factory(km, self.kernel_spec, os.path.dirname(conn) if conn else None),
            }
            pool = get_pool()
            pool.configure(self)
            entry = pool.ask(key, template, size)
            if entry is not None:
                self._entry = entry
                self._handoff = {n: env[n] for n in handoff if n in env}
                self._fp_env = env
                return final
        else:
            self.log.debug("sandbox-kernel pool: starting cold (%s)", why)
        return await self._cold_pre_launch()

    async def _cold_pre_launch(self) -> dict[str, Any]:
        self._entry = None
        if self._size() > 0:
            get_pool().cold_start_began()
            self._cold_counted = True
        return await super().pre_launch(**dict(self._raw_kwargs or {}))

    @staticmethod
    def _key(km, cwd: str, env: dict[str, str]) -> str:
        spec = km.kernel_spec
        h = hashlib.sha256()
        for part in (km.kernel_name, spec.resource_dir, repr(list(spec.argv)), str(os.getuid()), str(os.geteuid()),
                     cwd, km.transport, km.ip, repr(sorted(env.items()))):
            h.update(part.encode("utf-8", "surrogateescape") + b"\0")
        return h.hexdigest()[:24]

    async def launch_kernel(self, cmd: list[str], **kwargs: Any):
        entry = self._entry
        if entry is not None:
            self._entry = None
            pool = get_pool()
            loop = asyncio.get_running_loop()
            try:
                current = await loop.run_in_executor(None, fingerprint, self.kernel_spec.resource_dir, self._fp_env)
                info = await loop.run_in_executor(None, pool.hand_off, entry, self.kernel_id, self._handoff, current)
            except PoolMiss as e:
                self.log.warning("sandbox-kernel pool: %s; starting cold", e)
            else:
                return self._adopt(entry, info, kwargs)
            kw = await self._cold_pre_launch()
            cmd = kw.pop("cmd")
            kwargs = kw
        try:
            info = await super().launch_kernel(cmd, **kwargs)
        except BaseException:
            if getattr(self, "_cold_counted", False):
                self._cold_counted = False
                get_pool().cold_start_ended()
            raise
        if getattr(self, "_cold_counted", False):
            self._cold_counted = False
            self._watch_cold_start(info)
        return info

    def _adopt(self, entry: _Entry, info: dict, kwargs: dict):
        km, pkm = self.parent, entry.km
        prov = pkm.provisioner
        # the manager's connection file is the one the kernel started with (see the module's docstring)
        old = km.connection_file
        if old and old != pkm.connection_file and getattr(km, "_connection_file_written", False):
            _remove(old)  # a restart: the previous kernel's file
        km.connection_file = pkm.connection_file
        for name in PORT_NAMES:  # what _reconcile_connection_info does before loading another kernel's
            setattr(km, name, 0)
        km.load_connection_info(info)
        km._connection_file_written = True  # removed by the manager's cleanup, as its own
        pkm._connection_file_written = False  # ... and never by the pool's manager (its __del__ would)
        pkm.connection_file = ""
        self.process, self.pid, self.pgid = prov.process, prov.pid, prov.pgid
        self.cwd = kwargs.get("cwd") or prov.cwd
        self.connection_info = info
        # returned to jupyter_client's port cache at the final cleanup; a cold restart reuses them
        # (they are the manager's ports now, and its connection file's), as LocalProvisioner does
        self.ports_cached = True
        prov.process = None  # the pool's manager lets go of it
        prov.ports_cached = False
        self.pooled_from = entry.pool_id
        self.log.info("sandbox-kernel pool: kernel %s is pooled kernel %s (pid %s)", self.kernel_id, entry.pool_id,
                      self.pid)
        return info

    def _watch_cold_start(self, info: dict) -> None:
        """Count this cold start as in progress until it answers kernel_info (or 2 minutes),
        so that no refill competes with it for the CPU."""
        from jupyter_client.blocking.client import BlockingKernelClient

        def watch():
            kc = BlockingKernelClient()
            try:
                kc.load_connection_info(info)
                kc.start_channels()
                kc.wait_for_ready(timeout=120)
            except Exception:
                pass
            finally:
                try:
                    kc.stop_channels()
                except Exception:
                    pass
                get_pool().cold_start_ended()

        threading.Thread(target=watch, name="sandbox-kernel-pool-cold", daemon=True).start()


__all__ = ["PROVISIONER_NAME", "Pool", "PoolMiss", "SandboxPoolProvisioner", "fingerprint", "get_pool"]
