"""``python -m benchmarks run|report``: see benchmarks/README.md."""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
from datetime import datetime
from pathlib import Path

HERE = Path(__file__).resolve().parent
TINY_ENV = "SANDBOX_KERNEL_BENCH_TINY"


def _device(requested: str) -> str:
    if requested != "auto":
        return requested
    from .machine import probe_torch

    return "cuda" if probe_torch().get("cuda") else "cpu"


def cmd_run(args) -> int:
    from .config import plan
    from .runner import print_summary, run

    device = _device(args.device)
    if device == "cuda":
        from .machine import probe_torch

        if not probe_torch().get("cuda"):
            print("benchmarks: --device cuda, but torch sees no CUDA device", file=sys.stderr)
            return 2
    mode = "tiny" if (args.tiny or os.environ.get(TINY_ENV)) else ("quick" if args.quick else "full")
    p = plan(mode, device, reps=args.reps, threads=args.threads, startup_only=args.startup_only,
             max_minutes=args.max_minutes, peers=args.peers, burst=args.burst, burst_rounds=args.burst_rounds)
    if (args.burst is not None or args.burst_rounds is not None) and not args.peers:
        print("benchmarks: --burst and --burst-rounds belong to --peers; add --peers", file=sys.stderr)
        return 2
    if (args.burst is not None and args.burst < 0) or (args.burst_rounds is not None and args.burst_rounds < 1):
        print("benchmarks: --burst must be 0 or more and --burst-rounds 1 or more", file=sys.stderr)
        return 2
    out = Path(args.out) if args.out else HERE / "out" / datetime.now().strftime("%Y%m%d-%H%M%S")
    notes = Path(args.notes).read_text() if args.notes else None
    command = "python -m benchmarks " + shlex.join(sys.argv[1:])
    results = run(p, out, command=command, progress=not args.no_progress, notes=notes)
    print_summary(results, out)
    return 1 if results["errors"] else 0


def cmd_report(args) -> int:
    from . import report

    out = Path(args.dir)
    results = json.loads((out / "results.json").read_text())
    notes = Path(args.notes).read_text() if args.notes else None
    drawn = report.write(results, out, notes)
    print(f"wrote {out / 'report.md'}" + (f" and {out / 'overhead.png'}" if drawn else " (no plot: see above)"))
    return 0


def cmd_startup_profile(args) -> int:
    from .startup_profile import main

    return main(args.profile, args.reps, Path(args.out) if args.out else None, cache=not args.no_cache)


def cmd_layer_costs(args) -> int:
    from .layer_costs import main

    return main(args.rounds, Path(args.out) if args.out else None)


def cmd_pool_ttfr(args) -> int:
    from .pool_ttfr import main

    return main(args.profile, args.reps, args.burst, Path(args.out) if args.out else None)


