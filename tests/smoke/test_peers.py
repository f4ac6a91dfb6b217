"""The peers harness's pure parts (benchmarks/peers): run arithmetic, ratios and targets, the JSON
document's shape and its table, and the weights each tool is given. No peer is run here (they
live in their own venv, created by `make bench-peers`)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.helpers.scripts import load_script

PEERS = Path(__file__).resolve().parents[2] / "benchmarks" / "peers"


def _load(name: str):
    return load_script(PEERS / f"{name}.py", f"peers_{name}")


results = _load("results")
commands = _load("commands")


def _run(img_s: float, wall_s: float, rss: float = 100.0, acc: float = 0.5) -> dict:
    return {
        "img_s": img_s,
        "wall_s": wall_s,
        "peak_rss_mb": rss,
        "acc": acc,
        "train_s": 1.0,
        "samples": 1,
    }


def test_run_summary_counts_samples_over_epoch_seconds():
    epochs = [
        {"seconds": 2.0, "samples": 256, "steps": 2},
        {"seconds": 6.0, "samples": 768, "steps": 6},
    ]
    s = results.run_summary(epochs, wall_s=20.0, maxrss_kb=2048, acc=0.25)
    assert s == {
        "img_s": 128.0,  # 1024 images / 8 s
        "train_s": 8.0,
        "samples": 1024,
        "wall_s": 20.0,
        "peak_rss_mb": 2.0,
        "acc": 0.25,
    }


def test_combine_runs_sums_time_and_keeps_the_largest_rss():
    a = {
        "img_s": 10.0,
        "train_s": 10.0,
        "samples": 100,
        "wall_s": 30.0,
        "peak_rss_mb": 500.0,
        "acc": 0.2,
    }
    b = {
        "img_s": 30.0,
        "train_s": 10.0,
        "samples": 300,
        "wall_s": 40.0,
        "peak_rss_mb": 700.0,
        "acc": 0.4,
    }
    c = results.combine_runs([a, b])
    assert c["img_s"] == 20.0  # 400 images / 20 s, not the mean of 10 and 30
    assert c["wall_s"] == 70.0
    assert c["peak_rss_mb"] == 700.0
    assert c["acc"] == pytest.approx(0.3)
    assert c["accs"] == [0.2, 0.4]


def test_case_row_medians_ratios_and_target():
    rounds = {
        "kdlight": [_run(300, 50), _run(100, 70), _run(200, 60)],
        "timm": [_run(150, 80), _run(160, 90), _run(140, 85)],
        "torchdistill": [_run(100, 100), _run(120, 110), _run(110, 120)],
    }
    row = results.case_row("online", rounds)
    assert (
        row["kdlight_img_s"] == 200
        and row["timm_img_s"] == 150
        and row["torchdistill_img_s"] == 110
    )
    assert row["kdlight_wall_s"] == 60 and row["timm_wall_s"] == 85
    # against the faster peer: 200 / 150 img/s; 85 s / 60 s wall
    assert row["kdlight_speedup_img_s"] == pytest.approx(1.333, abs=1e-3)
    assert row["kdlight_speedup_wall"] == pytest.approx(1.417, abs=1e-3)
    assert row["target"] == {
        "ratio": "kdlight_speedup_img_s",
        "bound": 1.0,
        "value": row["kdlight_speedup_img_s"],
        "met": True,
    }
    assert len(row["kdlight_rounds"]) == 3


def test_sweep_target_is_on_wall_time_and_can_fail():
    rounds = {
        "kdlight": [_run(100, 100)],
        "timm": [_run(100, 150)],
        "torchdistill": [_run(100, 300)],
    }
    row = results.case_row("sweep4", rounds)
    assert row["target"]["value"] == 1.5 and row["target"]["met"] is False  # 150 / 100 < 2


def test_document_and_table_round_trip():
    rows = [results.case_row("online", {"kdlight": [_run(200, 60)], "timm": [_run(100, 80)]})]
    doc = results.document({"cpu_count": 2}, {"epochs": 2}, rows)
    assert set(doc) == {"machine", "settings", "cases"}
    case = doc["cases"][0]
    for key in (
        "name",
        "kdlight_img_s",
        "timm_img_s",
        "torchdistill_img_s",
        "kdlight_acc",
        "timm_acc",
        "torchdistill_acc",
    ):
        assert key in case
    table = results.markdown_table(doc)
    assert table.splitlines()[2].startswith("| online | 200.0 | 100.0 | - |")
    page = f"intro\n{results.TABLE_START}\nold table\n{results.TABLE_END}\nafter\n"
    new = results.replace_table(page, table)
    assert "old table" not in new and table in new and new.endswith("after\n")
    assert results.replace_table(new, table) == new
    with pytest.raises(ValueError, match="markers"):
        results.replace_table("no markers", table)
    # a second table of the page has its own markers; the speed table's stay as they were
    first, last = results.markers("accuracy")
    both = f"{new}{first}\nold accuracy\n{last}\n"
    acc = results.replace_table(both, "acc table", "accuracy")
    assert "old accuracy" not in acc and "acc table" in acc and table in acc


class _TagBlindLoader(yaml.SafeLoader):
    """Reads torchdistill's configs with its ``!import_call`` etc. tags as nulls (a subclass: the
    shared SafeLoader is left alone)."""


_TagBlindLoader.add_multi_constructor("!", lambda _loader, _suffix, _node: None)


def _work(tmp_path: Path):
    return commands.Work(data=tmp_path / "data", teacher_ckpt=tmp_path / "t.pt")


def _argv_value(argv: list[str], flag: str) -> str:
    return argv[argv.index(flag) + 1]


def test_each_tool_gets_the_soft_weight_in_its_own_convention(tmp_path):
    work, kd = _work(tmp_path), commands.Method("kd", alpha=0.9, temperature=4.0)
    ov = commands.kdlight_overrides(work, kd, store=None)
    assert "distill.alpha=0.9" in ov and "distill.temperature=4.0" in ov
    timm = commands.timm_command("python", work, kd, tmp_path / "r.json").argv
    assert float(_argv_value(timm, "--task-loss-weight")) == pytest.approx(0.1)  # distill = 1 - 0.1
    assert "--distill-loss-weight" not in timm
    assert float(_argv_value(timm, "--kd-temperature")) == 4.0
    # the same SGD in all three: timm's "sgd" is Nesterov's, its "momentum" the classical one
    assert _argv_value(timm, "--opt") == "momentum"
    # torchdistill's KDLoss alpha weights the CE term
    cfg = yaml.load(commands.torchdistill_yaml(work, kd), Loader=_TagBlindLoader)
    term = cfg["train"]["criterion"]["kwargs"]["sub_terms"]["kd"]
    assert term["criterion"]["kwargs"]["alpha"] == pytest.approx(0.1)
    assert term["criterion"]["kwargs"]["temperature"] == 4.0
    assert cfg["train"]["train_data_loader"]["kwargs"]["batch_size"] == 128
    assert cfg["models"]["teacher_model"]["src_ckpt"] == str(work.teacher_ckpt)


def test_every_tool_drops_the_last_smaller_training_batch(tmp_path):
    # timm's create_loader drops it in training, always; the other two are told to
    work, kd = _work(tmp_path), commands.Method()
    assert "data.drop_last=true" in commands.kdlight_overrides(work, kd, store=None)
    cfg = yaml.load(commands.torchdistill_yaml(work, kd), Loader=_TagBlindLoader)
    assert cfg["train"]["train_data_loader"]["kwargs"]["drop_last"] is True
    assert cfg["test"]["test_data_loader"]["kwargs"]["drop_last"] is False


def test_feature_case_weights_and_hooks(tmp_path):
    work, feat = _work(tmp_path), commands.Method("feature", beta=100.0)
    timm = commands.timm_command("python", work, feat, tmp_path / "r.json").argv
    assert _argv_value(timm, "--kd-distill-type") == "feature"
    assert float(_argv_value(timm, "--distill-loss-weight")) == 100.0
    cfg = yaml.load(commands.torchdistill_yaml(work, feat), Loader=_TagBlindLoader)
    terms = cfg["train"]["criterion"]["kwargs"]["sub_terms"]
    assert terms["ce"]["weight"] == 1.0 and terms["hint"]["weight"] == 100.0
    assert cfg["train"]["student"]["forward_hook"]["output"] == ["avgpool"]
    ov = commands.kdlight_overrides(work, feat, store=None)
    assert "distill.hint_layer=avgpool" in ov and "distill.beta=100.0" in ov


def test_kdlight_store_and_sweep_overrides(tmp_path):
    work, kd = _work(tmp_path), commands.Method()
    assert "teacher_store.enabled=false" in commands.kdlight_overrides(work, kd, store=None)
    with_store = commands.kdlight_overrides(work, kd, store=tmp_path / "s")
    assert (
        f"paths.store_dir={tmp_path / 's'}" in with_store
        and "teacher_store.enabled=false" not in with_store
    )
    grid = [commands.Method(alpha=a, temperature=t) for a in (0.5, 0.9) for t in (2.0, 4.0)]
    argv = commands.kdlight_command(
        "python", work, kd, tmp_path / "sw", tmp_path / "s", sweep=grid
    ).argv
    assert (
        "-m" in argv and "distill.alpha=0.5,0.9" in argv and "distill.temperature=2.0,4.0" in argv
    )
    assert not any(a.startswith("hydra.run.dir=") for a in argv)


def test_every_tool_builds_the_same_student(tmp_path):
    work, kd = _work(tmp_path), commands.Method()
    assert f"student.name={work.student}" in commands.kdlight_overrides(work, kd, store=None)
    cfg = yaml.load(commands.torchdistill_yaml(work, kd), Loader=_TagBlindLoader)
    assert cfg["models"]["student_model"]["key"] == work.student
    timm_argv = commands.timm_command("python", work, kd, tmp_path / "r.json").argv
    assert _argv_value(timm_argv, "--model") == work.timm_student
    assert float(_argv_value(timm_argv, "--drop")) == work.student_dropout
    assert "--channels-last" in timm_argv  # kdlight's image-folder default, equalised

    # timm's name and torchvision's build one network: the same parameter sizes, in order (timm's
    # head is a 1x1 conv on the pooled map where torchvision has a Linear: the same product)
    import timm
    import torchvision

    ours = torchvision.models.get_model(work.student, num_classes=work.num_classes)
    theirs = timm.create_model(work.timm_student, num_classes=work.num_classes)
    sizes = [p.numel() for p in ours.parameters()]
    assert sizes == [p.numel() for p in theirs.parameters()] and sum(sizes) == 1_528_106
    assert ours.classifier[2].p == work.student_dropout  # the dropout timm is given


def test_teacher_format_probe_prints_each_case_per_model():
    script = PEERS / "teacher_format.py"
    out = subprocess.run(
        [sys.executable, str(script), "--models", "resnet18", "--reps", "1", "--threads", "1"],
        capture_output=True, text=True, check=True, timeout=300,
    )  # fmt: skip
    ms = json.loads(out.stdout)["ms"]
    assert list(ms) == ["resnet18"]
    assert set(ms["resnet18"]) == {
        "nchw_weights_nhwc_batch", "nhwc_weights_nhwc_batch", "nchw_weights_nchw_batch"
    }  # fmt: skip
    assert all(v > 0 for v in ms["resnet18"].values())


def test_kdlight_tests_the_student_only_as_the_peers(tmp_path):
    # kdlight's default test pass also runs the teacher for test/agreement; the peers' do not
    ov = commands.kdlight_overrides(_work(tmp_path), commands.Method(), store=None)
    assert "module.log_agreement=false" in ov


def test_a_zero_init_residual_teacher_starts_each_blocks_last_bn_at_zero(tmp_path):
    import torch

    prepare = _load("prepare")
    plain = prepare.teacher(tmp_path / "plain.pt", "resnet18")
    zir = prepare.teacher(tmp_path / "zir.pt", "resnet18", zero_init_residual=True)
    a, b = torch.load(plain, weights_only=True), torch.load(zir, weights_only=True)
    assert a.keys() == b.keys()
    last_bns = [k for k in b if k.endswith("bn2.weight") and k.startswith("layer")]
    assert len(last_bns) == 8 and all(not b[k].any() and a[k].all() for k in last_bns)
    assert torch.equal(a["conv1.weight"], b["conv1.weight"])  # the same seed's draws otherwise
