"""benchmarks/cpu_table.sh: every row of every CPU-scale table is a config kdlight composes, each
table has its student alone and KD rows, and the method rows are the methods they are named for.
Nothing is trained (``LIST=1`` prints the rows; the configs are composed in this process)."""

from __future__ import annotations

import shlex
import subprocess
from pathlib import Path

import pytest

from kdlight.cli.train import without_method
from kdlight.config import compose
from kdlight.run.hparams import method_name
from tests.helpers.scripts import load_script

ROOT = Path(__file__).resolve().parents[2]
TABLES = ("fidelity", "methods3", "methods3_resnet8", "deit", "vit")


def rows(table: str) -> dict[str, list[str]]:
    out = subprocess.run(
        ["bash", str(ROOT / "benchmarks" / "cpu_table.sh"), table],
        env={"LIST": "1", "PATH": "/usr/bin:/bin"},
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    return {
        name: shlex.split(args)
        for name, args in (line.split("\t") for line in out.stdout.splitlines())
    }


@pytest.mark.parametrize("table", TABLES)
def test_every_row_composes_and_names_its_method(table):
    found = rows(table)
    assert list(found)[:2] == ["alone", "kd"], found
    students = set()
    for name, args in found.items():
        cfg = compose(without_method(args))
        students.add(cfg.student._target_ + str(cfg.student.get("name", "")))
        method = "none" if cfg.get("distill") is None else method_name(cfg.distill._target_)
        if name.startswith("alone"):
            assert method == "none", (name, method)
        elif name in ("kd", "kd_ls", "kd_sgd", "fitnets_one_stage", "ab_carry"):
            assert method == name.split("_")[0], (name, method)
        else:
            assert method == name, (name, method)
    assert len(students) == 1, students  # one student per table: the rows compare methods


def test_dot_rows_share_one_sgd():
    # DOT is an optimizer: it is compared with the student alone and its base KD under its SGD
    found = rows("methods3")
    optims = {
        n: compose(without_method(found[n])).module.optimizer
        for n in ("alone_sgd", "kd_sgd", "dot")
    }
    assert all(o._target_ == "torch.optim.SGD" for o in optims.values())
    assert len({(o.lr, o.momentum, o.weight_decay) for o in optims.values()}) == 1, optims


def test_ab_carry_differs_from_ab_only_in_the_optimizer_restart():
    found = rows("methods3")
    ab, carry = compose(found["ab"]).distill, compose(found["ab_carry"]).distill
    assert ab.fresh_optimizer is True and carry.fresh_optimizer is False
    assert {**ab, "fresh_optimizer": False} == {**carry}


def test_an_unknown_table_is_one_sentence_and_exit_2():
    out = subprocess.run(
        ["bash", str(ROOT / "benchmarks" / "cpu_table.sh"), "nope"], capture_output=True, text=True
    )
    assert out.returncode == 2 and "valid: fidelity" in out.stderr


def test_rows_served_from_the_fidelity_records_run_the_same_command():
    # methods3 takes its "alone" and "kd" records from the fidelity table: only sound if the
    # commands are identical
    script = (ROOT / "benchmarks" / "cpu_table.sh").read_text()
    fidelity, methods3 = rows("fidelity"), rows("methods3")
    shared = script.split('SHARED_ROWS="', 1)[1].split('"', 1)[0].split()
    assert shared == ["alone", "kd"]
    for name in shared:
        assert methods3[name] == fidelity[name], name


def _summary_module():
    return load_script(ROOT / "benchmarks" / "cpu_table_md.py", "cpu_table_md")


def _record(folder: Path, best: float, last: float, status: str = "finished") -> None:
    import json

    folder.mkdir(parents=True)
    record = {"status": status, "test/acc_best": best, "test/acc_last": last}
    (folder / "metrics.json").write_text(json.dumps(record))


def test_the_summary_table_is_computed_from_the_records(tmp_path):
    md = _summary_module()
    runs = tmp_path / "runs"
    _record(runs / "alone" / "seed1", 0.60, 0.59)
    _record(runs / "alone" / "seed2", 0.62, 0.61)
    _record(runs / "kd" / "seed1", 0.65, 0.64)
    _record(runs / "at" / "seed1", 0.70, 0.50)
    _record(runs / "at" / "seed2", 0.10, 0.10, status="running")  # not counted
    lines = md.render(runs).splitlines()
    assert (
        lines[0]
        == "| row | seeds | test acc, val-best ckpt | test acc, last ckpt | Δ vs alone | Δ vs kd |"
    )
    # alone: mean 61, sample std of (60, 62) = 1.414
    assert lines[2] == "| student alone | 1, 2 | 61.00 ± 1.41 | 60.00 ± 1.41 | +0.00 | -4.00 |"
    assert lines[3] == "| `kd` | 1 | 65.00 | 64.00 | +4.00 | +0.00 |"
    assert lines[4] == "| `at` | 1 | 70.00 | 50.00 | +9.00 | +5.00 |"
    with pytest.raises(SystemExit, match="no finished run records"):
        md.render(tmp_path / "empty")


def test_the_summary_puts_a_rows_note_beside_it_and_refuses_notes_without_a_row(tmp_path):
    import json

    md = _summary_module()
    runs = tmp_path / "runs"
    _record(runs / "alone" / "seed1", 0.60, 0.59)
    _record(runs / "at" / "seed1", 0.50, 0.50)
    (tmp_path / "notes.json").write_text(json.dumps({"at": "feature term 2.4x the CE"}))
    lines = md.render(runs).splitlines()
    assert lines[0].endswith("| Δ vs alone | note |") and lines[1].endswith("---:|---|")
    assert lines[2].endswith("| +0.00 |  |")
    assert lines[3] == "| `at` | 1 | 50.00 | 50.00 | -10.00 | feature term 2.4x the CE |"
    (tmp_path / "notes.json").write_text(json.dumps({"nst": "x"}))
    with pytest.raises(SystemExit, match=r"rows without records: \['nst'\]"):
        md.render(runs)
