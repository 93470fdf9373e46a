"""`benchmarks peer-targets` (issue 21's five targets, pairs close in time): the pairing, the
verdicts and the report from made-up samples; the per-operation cell in this process; and one
tiny run through real kernels (its numbers mean nothing: that every part runs and is written)."""

import json
import os
import platform
import shutil
import socket
import subprocess
import sys

import pytest
from testenv import REPO

sys.path.insert(0, str(REPO))  # `benchmarks` lives at the repository root
from benchmarks import peer_targets as pt  # noqa: E402
from benchmarks.peers import PEER_TARGETS  # noqa: E402


def _samples(n, **medians):
    """Samples per variant: `n` rounds, every figure `medians[variant]` times a round factor that
    every variant shares (the machine's drift), so the pairs cancel it."""
    out = {}
    for v, m in medians.items():
        out[v] = {f: [m * (1 + 0.3 * ((r * 7) % 5 - 2)) if f != "pss" else m for r in range(n)] for f in pt.FIGURES}
    return out


def test_pairs_are_rounds_and_skip_missing_ones():
    s = {"full": {"tmp": [2.0, None, 3.0, 4.0]}, "bwrap": {"tmp": [1.0, 1.0, None, 2.0]}}
    assert pt.paired(s, "tmp", "full", "bwrap", "ratio") == [2.0, 2.0]
    assert pt.paired(s, "tmp", "full", "bwrap", "diff") == [1.0, 2.0]
    assert pt.paired(s, "tmp", "full", "nobody", "ratio") == []


def test_shared_drift_cancels_and_every_target_is_decided():
    # full costs 10% more than bwrap everywhere, the machine's pace swings ±60% between rounds
    s = _samples(30, plain=1.0, full=1.1, floor=1.0, bwrap=1.0, firejail=1.0)
    by_id = {t["id"]: t for t in pt.check(s)}
    assert set(by_id) == {t[0] for t in PEER_TARGETS}
    assert by_id["tmp_read_vs_bwrap"]["status"] == "MISS"
    assert by_id["tmp_read_vs_bwrap"]["ci"] == [pytest.approx(1.1), pytest.approx(1.1)]
    assert by_id["pss_vs_bwrap"]["status"] == "MISS"
    s = _samples(30, plain=1.0, full=1.0, floor=1.0, bwrap=1.0, firejail=1.0)
    by_id = {t["id"]: t for t in pt.check(s)}
    assert by_id["nb_read_vs_bwrap"]["status"] == "PASS"
    assert by_id["sock_vs_floor"]["status"] == "PASS"  # a difference of 0 µs, target +0.05 µs
    assert by_id["pss_vs_bwrap"]["status"] == "PASS"  # no more than bubblewrap's: equal passes


def test_a_missing_peer_is_not_run_and_few_rounds_decide_nothing():
    s = _samples(30, plain=1.0, full=1.0, floor=1.0)
    by_id = {t["id"]: t for t in pt.check(s)}
    assert by_id["tmp_read_vs_bwrap"]["status"] == "NOT RUN"
    assert "bwrap" in by_id["tmp_read_vs_bwrap"]["why"]
    assert by_id["startup_vs_plain"]["status"] == "PASS"
    few = {t["id"]: t for t in pt.check(_samples(3, plain=1.0, full=1.0, floor=1.0, bwrap=1.0))}
    assert few["startup_vs_plain"]["status"] == "UNRESOLVED"  # 3 rounds: a 75% interval decides nothing


def test_report_names_each_target_and_figure():
    s = _samples(12, plain=1.0, full=1.1, floor=1.0, bwrap=1.0, firejail=1.0)
    s["no_landlock"] = {f: list(v) for f, v in s["bwrap"].items()}
    result = {"variants": [{"id": v, "description": f"the {v} variant"} for v in s], "samples": s, "errors": [],
              "notes": ["firejail is not installed"], "started": "2026-12-07T00:00:00+00:00", "duration_s": 60.0,
              "command": "python -m benchmarks peer-targets", "versions": {"git": "abc1234"},
              "machine": {"cpus": 2, "cpu_model": "x", "kernel": "6.18", "landlock_abi": 7, "cgroup": "v2",
                          "user": "root"},
              "load": {"start": [0.1, 0, 0], "end": [1.0, 0, 0]},
              "config": {"rounds": 12, "start_rounds": 12, "per": 10, "blocks": 2, "also": {"no_landlock": "p.yaml"}}}
    result["targets"] = pt.check(s)
    md = pt.markdown(result)
    for t in PEER_TARGETS:
        assert t[1] in md
    assert "**MISS** open+read+close in /tmp" in md
    assert " full − no_landlock |" in md
    assert md.count("\n| ") == 1 + len(pt.FIGURES)  # the header, then one row per figure
    assert "firejail is not installed" in md
    json.dumps(result)  # what --out writes


