"""`benchmarks run --peers` pieces that need no timing: the peers' command lines and seccomp
filter, the probe cell, the issue-21 targets and the report section, and the BPF instruction
counter (benchmarks/bpf_walk.py). Kernels are started only by the smoke test in
test_benchmarks_smoke.py."""

import copy
import errno
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from testenv import REPO

sys.path.insert(0, str(REPO))  # `benchmarks` lives at the repository root
from benchmarks import bpf_walk, burst, cells, peers, report  # noqa: E402

RUN = REPO / "benchmarks" / "results" / "cpu-x86_64-2core" / "results.json"


def test_bwrap_argv_has_every_protection_the_issue_names(tmp_path):
    argv = peers.bwrap_argv("/usr/bin/bwrap", tmp_path / "f.bpf", tmp_path / "nb dir", ["python", "-m", "k"])
    assert argv[:2] == ["/bin/sh", "-c"] and argv[-3:] == ["python", "-m", "k"]
    script = argv[2]
    for opt in ("--ro-bind / /", "--tmpfs /tmp", "--unshare-pid", "--unshare-ipc", "--unshare-uts",
                "--cap-drop ALL", "--seccomp 9", "--die-with-parent"):
        assert opt in script, opt
    assert f"9<{tmp_path / 'f.bpf'}" in script
    assert f"--bind '{tmp_path / 'nb dir'}' '{tmp_path / 'nb dir'}'" in script  # quoted for sh
    assert "--unsetenv JPY_PARENT_PID" in script  # ipykernel's parent poller cannot see Jupyter's pid
    assert "{" not in script  # jupyter_client substitutes {connection_file} in every argument


def test_firejail_argv():
    argv = peers.firejail_argv("/usr/bin/firejail", ["python"])
    assert {"--seccomp", "--caps.drop=all", "--private-tmp", "--noprofile", "--rmenv=JPY_PARENT_PID"} <= set(argv)
    assert argv[-1] == "python"


def _in_child_under(bpf: bytes, code: str) -> subprocess.CompletedProcess:
    """Run `code` in a Python child that loaded `bpf` with prctl (as bwrap --seccomp does)."""
    loader = (
        "import ctypes, os, struct, sys\n"
        "prog = open(sys.argv[1], 'rb').read()\n"
        "libc = ctypes.CDLL(None, use_errno=True)\n"
        "buf = ctypes.create_string_buffer(prog)\n"
        "class F(ctypes.Structure): _fields_ = [('len', ctypes.c_ushort), ('filter', ctypes.c_void_p)]\n"
        "f = F(len(prog) // 8, ctypes.cast(buf, ctypes.c_void_p))\n"
        "assert libc.prctl(38, 1, 0, 0, 0) == 0\n"
        "assert libc.prctl(22, 2, ctypes.byref(f), 0, 0) == 0, ctypes.get_errno()\n"
        "exec(sys.argv[2])\n")
    return subprocess.run([sys.executable, "-c", loader, bpf, code], capture_output=True, text=True, timeout=60)


def test_docker_like_filter_refuses_new_namespaces_and_allows_the_rest(tmp_path):
    bpf = peers.write_docker_like_bpf(tmp_path / "f.bpf")
    r = _in_child_under(str(bpf), (
        "l = ctypes.CDLL(None, use_errno=True)\n"
        "print(l.unshare(0x10000000), ctypes.get_errno())\n"   # CLONE_NEWUSER
        "print(l.syscall(155, 0, 0), ctypes.get_errno())\n"     # pivot_root (x86_64 155): EPERM
        "print(os.getpid() > 0, len(open('/proc/self/status').read()) > 0)\n"))
    assert r.returncode == 0, r.stderr
    lines = r.stdout.split("\n")
    assert lines[0] == f"-1 {errno.EPERM}"
    if os.uname().machine == "x86_64":
        assert lines[1] == f"-1 {errno.EPERM}"
    assert lines[2] == "True True"


def test_enforcement_probe_in_this_process(tmp_path, monkeypatch):
    """The probe cell, run here (no sandbox): it sees this process's namespaces and /tmp."""
    fd, marker = __import__("tempfile").mkstemp(dir="/tmp")
    os.close(fd)
    monkeypatch.chdir(tmp_path)
    try:
        host = peers.host_identity(Path(marker), None)
        out = cells.enforcement(host)
    finally:
        os.unlink(marker)
    assert out["tmp_private"] == "no"
    assert out["pid_ns"] == out["mnt_ns"] == out["net_ns"] == "no"
    assert out["cgroup"] == "no"
    assert out["notebook_write"] == "allowed"
    assert out["import_guard"] == "no"
    assert {k for k, _ in peers.ENFORCEMENT_ROWS} - {"connect"} <= set(out)
    assert not list(Path("/usr").glob(".sandbox-kernel-bench-probe-*"))  # a probe file is removed


