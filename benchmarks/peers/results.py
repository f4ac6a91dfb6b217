"""Pure parts of the peers harness: a run's summary, medians over rounds, ratios, the JSON
document (docs/performance/peers.json) and its Markdown table (docs/performance/peers.md)."""

from __future__ import annotations

import statistics
from typing import Any

TOOLS = ("kdlight", "timm", "torchdistill")
PEERS = ("timm", "torchdistill")
TABLE_START = "<!-- peers-table:start (written by benchmarks/peers/bench_peers.py) -->"
TABLE_END = "<!-- peers-table:end -->"
# issue 35's targets: (case, what the ratio is, its lower bound)
TARGETS = {
    "online": ("img_s", 1.0),
    "warm_store": ("img_s", 1.3),
    "sweep4": ("wall_s", 2.0),
}


def _round(x: float | None, nd: int = 3) -> float | None:
    return None if x is None else round(float(x), nd)


def run_summary(
    epochs: list[dict[str, Any]], wall_s: float, maxrss_kb: int, acc: float | None
) -> dict[str, Any]:
    """One command's numbers: training images/s (samples over summed epoch seconds), wall, RSS, accuracy."""
    samples = sum(int(e["samples"]) for e in epochs)
    seconds = sum(float(e["seconds"]) for e in epochs)
    return {
        "img_s": _round(samples / seconds, 1) if seconds > 0 else None,
        "train_s": _round(seconds),
        "samples": samples,
        "wall_s": _round(wall_s),
        "peak_rss_mb": _round(maxrss_kb / 1024.0, 1),
        "acc": _round(acc, 4),
    }


def combine_runs(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Several commands that make one measurement (a sweep's runs): summed time, max RSS, mean accuracy."""
    samples = sum(r["samples"] for r in runs)
    train_s = sum(r["train_s"] for r in runs)
    accs = [r["acc"] for r in runs if r["acc"] is not None]
    return {
        "img_s": _round(samples / train_s, 1) if train_s > 0 else None,
        "train_s": _round(train_s),
        "samples": samples,
        "wall_s": _round(sum(r["wall_s"] for r in runs)),
        "peak_rss_mb": max(r["peak_rss_mb"] for r in runs),
        "acc": _round(statistics.fmean(accs), 4) if accs else None,
        "accs": [r["acc"] for r in runs],
    }


def median(values: list[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return _round(statistics.median(vals), 4) if vals else None


def ratio(num: float | None, den: float | None) -> float | None:
    return _round(num / den) if num is not None and den not in (None, 0) else None


def case_row(name: str, rounds: dict[str, list[dict[str, Any]]], notes: str = "") -> dict[str, Any]:
    """A case's row: per tool the median over rounds of each figure, every round kept, the ratios.

    ``kdlight_speedup_img_s`` = kdlight img/s over the faster peer's; ``kdlight_speedup_wall`` =
    the faster peer's wall time over kdlight's (both > 1: kdlight is faster).
    """
    row: dict[str, Any] = {"name": name}
    for tool in TOOLS:
        runs = rounds.get(tool, [])
        for key in ("img_s", "wall_s", "peak_rss_mb", "acc"):
            row[f"{tool}_{key}"] = median([r.get(key) for r in runs])
        row[f"{tool}_rounds"] = runs
    peer_img = [row[f"{p}_img_s"] for p in PEERS if row[f"{p}_img_s"] is not None]
    peer_wall = [row[f"{p}_wall_s"] for p in PEERS if row[f"{p}_wall_s"] is not None]
    row["kdlight_speedup_img_s"] = ratio(row["kdlight_img_s"], max(peer_img) if peer_img else None)
    row["kdlight_speedup_wall"] = ratio(
        min(peer_wall) if peer_wall else None, row["kdlight_wall_s"]
    )
    if name in TARGETS:
        figure, bound = TARGETS[name]
        value = row["kdlight_speedup_img_s" if figure == "img_s" else "kdlight_speedup_wall"]
        row["target"] = {
            "ratio": f"kdlight_speedup_{'img_s' if figure == 'img_s' else 'wall'}",
            "bound": bound,
            "value": value,
            "met": None if value is None else value >= bound,
        }
    if notes:
        row["notes"] = notes
    return row


def document(
    machine: dict[str, Any], settings: dict[str, Any], cases: list[dict[str, Any]]
) -> dict[str, Any]:
    """docs/performance/peers.json: ``{"machine", "settings", "cases": [...]}``."""
    return {"machine": machine, "settings": settings, "cases": cases}


def _fmt(x: Any, nd: int = 1) -> str:
    if x is None:
        return "-"
    if isinstance(x, float):
        return f"{x:.{nd}f}"
    return str(x)


def markdown_table(doc: dict[str, Any]) -> str:
    """The page's table: per case, each tool's images/s, wall s, peak RSS MB and accuracy; ratios."""
    head = (
        "| case | kdlight img/s | timm img/s | torchdistill img/s | kdlight wall s | timm wall s "
        "| torchdistill wall s | peak RSS MB (kd / timm / td) | acc % (kd / timm / td) | speed-up img/s "
        "| speed-up wall | target |"
    )
    lines = [head, "|" + "---|" * 12]
    for c in doc["cases"]:
        rss = " / ".join(_fmt(c.get(f"{t}_peak_rss_mb"), 0) for t in TOOLS)
        acc = " / ".join(
            _fmt(None if c.get(f"{t}_acc") is None else 100 * c[f"{t}_acc"], 1) for t in TOOLS
        )
        tgt = c.get("target")
        target = (
            "-"
            if not tgt
            else f">= {tgt['bound']}: {'met' if tgt['met'] else 'not met' if tgt['met'] is False else '-'}"
        )
        lines.append(
            f"| {c['name']} | {_fmt(c.get('kdlight_img_s'))} | {_fmt(c.get('timm_img_s'))} "
            f"| {_fmt(c.get('torchdistill_img_s'))} | {_fmt(c.get('kdlight_wall_s'))} | {_fmt(c.get('timm_wall_s'))} "
            f"| {_fmt(c.get('torchdistill_wall_s'))} | {rss} | {acc} | {_fmt(c.get('kdlight_speedup_img_s'), 2)} "
            f"| {_fmt(c.get('kdlight_speedup_wall'), 2)} | {target} |"
        )
    return "\n".join(lines)


def markers(name: str | None = None) -> tuple[str, str]:
    """The comments around a table the harness writes: the speed table's, or table ``name``'s."""
    if not name:
        return TABLE_START, TABLE_END
    return f"<!-- peers-table-{name}:start (written by benchmarks/peers/bench_peers.py) -->", (
        f"<!-- peers-table-{name}:end -->"
    )


def replace_table(page: str, table: str, name: str | None = None) -> str:
    """``page`` with the text between the table markers replaced by ``table`` (markers kept)."""
    first, last = markers(name)
    start, end = page.find(first), page.find(last)
    if start < 0 or end < start:
        raise ValueError("the page has no peers-table markers; add them where the table goes")
    return page[: start + len(first)] + "\n" + table + "\n" + page[end:]
