"""What is measured, how big and how often: per mode (full, quick, tiny) and device."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field


@dataclass
class Plan:
    mode: str
    device: str
    reps: int
    rtt_cells: int
    matmul: list[tuple[str, int]]  # (dtype, n)
    matmul_block: float
    train_batch: int
    inference: dict
    dataloader: dict
    syscalls: dict
    block_time: float
    blocks: int
    threads: int | None = None  # torch intra-op threads; None: torch's default (one per CPU)
    startup_only: bool = False  # only start-up, empty cells, import torch (more repetitions for the same time)
    peers: bool = False  # --peers: bubblewrap and firejail variants, /tmp reads, socketpair sends, PSS, probes
    burst: int = 0  # --peers: simultaneous starts per variant and round (benchmarks/burst.py); 0: none
    burst_rounds: int = 6  # rounds of those bursts (6: the fewest with a 95% interval of the median)
    max_minutes: float | None = None  # stop starting repetitions that would end after this (None: no limit)
    startup_timeout: float = 120.0
    cell_timeout: float = 600.0
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


# On CUDA the full run must fit one 10-minute command on a 16-core GPU host (set-up included):
# it runs up to CUDA_REPS repetitions and stops starting new ones after CUDA_MAX_MINUTES.
# On an H100 host a session took 16-18 s with six matmul sizes (a repetition of five sessions
# 72 s: 5 repetitions in 7.2 min); with the 2048 sizes left out, about a minute.
CUDA_REPS = 12
CUDA_MAX_MINUTES = 8.0


def plan(mode: str, device: str, reps: int | None = None, threads: int | None = None,
         startup_only: bool = False, max_minutes: float | None = None, peers: bool = False,
         burst: int | None = None, burst_rounds: int | None = None) -> Plan:
    cuda = device == "cuda"
    if mode == "full":
        p = Plan(
            mode, device, reps=CUDA_REPS if cuda else 10, rtt_cells=200,
            matmul=([(d, n) for d in ("bfloat16", "float32") for n in (4096, 8192)] if cuda
                    else [("float32", n) for n in (512, 1024, 2048)]),
            matmul_block=0.1 if cuda else 0.15,
            train_batch=256 if cuda else 64,
            inference=(dict(batch=64, seq=256, d_model=512, layers=6, dtype="bfloat16") if cuda
                       else dict(batch=16, seq=128, d_model=256, layers=4, dtype="float32")),
            dataloader=dict(n=8192, batch=64, workers=2, epochs=3),
            syscalls=dict(n_files=100, n_ops=100_000, blocks=5),
            block_time=0.15 if cuda else 0.2, blocks=5 if cuda else 7,
            max_minutes=CUDA_MAX_MINUTES if cuda else None,
        )
    elif mode == "quick":
        p = Plan(
            mode, device, reps=3, rtt_cells=100,
            matmul=([(d, 4096) for d in ("bfloat16", "float32")] if cuda else [("float32", n) for n in (256, 512)]),
            matmul_block=0.1,
            train_batch=256 if cuda else 32,
            inference=(dict(batch=64, seq=256, d_model=512, layers=6, dtype="bfloat16") if cuda
                       else dict(batch=8, seq=64, d_model=256, layers=2, dtype="float32")),
            dataloader=dict(n=2048, batch=64, workers=2, epochs=2),
            syscalls=dict(n_files=100, n_ops=20_000, blocks=4),
            block_time=0.1, blocks=3,
        )
    elif mode == "tiny":  # the test suite's smoke run: every code path, meaningless numbers
        p = Plan(
            mode, device, reps=2, rtt_cells=5,
            matmul=[("float32", 64)],
            matmul_block=0.01,
            train_batch=4,
            inference=dict(batch=2, seq=8, d_model=64, layers=1, dtype="float32"),
            dataloader=dict(n=128, batch=32, workers=2, epochs=1),
            syscalls=dict(n_files=10, n_ops=500, blocks=2),
            block_time=0.01, blocks=2, startup_timeout=60.0, cell_timeout=120.0,
        )
    else:
        raise ValueError(f"unknown mode {mode!r}")
    if reps is not None:
        p.reps = reps
    if max_minutes is not None:
        p.max_minutes = max_minutes or None  # 0: no limit
    p.threads = threads
    p.startup_only = startup_only
    p.peers = peers
    if peers:  # the simultaneous starts belong to the peers' comparison (issue 21's table)
        p.burst = (2 if mode == "tiny" else 16) if burst is None else burst
        if burst_rounds is not None:
            p.burst_rounds = burst_rounds
        elif mode != "full":
            p.burst_rounds = 1 if mode == "tiny" else 3
    return p
