"""The benchmark's terminal summary, report and plot (benchmarks/runner.py, report.py), from a
committed run's results.json: no kernels are started."""

import copy
import json
import re
import sys

import pytest
from testenv import REPO

sys.path.insert(0, str(REPO))  # `benchmarks` lives at the repository root
from benchmarks import report, runner  # noqa: E402

RUN = REPO / "benchmarks" / "results" / "cpu-x86_64-2core" / "results.json"


@pytest.fixture
def results():
    return json.loads(RUN.read_text())


def quick(results: dict, reps: int = 3) -> dict:
    """The same run cut to its first `reps` repetitions, as `--quick` runs them."""
    r = copy.deepcopy(results)
    for v in r["samples"].values():
        for w in v:
            v[w] = v[w][:reps]
    for v in r.get("inner_samples", {}).values():
        for w in v:
            v[w] = v[w][:reps]
    r["config"]["reps"] = r["config"]["reps_done"] = reps
    r["sessions"] = [x for x in r["sessions"] if x["rep"] < reps]
    r["order"] = [x for x in r["order"] if x["rep"] < reps]
    report.analyse(r)
    return r


def summary(results, tmp_path, capsys) -> str:
    runner.print_summary(results, tmp_path)
    return capsys.readouterr().err


def test_quick_verdicts_say_their_intervals_are_75_percent(results, tmp_path, capsys):
    out = summary(quick(results), tmp_path, capsys)
    assert "75% intervals ([min, max] of the paired values), not 95%" in out and "UNRESOLVED" in out, out
    verdicts = re.split(r"\n(?=PASS|MISS|UNRESOLVED|report:)", out)[1:-1]
    assert verdicts and all("(75% interval)" in " ".join(v.split()) for v in verdicts if "[" in v), verdicts


def test_a_full_run_on_an_idle_machine_adds_no_note(results, tmp_path, capsys):
    for x in results["sessions"]:
        x["background_cores"] = 0.05
    report.analyse(results)
    out = summary(results, tmp_path, capsys)
    assert "interval)" not in out and "note:" not in out and "warning:" not in out, out


def test_a_loaded_machine_is_warned_about_before_the_verdicts(results, tmp_path, capsys):
    """Other processes on half of the 2 CPUs (as in the walkthrough's run): the summary on the
    terminal says so (the report's Notes did already), before the figures."""
    for i, x in enumerate(results["sessions"]):
        x["background_cores"] = 1.0 + (0.1 if i % 2 else 0)
    report.analyse(results)
    out = " ".join(summary(results, tmp_path, capsys).split())
    assert "warning: other processes used a median 1.05 (max 1.10) of the 2 CPUs" in out, out
    first_verdict = min(out.find(s) for s in ("PASS", "MISS", "UNRESOLVED") if s in out)
    assert out.find("warning: other processes") < first_verdict


def test_one_outlier_does_not_stretch_the_plot(results, tmp_path):
    pytest.importorskip("matplotlib")
    report.analyse(results)
    plain = report.plot(results, tmp_path / "a.png")
    assert all(p["cut"] == [] for p in plain), plain
    e = results["summary"]["matmul_fp32_512"]["full"]["ratio"]
    e["median"], e["ci"] = 41.47, {"lo": 30.0, "hi": 55.0, "confidence": 0.96}
    panels = report.plot(results, tmp_path / "b.png")
    top = panels[0]
    assert top["xmax"] is not None and top["xmax"] < 5, top
    assert top["cut"] == ["matmul fp32 512×512 (full)"] or any("full" in c for c in top["cut"]), top
    assert (tmp_path / "b.png").stat().st_size > 10_000


def test_axis_cap():
    assert report.axis_cap([1.01, 1.02, 0.99, 1.05], [1.03]) is None  # nothing to cut
    cap = report.axis_cap([1.01, 1.02, 0.99, 1.05, 41.0], [1.03])
    assert cap is not None and 1.2 <= cap < 2
    assert report.axis_cap([1.01, 1.02, 1.05, 3.0], [4.0]) is None  # a target is always in view


def test_without_matplotlib_the_results_are_kept_and_the_plot_skipped_with_a_hint(results, tmp_path, capsys,
                                                                                    monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # `import matplotlib` raises ImportError
    assert report.write(results, tmp_path) is False
    err = capsys.readouterr().err
    assert (tmp_path / "results.json").is_file() and (tmp_path / "report.md").is_file()
    assert not (tmp_path / "overhead.png").exists()
    assert "pip install matplotlib" in err and f"python -m benchmarks report {tmp_path}" in err, err
    out = summary(results, tmp_path, capsys)
    assert "plot:   not drawn" in out, out


def test_quick_has_one_documented_duration():
    texts = [(REPO / "benchmarks" / "README.md").read_text(), (REPO / "benchmarks" / "__main__.py").read_text(),
             (REPO / "README.md").read_text()]
    durations = set()
    for t in texts:
        for line in t.splitlines():
            if "--quick" in line or "`--quick`" in line:
                durations |= set(re.findall(r"(?:~|about |under )\d+(?:\.\d+)? ?min", line))
    durations = {re.sub(r"\s+", " ", d) for d in durations}
    assert durations == {"about 3 min"}, durations