def _with_peers(results: dict) -> dict:
    """The committed CPU run with two fake peers (copies of plain and of full, scaled) and the
    --peers workloads, so the targets and the section can be checked on known numbers."""
    r = copy.deepcopy(results)
    r["config"]["peers"] = True
    reps = r["config"]["reps_done"]
    for wid, unit in (("syscall_tmp_read", "µs/op"), ("syscall_sock", "µs/op"), ("pss_start", "MiB")):
        r["workloads"].append({"id": wid, "label": wid, "unit": unit, "better": "lower", "group": "system",
                               "target": None, "digits": 2, "figure": "value"})
    base = {"syscall_tmp_read": 3.5, "syscall_sock": 2.2, "pss_start": 38.0}
    scale = {"plain": 1.0, "full": 1.2, "floor": 1.05, "bwrap": 1.0, "firejail": 1.01}
    for v in list(r["samples"]):
        for wid, b in base.items():
            r["samples"][v][wid] = [b * scale.get(v, 1.1) * (1 + 0.001 * i) for i in range(reps)]
    for pid in ("bwrap", "firejail"):
        r["variants"].append({"id": pid, "label": pid, "description": pid, "argv": [], "profile": None,
                              "environment": {"enforcement": {"host_write": "refused (EROFS)", "caps": "none"}}})
        r["samples"][pid] = copy.deepcopy(r["samples"]["plain"])
        for wid, b in base.items():
            r["samples"][pid][wid] = [b * scale[pid] * (1 + 0.001 * i) for i in range(reps)]
        r["inner_samples"][pid] = copy.deepcopy(r["inner_samples"]["plain"])
    report.analyse(r)
    return r


def test_peer_targets_and_section():
    r = _with_peers(json.loads(RUN.read_text()))
    t = {x["id"]: x for x in r["peer_targets"]}
    assert t["tmp_read_vs_bwrap"]["status"] == "MISS"  # x1.2 of bwrap's, every repetition
    assert abs(t["tmp_read_vs_bwrap"]["measured"] - 1.2) < 1e-6
    assert t["pss_vs_bwrap"]["status"] == "MISS"
    # full - floor on the socket: 2.2 * (1.2 - 1.05) = 0.33 µs > 0.05
    assert t["sock_vs_floor"]["status"] == "MISS" and abs(t["sock_vs_floor"]["measured"] - 0.33) < 0.01
    assert t["startup_vs_plain"]["status"] in ("PASS", "MISS", "UNRESOLVED")
    md = report.markdown(r)
    assert "## Against the peers (bubblewrap, firejail)" in md
    assert "full / bwrap" in md and "full / firejail" in md and "bwrap / plain" in md
    assert "refused (EROFS)" in md  # the enforcement table
    assert "**MISS** open+read+close in /tmp" in md


def test_peer_targets_not_run_without_the_peer():
    r = json.loads(RUN.read_text())
    r["config"]["peers"] = True
    report.analyse(r)
    t = {x["id"]: x["status"] for x in r["peer_targets"]}
    assert t["tmp_read_vs_bwrap"] == t["pss_vs_bwrap"] == t["nb_read_vs_bwrap"] == "NOT RUN"
    assert t["startup_vs_plain"] in ("PASS", "MISS", "UNRESOLVED")  # needs no peer: judged on the run's data
    assert "No peer is installed" in report.markdown(r)


def test_bpf_walk_agrees_with_the_rules_and_hot_calls_come_first():
    """The instruction counter returns the filter's verdicts, and openat/sendto are answered
    within a few comparisons (the priorities in seccomp.HOT), not after the whole list."""
    from sandbox_kernel import libseccomp as sc

    if sc.library_path() is None:
        pytest.skip("no libseccomp")
    arch = bpf_walk.AUDIT_ARCH_X86_64 if sc.native_arch() == "SCMP_ARCH_X86_64" else bpf_walk.AUDIT_ARCH_AARCH64
    (stage1,) = bpf_walk.filters(None)
    prog = stage1.export_bpf()
    stage1.release()
    ret, _ = bpf_walk.walk(prog, bpf_walk.seccomp_data(sc.resolve("getpid"), arch))
    assert ret == sc.ALLOW
    ret, _ = bpf_walk.walk(prog, bpf_walk.seccomp_data(sc.resolve("unshare"), arch))
    assert ret == sc.ERRNO(errno.EPERM)
    ret, _ = bpf_walk.walk(prog, bpf_walk.seccomp_data(sc.resolve("sendto"), arch, (3, 0, 1, 0x20000000)))
    assert ret & 0xFFFF0000 == 0x00050000  # MSG_FASTOPEN refused
    ret, n_send = bpf_walk.walk(prog, bpf_walk.seccomp_data(sc.resolve("sendto"), arch, (3, 0, 1, 0)))
    assert ret == sc.ALLOW
    ret, n_open = bpf_walk.walk(prog, bpf_walk.seccomp_data(sc.resolve("openat"), arch, (-100, 0, 0, 0)))
    assert ret == sc.ALLOW
    n_socket = bpf_walk.walk(prog, bpf_walk.seccomp_data(sc.resolve("socket"), arch, (1, 1, 0)))[1]
    assert n_send <= 20 and n_open <= 20 < n_socket
    assert bpf_walk.arg_dependent(prog, sc.resolve("openat"), arch)
    assert not bpf_walk.arg_dependent(prog, sc.resolve("getpid"), arch)


