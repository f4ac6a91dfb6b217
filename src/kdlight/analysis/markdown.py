"""The text of ``analysis.md`` from the summary :func:`kdlight.analysis.write.write_analysis` builds."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any


def _pct(v: float | None) -> str:
    return "–" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100 * v:.2f}"


def render_markdown(summary: dict[str, Any], classes: Sequence[str], title: str = "") -> str:
    """The text of ``analysis.md`` from :func:`write_analysis`'s summary."""
    lines = [f"# Test analysis{': `' + title + '`' if title else ''}", ""]
    if summary.get("run_dir"):
        lines += [
            f"Run `{summary['run_dir']}`, network `{summary.get('network')}`, checkpoint epoch "
            f"{summary.get('epoch', '?')}; {summary['n_test']} test samples.",
            "",
        ]
    lines += [
        "| metric | value |",
        "|---|---:|",
        f"| test accuracy (%) | {_pct(summary['test/acc'])} |",
        f"| ECE, {summary['n_bins']} bins (%) | {_pct(summary['test/ece'])} |",
    ]
    if "teacher/test_acc" in summary:
        lines += [
            f"| teacher test accuracy (%) | {_pct(summary['teacher/test_acc'])} |",
            f"| teacher ECE (%) | {_pct(summary['teacher/test_ece'])} |",
            f"| teacher-student agreement (%) | {_pct(summary['test/agreement'])} |",
        ]
    lines += ["", "![confusion matrix](confusion_matrix.png)", "", "## Per-class accuracy", ""]
    per_t = summary.get("teacher_per_class_accuracy")
    lines += [
        "| class | accuracy (%) |" + (" teacher (%) |" if per_t else ""),
        "|---|---:|" + ("---:|" if per_t else ""),
    ]
    for name, acc in summary["per_class_accuracy"].items():
        lines.append(f"| {name} | {_pct(acc)} |" + (f" {_pct(per_t[name])} |" if per_t else ""))
    lines += [
        "",
        "## Most confused pairs",
        "",
        "| true | predicted as | count | % of the true class |",
        "|---|---|---:|---:|",
    ]
    for p in summary["most_confused"]:
        lines.append(
            f"| {p['true']} | {p['predicted']} | {p['count']} | {_pct(p['fraction_of_true'])} |"
        )
    if not summary["most_confused"]:
        lines.append("| (no errors) | | | |")
    lines += [
        "",
        "## Calibration",
        "",
        f"Expected calibration error over {summary['n_bins']} equal-width confidence bins: "
        f"{_pct(summary['test/ece'])}%.",
        "",
        "![reliability diagram](reliability.png)",
        "",
        f"## Temperature: the {summary['temperature_source']}'s softened distributions",
        "",
        "q_i = softmax(z / T); entropy in nats (and over log C, 1 = uniform); the mass outside the "
        "top class is what a student learns beyond the label.",
        "",
        "| T | mean entropy | entropy / log C | mean mass outside the top class |",
        "|---:|---:|---:|---:|",
    ]
    for r in summary["temperature_study"]:
        lines.append(
            f"| {r['temperature']:g} | {r['mean_entropy']:.3f} | {r['mean_entropy_normalized']:.3f} "
            f"| {r['mean_non_top_mass']:.3f} |"
        )
    lines += ["", "![softened distributions](temperature_distributions.png)", ""]
    return "\n".join(lines)
