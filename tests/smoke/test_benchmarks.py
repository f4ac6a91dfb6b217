"""The speed benchmark runs end to end in its tiny mode and prints one valid JSON document (no timing checks)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "bench_kd.py"


@pytest.fixture(scope="module")
def quick_report(tiny_data_dir, tmp_path_factory) -> tuple[dict, Path]:
    work = tmp_path_factory.mktemp("bench")
    out = work / "bench.json"
    cmd = [sys.executable, str(SCRIPT), "--quick", "--batch-size", "16", "--cifar-steps", "2"]
    cmd += ["--repeat", "2"]  # the targets' runs in two rounds
    # --work-dir relative to where the benchmark starts, as users type it
    cmd += ["--data-dir", str(tiny_data_dir), "--work-dir", "runs", "--output", str(out)]
    proc = subprocess.run(cmd, cwd=work, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-4000:]
    doc = json.loads(proc.stdout)  # stdout holds the JSON document and nothing else
    assert json.loads(out.read_text()) == doc
    return doc, work


def _runs(case: dict) -> dict[str, dict]:
    return case["runs"]


def test_report_has_every_case_and_the_machine(quick_report):
    doc, _ = quick_report
    assert doc["quick"] is True
    assert set(doc["cases"]) == {"fmnist_mlp", "cifar_resnet18_cnn", "sweep10", "fixed_cost"}
    assert doc["machine"]["cpu_count"] >= 1
    for case in doc["cases"].values():
        assert case["device"] == "cpu"
        assert case["torch_threads"] >= 1
        assert case["batch_size"] == 16
        assert case["ratios"]


@pytest.mark.parametrize("name", ["fmnist_mlp", "cifar_resnet18_cnn"])
def test_every_run_is_reported_against_the_bare_loop_and_the_targets(quick_report, name):
    case = quick_report[0]["cases"][name]
    others = set(case["runs"]) - {"bare_limit"}
    assert set(case["to_limit"]) == {f"{r}_over_bare_limit" for r in others}
    assert all(v > 0 for v in case["to_limit"].values())
    for target in case["targets"].values():
        assert target["ratio"] > 0 and isinstance(target["met"], bool)


@pytest.mark.parametrize("name", ["fmnist_mlp", "cifar_resnet18_cnn"])
def test_repeat_reports_every_round_and_the_median_round(quick_report, name):
    case = quick_report[0]["cases"][name]
    repeated = {n: r for n, r in case["runs"].items() if "repeats_samples_per_s" in r}
    assert {"bare_limit", "kdlight_store_warm"} <= set(repeated)
    for run in repeated.values():
        rounds = run["repeats_samples_per_s"]
        assert len(rounds) == 2
        assert run["samples_per_s"] == min(rounds)  # the lower middle of two
    for target in case["targets"].values():
        assert len(target["per_round"]) == 2 and all(r > 0 for r in target["per_round"])
        # the typical step's ratio too, from each round's median step interval
        assert len(target["step_median_per_round"]) == 2 and target["step_median_ratio"] > 0
    for run in repeated.values():
        assert len(run["repeats_step_ms_median"]) == 2 and run["step_ms_median"] > 0


def test_step_intervals_and_the_step_median_ratio(monkeypatch):
    monkeypatch.syspath_prepend(str(SCRIPT.parent))
    from kd import harness

    # starts at 0, 1, 3 and the epoch's end at 6: intervals 1, 2, 3
    assert harness.step_intervals([0.0, 1.0, 3.0], 6.0) == [1.0, 2.0, 3.0]
    summary = harness.epochs_summary(
        [{"samples": 3, "seconds": 6.0, "steps": 3, "step_intervals": [1.0, 2.0, 3.0]}]
    )
    assert summary["step_ms_median"] == 2000.0
    # kdlight's steps take 4 and 5 ms in two rounds, the bare loop's 2 and 3: medians 4.5 and 2.5
    kd = {"step_ms_median": 4.0, "repeats_step_ms_median": [4.0, 5.0]}
    bare = {"step_ms_median": 2.0, "repeats_step_ms_median": [2.0, 3.0]}
    assert harness.step_median_ratio(kd, bare) == {
        "step_median_ratio": round(2.5 / 4.5, 4),
        "step_median_per_round": [0.5, 0.6],
    }
    assert harness.step_median_ratio({"step_ms_median": None}, bare) == {}


def test_repeated_rounds_rotate_and_pick_the_median(monkeypatch):
    monkeypatch.syspath_prepend(str(SCRIPT.parent))
    from kd import harness

    calls, speeds = [], {"a": iter([3.0, 1.0, 2.0]), "b": iter([5.0, 6.0, 4.0])}

    def run(name):
        def f():
            calls.append(name)
            return {"samples_per_s": next(speeds[name]), "round": len(calls)}

        return f

    out = harness.repeated({"a": run("a"), "b": run("b")}, 3)
    assert calls == ["a", "b", "b", "a", "a", "b"]  # round 2 starts with b
    assert out["a"]["samples_per_s"] == 2.0 and out["a"]["repeats_samples_per_s"] == [3.0, 1.0, 2.0]
    assert out["b"]["samples_per_s"] == 5.0 and out["b"]["round"] == 2
    assert harness.per_round(out, "a", "b") == [0.6, round(1 / 6, 4), 0.5]
    speeds["a"] = iter([7.0])
    single = harness.repeated({"a": run("a")}, 1)
    assert "repeats_samples_per_s" not in single["a"]


def test_fmnist_runs_train_the_same_samples_and_the_warm_store_computes_nothing(quick_report):
    case = quick_report[0]["cases"]["fmnist_mlp"]
    runs = _runs(case)
    assert set(runs) == {
        "bare_limit",
        "expert_kd_online",
        "plain_loop",
        "kdlight_online",
        "kdlight_store_cold",
        "kdlight_store_warm",
        "kdlight_student_alone",
    }
    for run in runs.values():
        assert run["samples_per_epoch"] == [case["train_samples"]] * case["epochs"]
        assert run["samples_per_s"] > 0
    assert runs["kdlight_store_cold"]["store_views_computed"] == 1
    assert runs["kdlight_store_warm"]["store_views_computed"] == 0
    assert "store_s" not in runs["kdlight_online"]
    assert case["ratios"]["kd_warm_epoch_over_student_epoch"] > 0


def test_cifar_runs_take_the_asked_steps_on_the_same_subset(quick_report):
    case = quick_report[0]["cases"]["cifar_resnet18_cnn"]
    runs = _runs(case)
    assert case["steps"] == 2
    assert case["train_samples"] == 2 * 16
    for run in runs.values():
        assert run["steps"] == 2
        assert run["samples"] == case["train_samples"]
    assert runs["kdlight_store_cold"]["store_views_computed"] == 1
    assert runs["kdlight_store_warm"]["store_views_computed"] == 0


def test_sweep_runs_share_one_store_fill(quick_report):
    case = quick_report[0]["cases"]["sweep10"]
    assert case["runs"] == len(case["kdlight"]["per_run"]) == 2
    assert case["kdlight"]["store_views_computed"] == 1
    assert case["plain_loop"]["extrapolated"] is False
    assert case["plain_loop"]["measured_runs"] == 2
    assert {(r["alpha"], r["T"]) for r in case["kdlight"]["per_run"]} == {
        (g["alpha"], g["T"]) for g in case["grid"]
    }
    assert case["ratios"]["plain_seconds_over_kdlight_seconds"] > 0
    assert case["bound"]["teacher_pass_s"] > 0 and case["bound"]["bare_student_run"]["steps"] > 0
    assert case["targets"]["kdlight_seconds_over_bound"]["ratio"] > 0


def test_fixed_cost_times_the_start_up_and_the_work_between_epochs(quick_report):
    case = quick_report[0]["cases"]["fixed_cost"]
    fdr = case["runs"]["fdr"]
    assert 0 < fdr["to_first_step_s"] < fdr["wall_s"]
    small = case["runs"]["small_epochs"]
    assert small["epochs"] == 2
    assert len(small["outside_steps_s_per_epoch"]) == 2
    assert all(s > 0 for s in small["outside_steps_s_per_epoch"])  # validation + checkpoints


def test_unknown_case_is_refused():
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--cases", "fmnist_mlp,nope"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2
    assert "nope" in proc.stderr
    assert proc.stdout == ""


def test_a_failing_case_keeps_the_others_and_exits_non_zero(tmp_path, monkeypatch, capsys):
    monkeypatch.syspath_prepend(str(SCRIPT.parent))
    from kd import cli

    monkeypatch.setattr(cli, "quiet", lambda: None)  # keep this process's log levels

    def boom(o, work):
        raise RuntimeError("the data is not there")

    monkeypatch.setitem(cli.CASE_FUNCS, "fmnist_mlp", boom)
    monkeypatch.setitem(cli.CASE_FUNCS, "sweep10", lambda o, work: {"ran": True})
    rc = cli.main(["--quick", "--cases", "fmnist_mlp,sweep10", "--work-dir", str(tmp_path)])
    doc = json.loads(capsys.readouterr().out)
    assert rc == 1 and doc["failed_cases"] == ["fmnist_mlp"]
    assert doc["cases"]["fmnist_mlp"]["error"] == "RuntimeError: the data is not there"
    assert doc["cases"]["sweep10"]["ran"] is True
