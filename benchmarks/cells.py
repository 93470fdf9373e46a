"""The workloads, as the cells sent to the kernels.

Each workload is a self-contained function (its imports inside it). The runner
sends ``inspect.getsource`` of ``_timed`` and of the workload function, followed
by a call whose JSON result is left in ``__bench_result``, which the runner reads
back as a ``user_expression`` of the same execute request (no IOPub parsing, so
the numbers cannot be lost or mixed with output).

Every figure is timed *inside* the cell: ``time.perf_counter`` on the CPU; on CUDA
the work is bracketed by CUDA events and synchronised before the clock is read.
Work is measured in blocks (calibrated to a target duration after a warm-up); the
figure of one repetition is its median block (a stall that hits fewer than half the
blocks does not move it, a cost that slows most blocks does; benchmarks/stats.py
says why not the best block), and every block is kept in results.json.
"""

from __future__ import annotations


def _timed(fn, device, block_time, blocks):
    """Run `fn` in `blocks` timed blocks of about `block_time` s; (iters, [seconds per block])."""
    import time

    if device == "cuda":
        import torch

        def run(iters):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            torch.cuda.synchronize()
            start.record()
            for _ in range(iters):
                fn()
            end.record()
            end.synchronize()
            return start.elapsed_time(end) / 1e3
    else:

        def run(iters):
            t0 = time.perf_counter()
            for _ in range(iters):
                fn()
            return time.perf_counter() - t0

    run(1)  # warm-up: allocations, kernels selected, caches filled
    iters = 1
    while True:  # calibrate on a stretch long enough that one stall cannot skew it
        t = run(iters)
        if t >= block_time / 8 or iters >= 1 << 20:
            break
        iters *= 4
    iters = max(1, round(iters * block_time / max(t, 1e-9)))
    return iters, [run(iters) for _ in range(blocks)]


def import_torch(threads=None):
    """`import torch` in a fresh kernel (the first cell after the start-up cell and the empty cells).

    Then, untimed, torch's intra-op thread count is set when the run asks for one.
    """
    import time

    t0 = time.perf_counter()
    import torch

    seconds = time.perf_counter() - t0
    if threads:
        torch.set_num_threads(threads)
    return {"value": seconds, "torch": torch.__version__, "threads": torch.get_num_threads(),
            "cuda": torch.cuda.is_available()}


def matmul(n, dtype, device, block_time, blocks):
    """Dense n x n matmul, GFLOP/s (2 n^3 flops per product)."""
    import statistics

    import torch

    dt = getattr(torch, dtype)
    torch.manual_seed(0)
    a = torch.randn(n, n, device=device, dtype=dt)
    b = torch.randn(n, n, device=device, dtype=dt)
    c = torch.empty(n, n, device=device, dtype=dt)
    iters, times = _timed(lambda: torch.mm(a, b, out=c), device, block_time, blocks)
    rates = [2 * n ** 3 * iters / t / 1e9 for t in times]
    return {"value": statistics.median(rates), "best": max(rates), "blocks": rates, "iters": iters}


def train_step(device, batch, block_time, blocks):
    """A small CNN's training step (forward, loss, backward, SGD with momentum) per second."""
    import statistics

    import torch
    from torch import nn

    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(64 * 8 * 8, 256), nn.ReLU(), nn.Linear(256, 10),
    ).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    loss_fn = nn.CrossEntropyLoss()
    x = torch.randn(batch, 3, 32, 32, device=device)
    y = torch.randint(0, 10, (batch,), device=device)

    def step():
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(model(x), y)
        loss.backward()
        opt.step()

    iters, times = _timed(step, device, block_time, blocks)
    rates = [iters / t for t in times]
    return {"value": statistics.median(rates), "best": max(rates), "blocks": rates, "iters": iters}


def inference(device, batch, seq, d_model, layers, dtype, block_time, blocks):
    """A small transformer encoder's forward pass under inference_mode, sequences per second."""
    import statistics

    import torch
    from torch import nn

    torch.manual_seed(0)
    dt = getattr(torch, dtype)
    layer = nn.TransformerEncoderLayer(d_model, nhead=max(1, d_model // 64), dim_feedforward=4 * d_model,
                                       batch_first=True)
    model = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False).to(device=device, dtype=dt).eval()
    x = torch.randn(batch, seq, d_model, device=device, dtype=dt)

    def forward():
        with torch.inference_mode():
            model(x)

    iters, times = _timed(forward, device, block_time, blocks)
    rates = [batch * iters / t for t in times]
    return {"value": statistics.median(rates), "best": max(rates), "blocks": rates, "iters": iters}


