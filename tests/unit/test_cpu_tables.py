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
        if name == "alone":
            assert method == "none", (name, method)
        elif name in ("kd", "kd_ls", "fitnets_one_stage"):
            assert method == name.split("_")[0], (name, method)
        else:
            assert method == name, (name, method)
    assert len(students) == 1, students  # one student per table: the rows compare methods


def test_an_unknown_table_is_one_sentence_and_exit_2():
    out = subprocess.run(
        ["bash", str(ROOT / "benchmarks" / "cpu_table.sh"), "nope"], capture_output=True, text=True
    )
    assert out.returncode == 2 and "valid: fidelity" in out.stderr
