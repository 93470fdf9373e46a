"""Smoke test of the benchmark suite (benchmarks/): a tiny run through real kernels.

It checks that `python -m benchmarks run` produces its three files, well formed,
with every variant and workload present; not the numbers (a tiny run's numbers
mean nothing).
"""

import json
import re
import shutil
import subprocess
import sys

import pytest
from testenv import REPO

# serial: a benchmark run times kernels and starts bursts of them at once (`--peers`); beside the
# parallel tier's kernels its runs would be both noisier and a load on every other test
pytestmark = pytest.mark.serial

VARIANTS = ["plain", "guard", "os", "full", "floor"]
FLOOR_WORKLOADS = {"rtt", "syscalls", "syscall_read", "syscall_stat", "syscall_getpid"}
TOP_LEVEL = {"schema", "benchmark", "created", "duration_s", "command", "mode", "device", "machine_name", "machine",
             "versions", "config", "target_variant", "variants", "workloads", "samples", "inner_samples", "order",
             "sessions", "errors", "summary", "targets"}
WORKLOADS = {"startup", "rtt", "import_torch", "train_step", "inference", "syscalls", "syscall_read", "syscall_stat",
             "syscall_getpid", "dataloader", "rss_start", "rss_peak"}


def _bench(*args, timeout=600):
    return subprocess.run([sys.executable, "-m", "benchmarks", *args], check=False, cwd=REPO, capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    r = _bench("run", "--tiny", "--device", "cpu", "--no-progress", "--out", str(out))
    assert r.returncode == 0, f"benchmark failed ({r.returncode}):\n{r.stdout}\n{r.stderr[-5000:]}"
    return out


@pytest.mark.kernel
@pytest.mark.slow
def test_results_json_is_complete(tiny_run):
    results = json.loads((tiny_run / "results.json").read_text())
    assert TOP_LEVEL <= set(results), f"missing keys: {TOP_LEVEL - set(results)}"
    assert results["mode"] == "tiny" and results["device"] == "cpu"
    assert results["errors"] == []
    assert [v["id"] for v in results["variants"]] == VARIANTS
    ids = {w["id"] for w in results["workloads"]}
    assert WORKLOADS <= ids and any(i.startswith("matmul_") for i in ids)
    reps = results["config"]["reps"]
    assert results["config"]["reps_done"] == reps
    for v in VARIANTS:
        for wid in ids:
            xs = results["samples"][v][wid]
            if v == "floor" and wid not in FLOOR_WORKLOADS:  # the reference runs the system-call figures only
                assert xs == [None] * reps and results["summary"][wid][v]["n"] == 0, (wid, xs)
                continue
            assert len(xs) == reps and all(isinstance(x, (int, float)) and x > 0 for x in xs), (v, wid, xs)
            assert results["summary"][wid][v]["n"] == reps
            if v != "plain":
                ratio = results["summary"][wid][v]["ratio"]
                assert ratio["median"] > 0 and ratio["ci"]["lo"] <= ratio["median"] <= ratio["ci"]["hi"]
    assert results["targets"], results.keys()
    for t in results["targets"]:
        assert t["status"] in ("PASS", "MISS", "UNRESOLVED") and t["n"] == reps, t
        assert t["ci"][0] <= t["measured"] <= t["ci"][1], t
    for key in ("python", "ipykernel", "jupyter_client", "torch"):
        assert results["versions"][key]
    assert results["machine"]["cpus"] >= 1
    # the variants ran with the layers they claim
    env = {v["id"]: v["environment"] for v in results["variants"]}
    assert env["plain"]["proc_status"]["Seccomp"] == "0" and not env["plain"]["import_guard"]
    assert env["guard"]["import_guard"] and env["guard"]["proc_status"]["Seccomp"] == "0"
    assert env["os"]["proc_status"]["Seccomp"] == "2" and env["full"]["proc_status"]["Seccomp"] == "2"
    assert json.loads(env["full"]["layers"])["cgroup"]["state"] == "active" or results["machine"]["uid"] != 0
    assert json.loads(env["os"]["layers"])["cgroup"]["state"] == "off"
    # the floor: plain ipykernel under a one-instruction allow-all filter (one filter, no launcher layers)
    assert env["floor"]["proc_status"]["Seccomp"] == "2" and env["floor"]["proc_status"]["Seccomp_filters"] == "1"
    assert env["floor"]["proc_status"]["NoNewPrivs"] == "1" and not env["floor"]["import_guard"]
    assert env["floor"]["layers"] is None
    # interleaved, the order rotated from one repetition to the next: A B C D E, B C D E A, ...
    assert [o["variant"] for o in results["order"]] == [v for r in range(reps)
                                                        for v in VARIANTS[r % 5:] + VARIANTS[:r % 5]]


@pytest.mark.kernel
@pytest.mark.slow
def test_report_md_has_table_and_verdicts(tiny_run):
    text = (tiny_run / "report.md").read_text()
    results = json.loads((tiny_run / "results.json").read_text())
    assert "| workload | unit | plain ipykernel (median) |" in text
    assert results["workloads"], results.keys()
    for w in results["workloads"]:
        assert f"| {w['label']} |" in text, w["label"]
    verdicts = re.findall(r"^- \*\*(PASS|MISS|UNRESOLVED)\*\* ", text, flags=re.MULTILINE)
    assert len(verdicts) == len(results["targets"]) == sum(1 for w in results["workloads"] if w["target"])
    assert "](overhead.png)" in text
    assert "## Seccomp: our filter against the floor" in text
    assert "| verdict (full) |" in text


@pytest.mark.kernel
@pytest.mark.slow
def test_overhead_png_is_a_png(tiny_run):
    data = (tiny_run / "overhead.png").read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    assert width > 300 and height > 300


@pytest.mark.kernel
@pytest.mark.slow
def test_report_regenerates_from_results(tiny_run, tmp_path):
    shutil.copy(tiny_run / "results.json", tmp_path / "results.json")
    r = _bench("report", str(tmp_path), timeout=120)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "report.md").read_text() == (tiny_run / "report.md").read_text()
    assert (tmp_path / "overhead.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.kernel
@pytest.mark.slow
def test_startup_profile_reads_the_launchers_own_phases(tmp_path):
    """Real kernels from the installed kernelspec argv; the launcher's phases come from its timing marks."""
    r = _bench("startup-profile", "--reps", "1", "--out", str(tmp_path), timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    result = json.loads((tmp_path / "startup-profile.json").read_text())
    from sandbox_kernel.install import kernel_argv

    assert result["argv"] == kernel_argv("free") and result["policy_cache"] is True
    phases = result["phases"]
    for name in ("sandbox · launcher imports", "sandbox · layer seccomp", "sandbox · layer landlock",
                 "sandbox · exec → first execute_reply (the kernel)", "plain ipykernel: start → first execute_reply"):
        assert name in phases and phases[name]["median_ms"] >= 0, (name, list(phases))
    assert any(k.startswith("bare interpreter: python -I") for k in phases)
    sandbox_sum = sum(v["median_ms"] for k, v in phases.items() if k.startswith("sandbox · "))
    assert sandbox_sum == pytest.approx(result["sandbox_total_ms"][0], rel=0.05)  # the phases partition the start
    assert result["overhead"]["verdict"]["status"] in ("PASS", "MISS", "UNRESOLVED")
    # the like-for-like reference: a plain kernel that, like the sandbox kernel here, never imported debugpy
    assert "plain ipykernel without debugpy: start → first execute_reply" in phases
    assert result["like_for_like_ms"] == [s - p for s, p in zip(result["sandbox_total_ms"],
                                                                result["plain_nodebugpy_total_ms"])]
    text = (tmp_path / "startup-profile.md").read_text()
    assert "| sandbox · layer seccomp |" in text and "Like for like" in text


def test_like_for_like_reference_kernel_never_imports_debugpy():
    """The start-up profile's reference kernel skips debugpy as the sandbox kernel does (ipykernel's own
    'debugpy unavailable' path), and only that: the rest of its start is plain ipykernel's."""
    from benchmarks.startup_profile import NO_DEBUGPY

    head, _, launch = NO_DEBUGPY.rpartition("from ipykernel.kernelapp import")
    probe = head + "import ipykernel.debugger as d; print(d._is_debugpy_available, 'debugpy.server' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]
    assert launch.strip() == "launch_new_instance; launch_new_instance()"


@pytest.mark.slow
@pytest.mark.skipif(not (shutil.which("bwrap") or shutil.which("firejail")),
                    reason="neither bubblewrap nor firejail is installed (apt-get install -y bubblewrap firejail)")
@pytest.mark.kernel
def test_peers_run(tmp_path):
    """`run --peers`: bubblewrap and firejail kernels start and run every workload; the probe
    cell reads, inside each kernel, what it enforces; the report's targets and section are there."""
    r = _bench("run", "--tiny", "--peers", "--reps", "1", "--device", "cpu", "--no-progress", "--out", str(tmp_path),
               timeout=1500)
    assert r.returncode == 0, f"benchmark failed ({r.returncode}):\n{r.stdout}\n{r.stderr[-5000:]}"
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["errors"] == [] and results["config"]["peers"] is True
    ids = [v["id"] for v in results["variants"]]
    from benchmarks import peers as peer_module

    # (firejail is left out, with a note, where its private /tmp would hide this environment)
    peers = [p for p in ("bwrap", "firejail") if shutil.which(p) and not (p == "firejail" and peer_module.env_under_tmp())]
    assert ids == VARIANTS + peers
    for v in ids:
        for wid in ("syscall_tmp_read", "syscall_sock", "startup"):
            if v == "floor" and wid == "startup":
                continue
            xs = results["samples"][v][wid]
            assert len(xs) == 1 and xs[0] and xs[0] > 0, (v, wid, xs)
        if v != "floor":
            assert results["samples"][v]["pss_start"][0] > 5, v  # MiB: a Python kernel's tree
    probes = {v["id"]: v["environment"]["enforcement"] for v in results["variants"]}
    assert probes["plain"]["tmp_private"] == "no" and probes["plain"]["pid_ns"] == "no"
    assert probes["plain"]["seccomp"] == "no" and probes["plain"]["connect"] == "allowed"
    assert probes["full"]["seccomp"].startswith("yes") and probes["full"]["userns"].startswith("refused")
    assert probes["full"]["import_guard"] == "yes" and probes["full"]["landlock"] in ("active", "partial")
    if "bwrap" in probes:
        b = probes["bwrap"]
        assert b["host_write"].startswith("refused") and b["tmp_private"] == "yes" and b["pid_ns"] == "yes"
        assert b["ipc_ns"] == b["uts_ns"] == "yes" and b["caps"] == "none" and b["seccomp"].startswith("yes")
        assert b["userns"].startswith("refused") and b["notebook_write"] == "allowed"
    if "firejail" in probes:
        f = probes["firejail"]
        assert f["tmp_private"] == "yes" and f["caps"] == "none" and f["seccomp"].startswith("yes")
    assert {t["id"] for t in results["peer_targets"]} == {"tmp_read_vs_bwrap", "nb_read_vs_bwrap", "sock_vs_floor",
                                                          "startup_vs_plain", "pss_vs_bwrap"}
    text = (tmp_path / "report.md").read_text()
    assert "## Against the peers (bubblewrap, firejail)" in text and "| read inside the kernel |" in text
    # the simultaneous starts (--tiny: 2 kernels at once, one round), plain, full and each peer
    b = results["burst"]
    assert b["n"] == 2 and b["rounds"] == 1 and b["variants"] == ["plain", "full"] + peers
    for v in b["variants"]:
        (rnd,) = b["samples"][v]
        assert rnd["errors"] == [] and len(rnd["start_ms"]) == 2 and rnd["wall_ms"] >= max(rnd["start_ms"]), (v, rnd)
    assert "### 2 simultaneous starts" in text and "- full / plain: x" in text