def dataloader(n, batch, workers, epochs):
    """Samples per second through a DataLoader over an in-memory TensorDataset.

    `workers` forked workers (fork, shared-memory tensors, pipes and a UNIX socket
    for the file descriptors); each epoch starts its workers afresh, so forking is
    part of the figure.
    """
    import statistics
    import time

    import torch
    from torch.utils.data import DataLoader, TensorDataset

    torch.manual_seed(0)
    ds = TensorDataset(torch.randn(n, 3, 32, 32), torch.randint(0, 10, (n,)))
    dl = DataLoader(ds, batch_size=batch, shuffle=True, num_workers=workers, multiprocessing_context="fork")
    rates = []
    for _ in range(epochs):
        t0 = time.perf_counter()
        seen = 0
        for xb, _yb in dl:
            seen += xb.shape[0]
        rates.append(seen / (time.perf_counter() - t0))
    return {"value": statistics.median(rates), "best": max(rates), "blocks": rates}


def syscalls(n_files, n_ops, blocks):
    """The worst case for seccomp and Landlock: small file reads, stat calls, getpid.

    `n_ops` of each, in `blocks` blocks. ``value`` is the time of the whole cell's
    loops at their typical pace (for each part, its median block times the number of
    blocks); ``wall`` is the measured wall time of the loops. The per-part figures are
    microseconds per operation, from the median block (``*_best_us``: the best).
    """
    import os
    import shutil
    import statistics
    import time

    d = os.path.join(os.getcwd(), f"bench-syscalls-{os.getpid()}")
    os.makedirs(d, exist_ok=True)
    paths = []
    for i in range(n_files):
        p = os.path.join(d, f"f{i:04d}.bin")
        with open(p, "wb") as fh:
            fh.write(os.urandom(512))
        paths.append(p)
    per = max(1, n_ops // blocks)
    getpid, stat = os.getpid, os.stat
    parts = {"read": [], "stat": [], "getpid": []}
    t_all = time.perf_counter()
    try:
        for _ in range(blocks):
            t0 = time.perf_counter()
            for i in range(per):
                with open(paths[i % n_files], "rb") as fh:
                    fh.read()
            t1 = time.perf_counter()
            for i in range(per):
                stat(paths[i % n_files])
            t2 = time.perf_counter()
            for _ in range(per):
                getpid()
            t3 = time.perf_counter()
            parts["read"].append(t1 - t0)
            parts["stat"].append(t2 - t1)
            parts["getpid"].append(t3 - t2)
        total = time.perf_counter() - t_all
    finally:
        shutil.rmtree(d, ignore_errors=True)
    out = {"value": sum(statistics.median(v) for v in parts.values()) * blocks, "wall": total,
           "ops_per_part": per * blocks}
    for k, v in parts.items():
        out[k + "_us"] = statistics.median(v) / per * 1e6
        out[k + "_best_us"] = min(v) / per * 1e6
        out[k + "_blocks_us"] = [t / per * 1e6 for t in v]
    return out


def environment():
    """What the kernel runs under (recorded once per variant, not timed)."""
    import os
    import sys

    status = {}
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                k, _, v = line.partition(":")
                if k in ("Seccomp", "Seccomp_filters", "NoNewPrivs", "CapEff", "Speculation_Store_Bypass",
                         "SpeculationIndirectBranch"):
                    status[k] = v.strip()
    except OSError:
        pass
    guard = [type(f).__module__ + "." + type(f).__name__ for f in sys.meta_path
             if type(f).__name__ == "ImportGuard"]
    return {"layers": os.environ.get("SANDBOX_KERNEL_LAYERS"), "proc_status": status, "import_guard": guard,
            "executable": sys.executable, "pid": os.getpid()}


def enforcement(host):
    """What this kernel enforces, read from inside it (``--peers``; not timed). `host`: the
    harness's namespaces, cgroup, a file it left in /tmp and a TCP port it listens on
    (peers.host_identity). Each attempt that would change something happens in a forked
    child or is undone at once (a file created under /usr is removed)."""
    import ctypes
    import errno
    import os
    import resource
    import socket
    import subprocess
    import sys

    out = {}

    def errname(e):
        return errno.errorcode.get(e, str(e))

    status = {}
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                k, _, v = line.partition(":")
                status[k] = v.strip()
    except OSError:
        pass
    p = f"/usr/.sandbox-kernel-bench-probe-{os.getpid()}"
    try:
        fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        os.close(fd)
        os.unlink(p)
        out["host_write"] = "allowed"
    except OSError as e:
        out["host_write"] = f"refused ({errname(e.errno)})"
    out["tmp_private"] = "no" if os.path.exists(host["tmp_marker"]) else "yes"
    p = os.path.join(os.getcwd(), f".bench-probe-{os.getpid()}")
    try:
        with open(p, "w") as fh:
            fh.write("x")
        os.unlink(p)
        out["notebook_write"] = "allowed"
    except OSError as e:
        out["notebook_write"] = f"refused ({errname(e.errno)})"
    for kind in ("pid", "ipc", "uts", "mnt", "net"):
        try:
            mine = os.readlink(f"/proc/self/ns/{kind}")
        except OSError:
            mine = None
        out[f"{kind}_ns"] = "?" if mine is None or host["ns"].get(kind) is None else (
            "yes" if mine != host["ns"][kind] else "no")
    try:
        with open("/proc/self/cgroup") as fh:
            out["cgroup"] = "yes" if fh.read() != host["cgroup"] else "no"
    except OSError:
        out["cgroup"] = "?"
    cap = int(status.get("CapEff", "0"), 16) if status.get("CapEff") else None
    out["caps"] = "?" if cap is None else ("none" if cap == 0 else f"{bin(cap).count('1')} ({status['CapEff']})")
    out["no_new_privs"] = "yes" if status.get("NoNewPrivs") == "1" else "no"
    out["seccomp"] = ("no" if status.get("Seccomp") in (None, "0") else
                      f"yes ({status.get('Seccomp_filters', '?')} filter(s))")

    libc = ctypes.CDLL(None, use_errno=True)

    def in_child(fn):
        """Run fn() in a forked child; its verdict (a short string) through a pipe."""
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            try:
                msg = fn()
            except BaseException as e:  # noqa: BLE001
                msg = f"error ({type(e).__name__})"
            os.write(w, msg.encode()[:200])
            os._exit(0)
        os.close(w)
        data = b""
        while True:
            chunk = os.read(r, 256)
            if not chunk:
                break
            data += chunk
        os.close(r)
        os.waitpid(pid, 0)
        return data.decode() or "?"

    def userns():
        if libc.unshare(0x10000000) == 0:
            return "allowed"
        return f"refused ({errname(ctypes.get_errno())})"

    def mount():
        if libc.unshare(0x00020000) != 0:
            return f"refused (unshare: {errname(ctypes.get_errno())})"
        if libc.mount(b"none", b"/mnt", b"tmpfs", 0, None) != 0:
            return f"refused (mount: {errname(ctypes.get_errno())})"
        return "allowed"

    out["userns"] = in_child(userns)
    out["mount"] = in_child(mount)
    if host.get("port"):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.settimeout(2)
        try:
            s.connect(("127.0.0.1", host["port"]))
            out["connect"] = "allowed"
        except OSError as e:
            out["connect"] = f"refused ({errname(e.errno) if e.errno else type(e).__name__})"
        finally:
            s.close()
    try:
        rc = subprocess.run(["/bin/true"], check=False, timeout=20).returncode
        out["exec"] = "allowed" if rc == 0 else f"exit {rc}"
    except OSError as e:
        out["exec"] = f"refused ({errname(e.errno)})"

    def lim(which):
        soft = resource.getrlimit(which)[0]
        return "unlimited" if soft == resource.RLIM_INFINITY else (
            f"{soft >> 20} MiB" if which == resource.RLIMIT_AS else str(soft))

    out["rlimit_nproc"], out["rlimit_as"] = lim(resource.RLIMIT_NPROC), lim(resource.RLIMIT_AS)
    layers = os.environ.get("SANDBOX_KERNEL_LAYERS")
    if layers:
        import json

        st = json.loads(layers).get("landlock", {}).get("state")
        out["landlock"] = st or "not listed"
    else:
        out["landlock"] = "none"
    out["import_guard"] = "yes" if any(type(f).__name__ == "ImportGuard" for f in sys.meta_path) else "no"
    return out


def peer_syscalls(n_files, n_ops, blocks):
    """``--peers``: small-file open+read+close in /tmp (the syscall cell reads in the notebook
    dir) and a 1-byte send+recv over a socketpair (sendto+recvfrom: the seccomp argument rules
    on sendto), microseconds per operation, median block (every block kept)."""
    import os
    import shutil
    import socket
    import statistics
    import tempfile
    import time

    d = tempfile.mkdtemp(prefix="bench-peer-", dir="/tmp")
    paths = []
    for i in range(n_files):
        p = os.path.join(d, f"f{i:04d}.bin")
        with open(p, "wb") as fh:
            fh.write(os.urandom(512))
        paths.append(p)
    a, b = socket.socketpair()
    per = max(1, n_ops // blocks)
    parts = {"tmp_read": [], "sock": []}
    try:
        for i in range(min(per, 1000)):  # warm-up
            with open(paths[i % n_files], "rb") as fh:
                fh.read()
            a.send(b"x")
            b.recv(1)
        for _ in range(blocks):
            t0 = time.perf_counter()
            for i in range(per):
                with open(paths[i % n_files], "rb") as fh:
                    fh.read()
            t1 = time.perf_counter()
            send, recv = a.send, b.recv
            for _ in range(per):
                send(b"x")
                recv(1)
            t2 = time.perf_counter()
            parts["tmp_read"].append(t1 - t0)
            parts["sock"].append(t2 - t1)
    finally:
        a.close()
        b.close()
        shutil.rmtree(d, ignore_errors=True)
    out = {}
    for k, v in parts.items():
        out[k + "_us"] = statistics.median(v) / per * 1e6
        out[k + "_blocks_us"] = [t / per * 1e6 for t in v]
    return out
