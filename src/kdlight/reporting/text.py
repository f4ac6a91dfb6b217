"""How values look in ``report.md``, ``results.csv`` and figure titles."""

from __future__ import annotations

import re
from typing import Any

from kdlight.reporting.table import SHORT, Stat


def fmt(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, float):
        return f"{v:g}"
    return str(v)


def csv_value(v: Any) -> Any:
    if v is None:
        return ""
    if isinstance(v, bool):
        return str(v).lower()
    return v


def pct(st: Stat) -> str:
    if st.mean is None:
        return "–"
    text = f"{100 * st.mean:.2f}"
    return text + (f" ± {100 * st.std:.2f}" if st.std is not None else "")


def minutes(st: Stat) -> str:
    """Seconds as minutes, ``mean ± std`` (1 decimal); ``—`` when no run recorded it."""
    if st.mean is None:
        return "—"
    return f"{st.mean / 60:.1f}" + (f" ± {st.std / 60:.1f}" if st.std is not None else "")


def pct1(value: float | None) -> str:
    return "—" if value is None else f"{100 * value:.2f}"


def one_line(text: str, limit: int = 300) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def md_cell(text: str) -> str:
    return text.replace("|", "\\|")


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.=-]+", "_", text.replace(", ", "_")).strip("_")


def short_label(key: str) -> str:
    return SHORT.get(key, key)