def test_micro_cell_measures_in_this_process(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    g = {}
    exec(compile(__import__("inspect").getsource(pt.micro_ops), "cell", "exec"), g)
    raw_runs = platform.machine() == "x86_64"
    try:
        first = g["micro_ops"](per=20, blocks=3, files=4, raw=pt.RAW_LOOPS_X86_64, fresh=False)
        again = g["micro_ops"](per=20, blocks=3, files=4, raw=pt.RAW_LOOPS_X86_64, fresh=False)  # all reused
        forked = g["micro_ops"](per=20, blocks=3, files=4, raw=pt.RAW_LOOPS_X86_64)  # in a child of its own
        plain = {"tmp", "nb", "sock"}
        assert set(first) == (plain | {"tmp_raw", "nb_raw", "sock_raw"} if raw_runs else plain | {"raw_error"})
        assert set(forked) == set(first)
        for r in (first, again, forked):
            for k, v in r.items():
                if k != "raw_error":
                    assert len(v["blocks"]) == 3 and 0 < v["best"] <= v["median"], k
        assert len(os.listdir(tmp_path)) == 1  # one directory of files in the notebook dir, made once
        if raw_runs:  # a failing call is reported, not timed: the loops check every return value
            st = g["_peer_targets_state"]
            _, _, open_loop, buf = st["raw"]
            assert open_loop(5, str(tmp_path / "absent").encode(), buf) == 15  # openat, then read and close of -ENOENT
            assert open_loop(5, st["paths"]["nb"][0].encode(), buf) == 0
            st["socks"][2].shutdown(socket.SHUT_WR)  # every sendto now fails (EPIPE); recvfrom reads the end (0)
            broken = g["micro_ops"](per=5, blocks=2, files=4, raw=pt.RAW_LOOPS_X86_64, fresh=False)
            assert {"tmp_raw", "nb_raw", "sock"} <= set(broken) and "sock_raw" not in broken
            assert broken["raw_error"] == "sock_raw: 10 of 20 system calls failed"
            # the forked child makes its own socketpairs: the broken one here does not reach it
            assert "raw_error" not in g["micro_ops"](per=5, blocks=2, files=4, raw=pt.RAW_LOOPS_X86_64)
        st["paths"]["nb"][0] = str(tmp_path / "absent")  # a child that fails: its error reaches the caller
        with pytest.raises(RuntimeError, match="micro_ops: FileNotFoundError"):
            g["micro_ops"](per=5, blocks=1, files=4)
    finally:
        st = g["_peer_targets_state"]
        for s in st.get("socks", []):
            s.close()
        for ps in st["paths"].values():
            shutil.rmtree(os.path.dirname(ps[1]), ignore_errors=True)


def test_the_raw_loops_are_the_assembled_source(tmp_path):
    """RAW_LOOPS_X86_64 is benchmarks/raw_loops_x86_64.s as GNU as assembles it (the bytes a
    reader can check), its entry points at the source's symbols."""
    if not (shutil.which("as") and shutil.which("objcopy") and shutil.which("nm")):
        pytest.skip("GNU binutils (as, objcopy, nm) are not installed")
    obj, binary = tmp_path / "l.o", tmp_path / "l.bin"
    subprocess.run(["as", "--64", str(REPO / "benchmarks" / "raw_loops_x86_64.s"), "-o", str(obj)], check=True)
    subprocess.run(["objcopy", "-O", "binary", "-j", ".text", str(obj), str(binary)], check=True)
    assert binary.read_bytes().hex() == pt.RAW_LOOPS_X86_64["code"]
    symbols = {line.split()[2]: int(line.split()[0], 16)
               for line in subprocess.run(["nm", str(obj)], capture_output=True, text=True, check=True).stdout.splitlines()}
    assert symbols == {"sock_loop": pt.RAW_LOOPS_X86_64["sock_loop"], "open_loop": pt.RAW_LOOPS_X86_64["open_loop"]}


def test_the_send_target_is_decided_by_the_raw_loop_where_it_ran():
    s = _samples(30, plain=1.0, full=1.0, floor=1.0, bwrap=1.0, firejail=1.0)
    s["full"]["sock"] = [x + 0.3 for x in s["full"]["sock"]]  # the Python loop says +0.3 µs: a MISS
    sock = {t["id"]: t for t in pt.check(s)}["sock_vs_floor"]
    assert sock["figure"] == "sock_raw" and sock["status"] == "PASS"
    for v in s.values():
        v["sock_raw"] = [None] * 30  # no raw loop (not x86_64): the Python loop decides
    sock = {t["id"]: t for t in pt.check(s)}["sock_vs_floor"]
    assert sock["figure"] == "sock" and sock["status"] == "MISS"


def test_bad_arguments_are_refused_clearly(capsys):
    from benchmarks.__main__ import main

    assert main(["peer-targets", "--also", "full=free"]) == 2  # refused before anything starts
    assert "NAME=PROFILE" in capsys.readouterr().err
    assert main(["peer-targets", "--rounds", "0"]) == 2
    assert "--rounds" in capsys.readouterr().err
    assert main(["peer-targets", "--rounds", "3", "--sessions", "4"]) == 2
    assert "--sessions" in capsys.readouterr().err


@pytest.mark.kernel
@pytest.mark.slow
@pytest.mark.serial
def test_a_tiny_run_through_real_kernels(tmp_path):
    out = tmp_path / "out"
    r = subprocess.run([sys.executable, "-m", "benchmarks", "peer-targets", "--rounds", "2", "--start-rounds", "1",
                        "--per", "50", "--blocks", "2", "--sessions", "2", "--out", str(out)], cwd=REPO, capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, f"{r.stdout[-3000:]}\n{r.stderr[-5000:]}"
    result = json.loads((out / "peer-targets.json").read_text())
    ids = [v["id"] for v in result["variants"]]
    assert {"plain", "full", "full_ll", "floor"} <= set(ids)
    assert result["config"]["sessions"] == 2
    for v in pt.MICRO_VARIANTS:
        if v in ids:
            figures = ("tmp", "nb", "sock") + (("tmp_raw", "nb_raw", "sock_raw") if platform.machine() == "x86_64" else ())
            assert all(x is not None and x > 0 for f in figures for x in result["samples"][v][f]), (v, result["notes"])
    for v in pt.START_VARIANTS:
        if v in ids:
            assert result["samples"][v]["startup"][0] > 0 and result["samples"][v]["pss"][0] > 0, v
    assert len(result["targets"]) == len(PEER_TARGETS)
    assert "## Targets" in (out / "peer-targets.md").read_text()
