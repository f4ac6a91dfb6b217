"""kdlight.reporting on synthetic run folders whose metrics (and so means and stds) are known."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import pytest

from kdlight.cli.report import main as report_main
from kdlight.errors import KdlightError
from kdlight.reporting import plots
from kdlight.reporting.collect import find_run_dirs, read_run
from kdlight.reporting.figures import MAX_GRID, choose_axes
from kdlight.reporting.report import build_report
from kdlight.reporting.table import mean_std, teachers_of
from tests.helpers.runs import write_run as write_run_folder

BASE = {
    "experiment": "fmnist_mlp_kd",
    "data": "fashion_mnist",
    "student": "MLP-800-800",
    "lr": 0.01,
}
KD = {**BASE, "method": "kd", "teacher": "MLP-1200-1200", "reduction": "batchmean"}


def write_run(
    root: Path,
    name: str,
    hparams: dict | None,
    metrics: dict | None = None,
    status: str = "finished",
    error: str | None = None,
    overrides: list[str] | None = None,
) -> Path:
    body = None
    if hparams is not None:
        body = {"status": status, "hparams": hparams, **(metrics or {})}
        if error is not None:
            body["error"] = error
    config = "name: fmnist_mlp_kd\nseed: 7\n" if overrides is not None else None
    return write_run_folder(root / name, config, metrics=body, overrides=overrides)


def acc(best: float, last: float | None = None, val: float | None = None) -> dict:
    return {
        "test/acc_best": best,
        "test/acc_last": best if last is None else last,
        "val/acc_best": best if val is None else val,
    }


@pytest.fixture(autouse=True)
def no_rendering(request, monkeypatch):
    """Figures are built but not rendered (slow); tests asking for ``render`` write real PNGs."""
    if "render" in request.fixturenames:
        return

    def fake_save(fig, path):
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"not rendered")
        return path

    monkeypatch.setattr(plots, "save", fake_save)


@pytest.fixture
def render():
    """Request real PNG rendering in a test."""


@pytest.fixture
def sweep(tmp_path) -> Path:
    """A multirun: baseline x2 seeds, alpha 0.5 / T 2 x3 seeds, three single-seed cells, one failure,
    one run still running and one that died before writing metrics."""
    root = tmp_path / "multirun"
    base = {**BASE, "method": "none"}
    write_run(root, "0", {**base, "seed": 1}, acc(0.90, 0.89, 0.91))
    write_run(root, "1", {**base, "seed": 2}, acc(0.92, 0.93, 0.95))
    for job, (seed, best) in enumerate([(1, 0.93), (2, 0.95), (3, 0.94)], start=2):
        write_run(root, str(job), {**KD, "alpha": 0.5, "temperature": 2.0, "seed": seed}, acc(best))
    write_run(root, "5", {**KD, "alpha": 0.9, "temperature": 2.0, "seed": 1}, acc(0.96, 0.95, 0.97))
    write_run(root, "6", {**KD, "alpha": 0.5, "temperature": 4.0, "seed": 1}, acc(0.91))
    write_run(root, "7", {**KD, "alpha": 0.9, "temperature": 4.0, "seed": 1}, acc(0.92))
    write_run(
        root,
        "8",
        {**KD, "alpha": 0.9, "temperature": 4.0, "seed": 2},
        None,
        status="failed",
        error="the training loss became nan at global step 12 (epoch 0); lower module.optimizer.lr",
    )
    write_run(
        root, "9", {**KD, "alpha": 0.9, "temperature": 2.0, "seed": 2}, None, status="running"
    )
    write_run(root, "10", None, overrides=["+experiment=fmnist_mlp_kd", "distill.alpha=0.7"])
    return root


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_rows_hold_hand_computed_means_and_sample_stds(sweep):
    rep = build_report(sweep)
    rows = read_csv(sweep / "results.csv")
    assert len(rows) == 5  # baseline, (0.5, 2), (0.5, 4), (0.9, 2), (0.9, 4)
    assert [r["method"] for r in rows][:1] == ["none"]  # baselines first
    baseline = rows[0]
    assert baseline["n_seeds"] == "2" and baseline["alpha"] == ""
    # test/acc_best 0.90, 0.92: mean 0.91, sample std sqrt((0.01^2 + 0.01^2) / 1) = 0.0141421
    assert float(baseline["test/acc_best_mean"]) == pytest.approx(0.91)
    assert float(baseline["test/acc_best_std"]) == pytest.approx(0.0141421356, rel=1e-6)
    # test/acc_last 0.89, 0.93: mean 0.91, std sqrt(2 * 0.02^2) = 0.0282843
    assert float(baseline["test/acc_last_std"]) == pytest.approx(0.0282842712, rel=1e-6)
    # val/acc_best 0.91, 0.95: mean 0.93
    assert float(baseline["val/acc_best_mean"]) == pytest.approx(0.93)
    kd = next(r for r in rows if r["alpha"] == "0.5" and float(r["temperature"]) == 2)
    # 0.93, 0.95, 0.94: mean 0.94, deviations -0.01, 0.01, 0 -> std sqrt(0.0002 / 2) = 0.01
    assert kd["n_seeds"] == "3" and kd["seeds"] == "1 2 3"
    assert float(kd["test/acc_best_mean"]) == pytest.approx(0.94)
    assert float(kd["test/acc_best_std"]) == pytest.approx(0.01)
    single = next(r for r in rows if r["alpha"] == "0.9" and float(r["temperature"]) == 2)
    assert single["n_seeds"] == "1" and single["test/acc_best_std"] == ""  # one seed: no std
    assert list(rows[0])[:5] == ["method", "teacher", "alpha", "temperature", "reduction"]
    assert rep.shared == {
        "experiment": "fmnist_mlp_kd",
        "data": "fashion_mnist",
        "student": "MLP-800-800",
        "lr": 0.01,
    }


def test_markdown_shows_percent_and_lists_failed_and_unfinished_runs(sweep):
    build_report(sweep)
    md = (sweep / "report.md").read_text()
    assert (
        "11 runs: 8 finished, 1 failed, 1 running or killed, 1 without metrics; 5 configurations."
        in md
    )
    assert "| 94.00 ± 1.00 |" in md  # alpha 0.5, T 2
    assert "| 91.00 ± 1.41 | 91.00 ± 2.83 | 93.00 ± 2.83 |" in md  # the baseline row
    assert "| **0.9** | **2** |" in md  # best mean validation accuracy (0.97) is bold
    failed = md.split("## Failed runs")[1].split("##")[0]
    assert "| 8 | 2 |" in failed and "the training loss became nan at global step 12" in failed
    unfinished = md.split("## Runs without final metrics")[1]
    assert "| 9 | running or killed | 2 |" in unfinished
    assert "| 10 | no metrics | 7 |" in unfinished and "distill.alpha=0.7" in unfinished
    assert "![heatmap_alpha_T](heatmap_alpha_T.png)" in md


def test_figures_are_written_for_an_alpha_t_grid(sweep, tmp_path, render):
    out = tmp_path / "out"
    rep = build_report(sweep, out)
    assert sorted(p.name for p in rep.figures) == ["accuracy_vs_T.png", "heatmap_alpha_T.png"]
    for p in rep.figures:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out / "report.md").is_file() and (out / "results.csv").is_file()
    assert not (sweep / "report.md").exists()


def test_one_heat_map_per_value_of_another_varying_hparam(tmp_path):
    for job, (lr, a, t) in enumerate(
        [(lr, a, t) for lr in (0.01, 0.1) for a in (0.5, 0.9) for t in (2, 4)]
    ):
        write_run(
            tmp_path,
            str(job),
            {**KD, "lr": lr, "alpha": a, "temperature": t, "seed": 0},
            acc(0.5 + job / 100),
        )
    rep = build_report(tmp_path)
    names = sorted(p.name for p in rep.figures)
    assert names == [
        "accuracy_vs_T__lr=0.01.png",
        "accuracy_vs_T__lr=0.1.png",
        "heatmap_alpha_T__lr=0.01.png",
        "heatmap_alpha_T__lr=0.1.png",
    ]
    assert rep.columns == ["lr", "alpha", "temperature"]


def test_one_swept_hparam_gives_a_curve_and_no_heat_map(tmp_path):
    write_run(tmp_path, "0", {**KD, "alpha": 0.5, "temperature": 2, "seed": 0}, acc(0.8))
    write_run(tmp_path, "1", {**KD, "alpha": 0.9, "temperature": 2, "seed": 0}, acc(0.9))
    rep = build_report(tmp_path)
    assert [p.name for p in rep.figures] == ["accuracy_vs_alpha.png"] and len(rep.rows) == 2


def test_no_figures_without_a_grid(tmp_path):
    for i in range(MAX := MAX_GRID + 1):  # optuna-like: every run its own values
        hp = {**KD, "alpha": 0.3 + 0.01 * i, "temperature": 2 + i, "seed": 0}
        write_run(tmp_path, str(i), hp, acc(0.8))
    rep = build_report(tmp_path)
    assert rep.figures == [] and len(rep.rows) == MAX
    assert "No figures" in (tmp_path / "report.md").read_text()


def test_figures_for_any_two_swept_method_hparams(tmp_path):
    # a DKD sweep: alpha x beta vary (T fixed), lr varies too but is a general key: it groups
    dkd = {**BASE, "method": "dkd", "teacher": "MLP-1200-1200", "temperature": 4.0}
    i = 0
    for lr in (0.01, 0.1):
        for alpha in (0.5, 1.0):
            for beta in (2.0, 8.0):
                hp = {**dkd, "lr": lr, "alpha": alpha, "beta": beta, "seed": 0}
                write_run(tmp_path, str(i), hp, acc(0.5 + alpha / 10 + beta / 100))
                i += 1
    rep = build_report(tmp_path)
    assert choose_axes(rep.rows) == ("beta", "alpha")
    assert sorted(p.name for p in rep.figures) == [
        "accuracy_vs_beta__lr=0.01.png",
        "accuracy_vs_beta__lr=0.1.png",
        "heatmap_alpha_beta__lr=0.01.png",
        "heatmap_alpha_beta__lr=0.1.png",
    ]
    # --axes chooses them explicitly (Y,X)
    rep = build_report(tmp_path, tmp_path / "out", axes=["beta", "alpha"])
    assert "heatmap_beta_alpha__lr=0.01.png" in {p.name for p in rep.figures}
    with pytest.raises(KdlightError, match="'gamma'"):
        build_report(tmp_path, tmp_path / "out2", axes=["gamma", "alpha"])


def test_runs_are_found_at_any_depth_and_sorted_naturally(tmp_path):
    for job in (10, 9, 2):
        write_run(
            tmp_path / "a" / "multiruns" / "t",
            str(job),
            {**KD, "alpha": 0.5, "temperature": 2, "seed": job},
            acc(0.9),
        )
    dirs = find_run_dirs(tmp_path)
    assert [d.name for d in dirs] == ["2", "9", "10"]
    assert read_run(dirs[0]).seed == 2


def test_a_single_run_folder_is_a_report_of_one(tmp_path):
    run = write_run(tmp_path, "run", {**KD, "alpha": 0.5, "temperature": 2, "seed": 0}, acc(0.9))
    rep = build_report(run)
    assert len(rep.rows) == 1 and rep.columns == ["experiment"]


def test_mean_std_is_the_sample_std():
    st = mean_std([1.0, 2.0, 3.0, 4.0])
    assert st.mean == 2.5 and st.n == 4
    assert st.std == pytest.approx(math.sqrt(5 / 3))  # sum of squares 5, n - 1 = 3
    assert mean_std([0.7]).std is None
    assert mean_std([None, float("nan")]).mean is None


def test_unreadable_metrics_are_listed(tmp_path):
    write_run(tmp_path, "ok", {**KD, "alpha": 0.5, "temperature": 2, "seed": 0}, acc(0.9))
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "metrics.json").write_text("{not json")
    rep = build_report(tmp_path)
    assert [r.status for r in rep.runs] == ["unreadable", "finished"]
    assert "| bad | unreadable: metrics.json:" in (tmp_path / "report.md").read_text()


def test_cli_writes_the_report_and_exits_0(sweep, tmp_path, capsys):
    assert report_main([str(sweep), "--out", str(tmp_path / "o")]) == 0
    assert "11 runs (8 finished, 1 failed), 5 configurations" in capsys.readouterr().out
    assert (tmp_path / "o" / "results.csv").is_file()


@pytest.mark.parametrize("make", ["missing", "empty"])
def test_cli_says_one_sentence_and_exits_2_without_runs(tmp_path, capsys, make):
    target = tmp_path / "nothing"
    if make == "empty":
        (target / "sub").mkdir(parents=True)
    with pytest.raises(SystemExit) as exc:
        report_main([str(target)])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and len(err.splitlines()) == 1
    assert ("does not exist" if make == "missing" else "no runs found") in err


def test_teachers_are_listed_once_with_their_accuracy_and_drawn(tmp_path, render):
    teacher = {"teacher/source": "/store/teachers/abc/teacher.pt", "teacher/test_acc": 0.8706}
    teacher["teacher/val_acc"] = 0.8808
    for i, (alpha, t) in enumerate([(0.5, 2.0), (0.5, 5.0), (0.9, 2.0), (0.9, 5.0)]):
        hp = {**KD, "alpha": alpha, "temperature": t, "seed": 1}
        write_run(tmp_path / "runs", str(i), hp, {**acc(0.88), **teacher})
    write_run(tmp_path / "runs", "base", {**BASE, "method": "none", "seed": 1}, acc(0.885))
    rep = build_report(tmp_path / "runs", tmp_path / "out")
    [t] = teachers_of(rep.runs)
    assert (t.name, t.test_acc, t.val_acc, t.runs) == ("MLP-1200-1200", 0.8706, 0.8808, 4)
    text = (tmp_path / "out" / "report.md").read_text()
    assert "## Teachers" in text
    assert "| MLP-1200-1200 | `/store/teachers/abc/teacher.pt` | 87.06 | 88.08 | 4 |" in text
    assert (tmp_path / "out" / "accuracy_vs_T.png").stat().st_size > 0


def test_two_trainings_of_one_teacher_are_two_teachers(tmp_path):
    # records gathered on two machines: the same store path, two trainings of the teacher
    path = {"teacher/source": "/store/teachers/abc/teacher.pt"}
    first = {**path, "teacher/test_acc": 0.7772, "teacher/val_acc": 0.7822}
    second = {**path, "teacher/test_acc": 0.7751, "teacher/val_acc": 0.7830}
    for seed, teacher in [(1, first), (2, first), (3, second)]:
        write_run(tmp_path, f"s{seed}", {**KD, "seed": seed}, {**acc(0.8), **teacher})
    rep = build_report(tmp_path, tmp_path / "out")
    teachers = teachers_of(rep.runs)
    assert [(t.test_acc, t.runs) for t in teachers] == [(0.7772, 2), (0.7751, 1)]
    text = (tmp_path / "out" / "report.md").read_text()
    assert "| 77.72 | 78.22 | 2 |" in text and "| 77.51 | 78.30 | 1 |" in text


def test_no_teacher_section_without_distillation_runs(tmp_path):
    write_run(tmp_path / "runs", "base", {**BASE, "method": "none", "seed": 1}, acc(0.885))
    rep = build_report(tmp_path / "runs", tmp_path / "out")
    assert teachers_of(rep.runs) == []
    assert "## Teachers" not in (tmp_path / "out" / "report.md").read_text()


def test_a_method_comparison_draws_methods_side_by_side(tmp_path):
    write_run(tmp_path, "b", {**BASE, "method": "none", "seed": 0}, acc(0.6))
    for i, (method, extra) in enumerate(
        [("kd", {"alpha": 0.9}), ("dkd", {"beta": 8.0}), ("dist", {})]
    ):
        for seed in (0, 1):
            hp = {
                **BASE,
                "method": method,
                "teacher": "T",
                "temperature": 4.0,
                **extra,
                "seed": seed,
            }
            write_run(tmp_path, f"{i}-{seed}", hp, acc(0.7 + i / 100 + seed / 1000))
    rep = build_report(tmp_path)
    assert [p.name for p in rep.figures] == ["methods.png"]


def test_wall_time_per_configuration_and_store_served_apart_from_online(tmp_path):
    """Runs served from the store and run online are two rows, each with its wall time."""
    root = tmp_path / "runs"
    served = {**KD, "teacher_store": True}
    online = {**KD, "teacher_store": False}
    write_run(root, "a", {**served, "seed": 1}, {**acc(0.90), "wall_s": 300.0})
    write_run(root, "b", {**served, "seed": 2}, {**acc(0.92), "wall_s": 420.0})
    write_run(root, "c", {**online, "seed": 1}, {**acc(0.89), "wall_s": 540.0})
    write_run(root, "d", {**online, "seed": 2}, acc(0.89))  # an old run without wall_s
    build_report(root)
    rows = {r["teacher_store"]: r for r in read_csv(root / "results.csv")}  # "true" / "false"
    # 300 and 420 s: mean 360, sample std sqrt((60^2 + 60^2) / 1) = 84.8528
    assert float(rows["true"]["wall_s_mean"]) == pytest.approx(360.0)
    assert float(rows["true"]["wall_s_std"]) == pytest.approx(84.85281374, rel=1e-6)
    assert float(rows["false"]["wall_s_mean"]) == 540.0 and rows["false"]["wall_s_std"] == ""
    text = (root / "report.md").read_text()
    assert "wall time per run (min)" in text
    # minutes, as the table shows them (the served row has the best val acc: bold)
    assert "| **6.0 ± 1.4** |" in text and "| 9.0 |" in text


def _comparison(root: Path) -> None:
    """The student alone (seeds 0.60, 0.62), KD (0.70, 0.72), KD + LS (0.66) and DKD (0.65)."""
    for seed, best in ((1, 0.60), (2, 0.62)):
        write_run(root, f"alone-{seed}", {**BASE, "method": "none", "seed": seed}, acc(best))
    for seed, best in ((1, 0.70), (2, 0.72)):
        hp = {**KD, "logit_standardization": False, "seed": seed}
        write_run(root, f"kd-{seed}", hp, acc(best))
    write_run(root, "ls", {**KD, "logit_standardization": True, "seed": 1}, acc(0.66))
    write_run(root, "dkd", {**KD, "method": "dkd", "beta": 8.0, "seed": 1}, acc(0.65))


def test_deltas_against_the_student_alone_and_a_selected_row(tmp_path):
    root = tmp_path / "runs"
    _comparison(root)
    rep = build_report(root, versus=["method=kd,logit_standardization=false"])
    assert [label for label, _ in rep.references] == [
        "alone",
        "method=kd,logit_standardization=false",
    ]
    rows = read_csv(root / "results.csv")
    by = {(r["method"], r["logit_standardization"]): r for r in rows}
    # hand-computed: means alone 0.61, kd 0.71; ls 0.66 - 0.61 = +0.05, 0.66 - 0.71 = -0.05
    ls = by[("kd", "true")]
    assert float(ls["delta_vs_alone"]) == pytest.approx(0.05)
    assert float(ls["delta_vs_method=kd,logit_standardization=false"]) == pytest.approx(-0.05)
    assert float(by[("dkd", "")]["delta_vs_alone"]) == pytest.approx(0.04)
    assert float(by[("none", "")]["delta_vs_alone"]) == 0.0
    text = (root / "report.md").read_text()
    assert "Δ vs alone" in text and "| +5.00 | -5.00 |" in text


def test_a_versus_selector_must_match_one_row(tmp_path, capsys):
    root = tmp_path / "runs"
    _comparison(root)
    with pytest.raises(KdlightError, match=r"--versus method=kd matches 2 configurations"):
        build_report(root, tmp_path / "out", versus=["method=kd"])
    assert not (tmp_path / "out").exists()  # refused before anything is written
    with pytest.raises(SystemExit) as exit_info:
        report_main([str(root), "--versus", "method"])
    assert exit_info.value.code == 2
    assert "--versus method is not a selector" in capsys.readouterr().err


def test_no_delta_columns_without_a_student_alone_row(tmp_path):
    write_run(tmp_path, "a", {**KD, "seed": 1}, acc(0.7))
    rep = build_report(tmp_path)
    assert rep.references == []
    assert "delta_vs" not in (tmp_path / "results.csv").read_text()
