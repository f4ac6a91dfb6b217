"""The summary table of a CPU-scale comparison, from its run records, as Markdown.

    python benchmarks/cpu_table_md.py docs/fidelity_study/runs > docs/fidelity_study/summary.md

One row per record folder (``RUNS/ROW/seedN/metrics.json``, as ``benchmarks/cpu_table.sh`` keeps
them): the seeds recorded, test accuracy of the validation-best and of the last checkpoint (mean
± sample std over the seeds, in %), and the difference of the val-best mean to the rows ``alone``
and ``kd``, in points. ``alone`` and ``kd`` come first, then the others by val-best mean. The
results pages include the file (``--8<--``), so the page shows what the records hold.

``RUNS/../notes.json`` (``{"ROW": "text"}``), when present, adds a note column: the measured
reason beside a row that needs one (e.g. a method below the student alone).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

ANCHORS = ("alone", "kd")


def _load(runs: Path) -> dict[str, dict[int, dict]]:
    rows: dict[str, dict[int, dict]] = {}
    for path in sorted(runs.glob("*/seed*/metrics.json")):
        record = json.loads(path.read_text())
        if record.get("status") != "finished":
            continue
        seed = int(path.parent.name.removeprefix("seed"))
        rows.setdefault(path.parent.parent.name, {})[seed] = record
    return rows


def _stat(values: list[float]) -> str:
    mean = 100 * statistics.fmean(values)
    if len(values) < 2:
        return f"{mean:.2f}"
    return f"{mean:.2f} ± {100 * statistics.stdev(values):.2f}"


def render(runs: Path) -> str:
    """The Markdown table of the finished records under ``runs``."""
    rows = _load(runs)
    notes_file = runs.parent / "notes.json"
    notes = json.loads(notes_file.read_text()) if notes_file.is_file() else {}
    unknown = sorted(set(notes) - set(rows))
    if unknown:
        raise SystemExit(
            f"cpu_table_md: {notes_file} has notes for rows without records: {unknown}"
        )
    if not rows:
        raise SystemExit(f"cpu_table_md: no finished run records under {runs}")
    means = {
        name: statistics.fmean(r["test/acc_best"] for r in seeds.values())
        for name, seeds in rows.items()
    }
    order = [a for a in ANCHORS if a in rows]
    order += sorted((n for n in rows if n not in ANCHORS), key=lambda n: -means[n])
    head = ["row", "seeds", "test acc, val-best ckpt", "test acc, last ckpt"]
    head += [f"Δ vs {a}" for a in ANCHORS if a in rows]
    rule = "|---|---|" + "---:|" * (len(head) - 2)
    if notes:
        head.append("note")
        rule += "---|"
    lines = ["| " + " | ".join(head) + " |", rule]
    for name in order:
        seeds = rows[name]
        cells = [
            "student alone" if name == "alone" else f"`{name}`",
            ", ".join(str(s) for s in sorted(seeds)),
            _stat([r["test/acc_best"] for r in seeds.values()]),
            _stat([r["test/acc_last"] for r in seeds.values()]),
        ]
        cells += [f"{100 * (means[name] - means[a]):+.2f}" for a in ANCHORS if a in rows]
        if notes:
            cells.append(notes.get(name, ""))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", type=Path, help="the table's record folder (RUNS/ROW/seedN)")
    args = parser.parse_args(argv)
    sys.stdout.write(render(args.runs))


if __name__ == "__main__":
    main()
