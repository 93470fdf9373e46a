"""Kernels from the warm pool (sandbox_kernel/pool.py) through jupyter_client, as a server has them.

`pooled_spec` writes a kernelspec whose metadata names the `sandbox-pool` provisioner (what
`sandbox-kernel install --pool N` writes), with the same argv as kernelutil's; `PooledKernels`
starts kernels from it in one working directory and environment (the pool's key), the first
one cold (it arms the pool), and says which were handed out of the pool.
"""

from __future__ import annotations

import json
import os
import pwd
import re
import tempfile
import time

import kernelutil

from sandbox_kernel import policy_cache
from sandbox_kernel import pool as pool_mod
from sandbox_kernel.errors import ProfileError
from sandbox_kernel.install import kernel_argv

UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def pooled_spec(profile: str, user=None, size: int = 1, suffix: str = "", **config) -> str:
    name = kernelutil.spec_name(profile, user.pw_name if user else None) + "-pool" + suffix
    d = kernelutil.SPECS / name
    d.mkdir(parents=True, exist_ok=True)
    argv = kernel_argv(profile)
    if user:
        argv = kernelutil.setpriv(user.pw_name) + argv
    cfg = {"pool_size": size, "refill_delay": 0.2, "check_interval": 0.5, **config}
    (d / "kernel.json").write_text(json.dumps({
        "argv": argv, "display_name": name, "language": "python", "interrupt_mode": "signal",
        "metadata": {"sandbox_kernel": {"profile": profile},
                     "kernel_provisioner": {"provisioner_name": "sandbox-pool", "config": cfg}}}))
    try:
        policy_cache.write(str(d / policy_cache.FILE_NAME), [profile])
        os.chmod(d / policy_cache.FILE_NAME, 0o644)
    except ProfileError:
        pass
    return name


def reset_pool() -> None:
    """Kill every pooled kernel of this process and start from an empty pool."""
    if pool_mod._POOL is not None:
        pool_mod._POOL.shutdown()
    pool_mod._POOL = None


def wait_ready(n: int = 1, timeout: float = 120, keys: int = 1) -> bool:
    """Until `keys` keys of the pool (some key, by default) have `n` kernels ready each."""
    return kernelutil.wait_for(lambda: sum(c["ready"] >= n for c in pool_mod.get_pool().counts().values()) >= keys,
                               timeout=timeout, interval=0.1)


def manager_class(user):
    if user is None:
        return kernelutil._UserKernelManager
    name = kernelutil.user_kernel_manager_class(user).rsplit(".", 1)[1]
    return getattr(kernelutil, name)


class PooledKernels:
    """Kernels of one pooled kernelspec, all in `cwd` with `env` (one pool key)."""

    def __init__(self, spec: str, user=None, cwd: str | None = None, env: dict | None = None,
                 conn_dir: str | None = None):
        # connection files as Jupyter's runtime directory holds them: never in the working directory
        # (the launcher refuses a connection file in a directory the tenant writes)
        self.spec, self.user = spec, user
        self.conn_dir = conn_dir or (kernelutil.connection_dir(user) if user else None)
        self.cwd = cwd or (kernelutil.user_workdir(user) if user else tempfile.mkdtemp(prefix="sbx-pool-"))
        env_ = dict(os.environ)
        if user:
            env_.update(HOME=user.pw_dir, USER=user.pw_name, LOGNAME=user.pw_name)
            env_.pop("TMPDIR", None)
        env_.update(env or {})
        self.env = env_
        self.started: list[kernelutil.Kernel] = []

    def start(self, *, env: dict | None = None, cwd: str | None = None, wait: bool = True) -> kernelutil.Kernel:
        km = manager_class(self.user)(kernel_name=self.spec)
        if self.conn_dir or self.user:
            km.connection_file = os.path.join(self.conn_dir or cwd or self.cwd, f"kernel-{os.urandom(6).hex()}.json")
        k = kernelutil.Kernel.__new__(kernelutil.Kernel)
        k.profile, k.user, k.km = self.spec, self.user.pw_name if self.user else None, km
        km.start_kernel(cwd=cwd or self.cwd, env={**self.env, **(env or {})})
        k.kc = km.client()
        k.kc.start_channels()
        self.started.append(k)
        if wait:
            k.kc.wait_for_ready(timeout=120)
        return k

    def close(self) -> None:
        for k in self.started:
            try:
                k.shutdown()
            except Exception:
                pass


def pooled_from(k) -> str:
    return getattr(k.km.provisioner, "pooled_from", "")


def reconnect(k) -> None:
    """A new client after a restart (a fresh pooled kernel has its own ports and key)."""
    k.kc.stop_channels()
    k.kc = k.km.client()
    k.kc.start_channels()
    k.kc.wait_for_ready(timeout=120)


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def processes_with_env(marker: str) -> list[int]:
    """Host processes whose start environment holds `marker` (e.g. a pool id)."""
    out = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/environ", "rb") as fh:
                if marker.encode() in fh.read():
                    out.append(int(pid))
        except OSError:
            continue
    return [p for p in out if p != os.getpid() and alive(p)]


def home_of(user) -> str:
    return user.pw_dir if user else pwd.getpwuid(os.getuid()).pw_dir


def wait_gone(pids, timeout: float = 30) -> bool:
    return kernelutil.wait_for(lambda: not any(alive(p) for p in pids), timeout=timeout, interval=0.1)


def now() -> float:
    return time.monotonic()


def remove(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def connection_dir(user) -> str:
    """A directory for connection files outside every writable one (as Jupyter's runtime
    directory is), readable by the kernel's user: the mount namespace hides it but for each
    kernel's own file."""
    return kernelutil.connection_dir(user)
