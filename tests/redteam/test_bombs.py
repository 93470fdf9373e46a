"""Resource bombs: processes, threads, memory, file descriptors, and disk in /tmp and
/dev/shm. The effect: how much the cell obtained, which must stay within the profile's
limit (the count is compared, not a time). Each bomb cleans up after itself; they run in
kernels of their own (a bomb profile), /tmp and /dev/shm in the shipped `free` profile,
whose sizes are the documented defaults."""

from __future__ import annotations

import re

import kernelutil
import pytest
from rtutil import attempt, probe, start, stop

from sandbox_kernel.policy import resolve

pytestmark = pytest.mark.redteam

LIMITS = {"processes": 64, "memory": 1024**3, "open_files": 256}


@pytest.fixture(scope="module")
def bomb_kernel(mwho):
    kernelutil.write_profile("rt-bomb", """
        extends: free
        limits:
          processes: 64
          memory: 1GiB
          open_files: 256
        """)
    k = start("rt-bomb", mwho)
    yield k
    stop(k)


@attempt("cgroup+rlimits")
@pytest.mark.covers("limits.processes")
def test_fork_bomb(bomb_kernel):
    kernelutil.fork_bomb(bomb_kernel, LIMITS["processes"])


@attempt("cgroup+rlimits")
@pytest.mark.covers("limits.processes")
def test_thread_bomb(bomb_kernel):
    res = probe(bomb_kernel, """
import threading
stop, threads, error = threading.Event(), [], None
try:
    for _ in range(1000):
        t = threading.Thread(target=stop.wait, daemon=True)
        t.start()
        threads.append(t)
except RuntimeError as e:
    error = str(e)
stop.set()
for t in threads:
    t.join()
rt_out({"threads": len(threads), "error": error})
""")
    assert res["threads"] < LIMITS["processes"], res


@attempt("rlimits+cgroup")
@pytest.mark.covers("limits.memory")
def test_memory_bomb(bomb_kernel):
    res = probe(bomb_kernel, """
chunks = []
try:
    while len(chunks) < 64:  # 4 GiB at most
        chunks.append(bytearray(64 * 1024**2))
except MemoryError:
    pass
got = len(chunks) * 64 * 1024**2
del chunks
rt_out({"bytes": got})
""")
    assert res["bytes"] <= LIMITS["memory"], res


@attempt("rlimits")
@pytest.mark.covers("limits.open_files")
def test_fd_bomb(bomb_kernel):
    res = probe(bomb_kernel, """
fds, error = [], None
try:
    for _ in range(100000):
        fds.append(_rt_os.open("/dev/null", _rt_os.O_RDONLY))
except OSError as e:
    error = e.errno
for fd in fds:
    _rt_os.close(fd)
rt_out({"opened": len(fds), "error": error})
""")
    assert res["opened"] < LIMITS["open_files"], res


def _size(text) -> int:
    if isinstance(text, int):
        return text
    m = re.fullmatch(r"\s*(\d+)\s*([KMGT]i?B?)?\s*", str(text))
    n, unit = int(m.group(1)), (m.group(2) or "").upper()
    return n * {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}[unit[:1]]


def _limit(key: str, default: str) -> int:
    """The profile's size for /tmp or /dev/shm (issue 9's keys), else the documented default."""
    return _size(resolve("free").data.get("filesystem", {}).get(key) or default)


@pytest.mark.parametrize("place,key,default", [
    pytest.param("/tmp", "tmp_size", "2GiB", marks=attempt("mount_namespace"), id="tmp"),
    pytest.param("/dev/shm", "shm_size", "1GiB", marks=attempt("mount_namespace+cgroup"), id="dev_shm"),
])
@pytest.mark.covers("limits.file_size")
def test_disk_bomb(pool, who, place, key, default):
    """Fill /tmp or /dev/shm (fallocate: the space is really taken, without writing data)."""
    limit = _limit(key, default)
    k = pool.get("free", who)
    res = probe(k, f"""
path = _rt_os.path.join({place!r}, "rt-fill-" + _rt_os.urandom(4).hex())
fd = _rt_os.open(path, _rt_os.O_CREAT | _rt_os.O_WRONLY, 0o600)
step, got, error = 64 * 1024**2, 0, None
try:
    while got < {limit} + 4 * step:
        _rt_os.posix_fallocate(fd, got, step)
        got += step
except OSError as e:
    error = e.errno
taken = _rt_os.fstat(fd).st_blocks * 512
_rt_os.close(fd)
_rt_os.unlink(path)
rt_out({{"taken": taken, "error": error}})
""", timeout=300)
    assert res["taken"] <= limit, f"{place} took {res['taken'] / 1024**3:.2f} GiB, over the {limit / 1024**3:.2f} GiB limit"