def cmd_peer_targets(args) -> int:
    from .peer_targets import main

    return main(args.rounds, args.start_rounds, args.per, args.blocks, Path(args.out) if args.out else None, args.also,
                args.sessions)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks", description=(
        "Measure the sandboxed kernel against plain ipykernel on this machine, through real kernels."))
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)
    r = sub.add_parser("run", help="run the benchmark and write results.json, report.md, overhead.png",
                       description="Variants interleaved per repetition (plain, guard, os, full), one fresh kernel "
                                   "per variant and repetition.")
    r.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                   help="auto: cuda when torch sees a GPU, else cpu (default)")
    r.add_argument("--quick", action="store_true", help="small sizes and 3 repetitions (about 3 min on 2 idle cores): a look, not verdicts (3 "
                                                      "repetitions give 75%% intervals, every verdict UNRESOLVED)")
    r.add_argument("--tiny", action="store_true", help=argparse.SUPPRESS)  # the test suite's smoke run
    r.add_argument("--reps", type=int, help="repetitions (default: 10; on CUDA 12 within --max-minutes; --quick: 3)")
    r.add_argument("--max-minutes", type=float, metavar="M",
                   help="start no repetition that would end after M minutes from the start (the report says how "
                        "many ran); default: 8 on CUDA, no limit on CPU; 0: no limit")
    r.add_argument("--threads", type=int, help="torch intra-op threads in every kernel (default: torch's, one "
                                                "per CPU); 1 is steadier on a machine shared with other work")
    r.add_argument("--startup-only", action="store_true",
                   help="only start-up, empty-cell round trip and import torch (cheap sessions: use more --reps)")
    r.add_argument("--peers", action="store_true",
                   help="add bubblewrap and firejail around the same ipykernel (where installed: apt-get install -y "
                        "bubblewrap firejail), /tmp reads, socketpair sends, PSS and a table of what each variant "
                        "enforces, read inside each kernel; targets of issue 21 against the peers")
    r.add_argument("--burst", type=int, metavar="N", help="with --peers: N simultaneous starts of plain, full and each "
                                                           "peer, per round (default: 16; 0: none)")
    r.add_argument("--burst-rounds", type=int, metavar="R", help="with --peers: rounds of those starts (default: 6; "
                                                                 "--quick: 3)")
    r.add_argument("--out", metavar="DIR", help="output directory (default: benchmarks/out/<timestamp>/)")
    r.add_argument("--notes", metavar="FILE", help="markdown appended to the report's Notes section")
    r.add_argument("--no-progress", action="store_true", help="no progress bar")
    r.set_defaults(func=cmd_run)
    s = sub.add_parser("report", help="regenerate report.md and overhead.png from DIR/results.json")
    s.add_argument("dir", metavar="DIR")
    s.add_argument("--notes", metavar="FILE", help="markdown for the report's Notes section (replaces the notes "
                                                          "stored in results.json)")
    s.set_defaults(func=cmd_report)
    t = sub.add_parser("startup-profile", help="start real kernels from the installed kernelspec argv and time "
                                               "the launcher's phases (its own timing marks) against plain ipykernel")
    t.add_argument("--profile", default="free", help="profile to launch (default: free)")
    t.add_argument("--reps", type=int, default=10, help="repetitions, each one kernel of each kind (default: 10)")
    t.add_argument("--no-cache", action="store_true", help="without the validated-policy cache (the YAML and "
                                                            "JSON Schema path a stale cache takes)")
    t.add_argument("--out", metavar="DIR", help="also write startup-profile.md and .json into DIR")
    t.set_defaults(func=cmd_startup_profile)
    t = sub.add_parser("layer-costs", help="per-syscall cost of seccomp and Landlock, one layer at a time "
                                           "(outside Jupyter)")
    t.add_argument("--rounds", type=int, default=5, help="interleaved rounds of fresh processes (default: 5)")
    t.add_argument("--out", metavar="DIR", help="also write layer-costs.md and .json into DIR")
    t.set_defaults(func=cmd_layer_costs)
    t = sub.add_parser("pool-ttfr", help="time to first result (start request to the reply of 1+1): plain ipykernel "
                                         "cold, sandbox cold, sandbox pooled; simultaneous starts; idle PSS")
    t.add_argument("--profile", default="default", help="profile of the sandboxed kernels (default: default)")
    t.add_argument("--reps", type=int, default=20, help="repetitions, each one start of each kind (default: 20)")
    t.add_argument("--burst", type=int, default=16, help="simultaneous starts of plain and of pooled kernels "
                                                         "(default: 16; 0: none)")
    t.add_argument("--out", metavar="DIR", help="also write pool-ttfr.md and .json into DIR")
    t.set_defaults(func=cmd_pool_ttfr)
    t = sub.add_parser("peer-targets", help="issue 21's five targets against bubblewrap and firejail, with the pairs "
                                            "close in time: per-operation rounds in kernels that stay up, rounds of "
                                            "cold starts")
    t.add_argument("--rounds", type=int, default=60, help="per-operation rounds (default: 60)")
    t.add_argument("--start-rounds", type=int, default=30, help="rounds of one cold start per variant (default: 30)")
    t.add_argument("--per", type=int, default=4000, help="operations per block (default: 4000)")
    t.add_argument("--blocks", type=int, default=5, help="blocks per round and kernel (default: 5)")
    t.add_argument("--sessions", type=int, default=6, help="per-operation rounds are split over this many sets of "
                                                           "fresh kernels (default: 6)")
    t.add_argument("--also", action="append", metavar="NAME=PROFILE", help="diagnosis: one more kernel in the "
                   "per-operation part, the launcher under PROFILE (a name or YAML file; repeatable)")
    t.add_argument("--out", metavar="DIR", help="also write peer-targets.md and .json into DIR")
    t.set_defaults(func=cmd_peer_targets)
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
