"""``kdlight list``: every config of a group, with the first sentence of its opening comment."""

from __future__ import annotations

from pathlib import Path

import pytest

from kdlight.cli.listing import KINDS, choices, describe, main, markdown_table
from kdlight.config import CONFIG_DIR

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("# @package _global_\n# The teacher alone. Trained once.\nfoo: 1\n", "The teacher alone"),
        (
            "# Hinton KD (Hinton et al. 2015):\n# L = a + b\n_target_: x\n",
            "Hinton KD (Hinton et al. 2015)",
        ),
        ("# CIFAR-100 KD: resnet110 -> resnet32\n", "CIFAR-100 KD: resnet110 -> resnet32"),
        (
            "# A method (Tian et al., ICLR 2020): linear heads, memory banks\n",
            "A method (Tian et al., ICLR 2020)",
        ),
        ("# Two lines that form\n# one sentence. Then more.\n", "Two lines that form one sentence"),
        ("_target_: x  # no opening comment\n", ""),
    ],
)
def test_describe_takes_the_first_sentence_of_the_opening_comment(tmp_path, text, expected):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    assert describe(path) == expected


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_every_config_of_the_group_is_listed_once(kind):
    group = Path(CONFIG_DIR) / KINDS[kind][0]
    names = [name for name, _ in choices(kind)]
    assert names == sorted(p.stem for p in group.glob("*.yaml"))


def test_every_method_says_what_it_is():
    assert all(text for _, text in choices("methods"))


def test_markdown_table_names_the_override(capsys):
    assert main(["methods", "--markdown"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[:2] == ["| choice | description |", "|---|---|"]
    assert "| `distill=kd` | Hinton KD (Hinton, Vinyals & Dean, 2015) |" in out
    assert markdown_table("data", [("x", "a | b")]).splitlines()[-1] == "| `data=x` | a / b |"


def test_an_unknown_kind_is_refused_with_the_valid_ones(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["recipes"])
    assert exc.value.code == 2
    assert "invalid choice: 'recipes'" in capsys.readouterr().err


def test_the_readmes_method_list_is_the_generated_one():
    readme = (ROOT / "README.md").read_text()
    block = readme.split("<!-- methods:start -->\n", 1)[1].split("\n<!-- methods:end -->", 1)[0]
    assert block == markdown_table("methods", choices("methods")), (
        "regenerate the README's method list: python -m kdlight.cli.listing methods --markdown"
    )