@pytest.mark.skipif(not shutil.which("bwrap"), reason="bubblewrap not installed")
def test_bwrap_wrapper_runs_a_program_read_only(tmp_path):
    """The bwrap command line works on this machine: the host is read-only, /tmp private,
    the notebook dir writable, user namespaces refused by the Docker-like filter."""
    bpf = peers.write_docker_like_bpf(tmp_path / "f.bpf")
    nb = tmp_path / "nb"
    nb.mkdir()
    (Path("/tmp") / f"peers-test-{os.getpid()}").write_text("x")
    try:
        code = ("import os, ctypes\n"
                "l = ctypes.CDLL(None, use_errno=True)\n"
                "try:\n    open('/usr/.peers-test', 'w'); print('usr writable')\n"
                "except OSError as e:\n    print('usr', e.errno)\n"
                f"print('tmp', os.path.exists('/tmp/peers-test-{os.getpid()}'))\n"
                "open('out', 'w').write('ok')\n"
                "print('userns', l.unshare(0x10000000), ctypes.get_errno())\n")
        r = subprocess.run(peers.bwrap_argv(shutil.which("bwrap"), bpf, nb, [sys.executable, "-c", code]),
                           capture_output=True, text=True, timeout=60)
    finally:
        os.unlink(Path("/tmp") / f"peers-test-{os.getpid()}")
    if r.returncode != 0 and "No permissions to create new namespace" in r.stderr:
        pytest.skip("bwrap cannot create namespaces here")
    assert r.returncode == 0, r.stderr
    assert f"usr {errno.EROFS}" in r.stdout and "tmp False" in r.stdout
    assert f"userns -1 {errno.EPERM}" in r.stdout
    assert (nb / "out").read_text() == "ok"


def test_burst_section_pairs_rounds_and_skips_failed_ones():
    """The simultaneous-starts table: wall ratios paired within a round; a round where a kernel
    failed to start has no wall figure and drops out of the pairs (counted as a failed start)."""
    def rnd(wall, starts, errors=()):
        return {"n": 3, "wall_ms": None if errors else wall, "start_ms": starts, "errors": list(errors)}

    r = {"burst": {"n": 3, "rounds": 3, "variants": ["plain", "full", "bwrap"], "samples": {
        "plain": [rnd(1000, [900, 950, 1000]), rnd(1100, [1000, 1050, 1100]), rnd(1200, [1100, 1150, 1200])],
        "full": [rnd(1500, [1400, 1450, 1500]), rnd(0, [1500], ["TimeoutError: x", "TimeoutError: y"]),
                 rnd(1800, [1700, 1750, 1800])],
        "bwrap": [rnd(1000, [1, 2, 3]), rnd(1000, [1, 2, 3]), rnd(1000, [1, 2, 3])]}}}
    assert burst.paired_walls(r["burst"], "full", "plain") == [1.5, 1.5]
    md = "\n".join(burst.section(r))
    assert "### 3 simultaneous starts" in md
    assert "| full | 1650 | 1500 [1475–1725] | 2 |" in md, md
    assert "- full / plain: x1.500 [1.500–1.500; 50%] (2 rounds)" in md, md
    assert "- full / bwrap: x1.650" in md and "- bwrap / plain: x" in md
    assert burst.section({}) == []


def test_together_releases_every_call_at_once_and_reports_errors():
    import threading

    entered = []
    gate = threading.Barrier(4, timeout=10)  # passes only when all four calls run at the same time

    def call(i):
        entered.append(i)
        gate.wait()
        if i == 3:
            raise ValueError("three\nmore")
        return i

    done, errors, wall_ms = burst.together([lambda i=i: call(i) for i in range(4)], limit=30)
    assert sorted(done) == [0, 1, 2] and sorted(entered) == [0, 1, 2, 3]
    assert errors == ["ValueError: three"]
    assert 0 < wall_ms < 10_000
