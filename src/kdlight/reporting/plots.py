"""Figures shared by the report, the analysis CLI, the TensorBoard callback and the notebooks.

Every function returns a :class:`matplotlib.figure.Figure` drawn on an Agg canvas, built
without ``pyplot``: no global backend switch, no figure registry to leak from long sweeps,
safe in worker threads. Save one with :func:`save` (PNG), log it with TensorBoard's
``add_figure``, or show it in a notebook with ``IPython.display.display(fig)``.
"""

from __future__ import annotations

import io
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

DPI = 120


def new_figure(width: float, height: float) -> Figure:
    """A figure of ``width`` x ``height`` inches on its own Agg canvas."""
    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def save(fig: Figure, path: str | os.PathLike) -> Path:
    """Write ``fig`` as a PNG to ``path`` (parent folders created); return the path."""
    from kdlight.io import atomic_write_bytes

    path = Path(path)
    atomic_write_bytes(path, to_png(fig))  # never through a link planted at ``path``
    return path


def to_png(fig: Figure) -> bytes:
    """``fig`` rendered as PNG bytes (``IPython.display.Image(data=to_png(fig))`` in a notebook)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)
    return buf.getvalue()


def heatmap(
    values: np.ndarray,
    row_labels: Sequence[str],
    col_labels: Sequence[str],
    *,
    title: str,
    xlabel: str,
    ylabel: str,
    fmt: str = "{:.2f}",
    cbar_label: str = "",
    cmap: str = "viridis",
    vmin: float | None = None,
    vmax: float | None = None,
) -> Figure:
    """An annotated heat map of ``values`` (rows x cols); NaN cells are grey and unlabelled."""
    values = np.asarray(values, dtype=float)
    n_rows, n_cols = values.shape
    fig = new_figure(max(4.0, 1.0 + 0.9 * n_cols), max(3.0, 1.0 + 0.6 * n_rows))
    ax = fig.add_subplot()
    masked = np.ma.masked_invalid(values)
    cm = _cmap(cmap, bad="#d0d0d0")
    image = ax.imshow(masked, cmap=cm, aspect="auto", vmin=vmin, vmax=vmax)
    ax.set_xticks(range(n_cols), labels=list(col_labels))
    ax.set_yticks(range(n_rows), labels=list(row_labels))
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    finite = values[np.isfinite(values)]
    if finite.size:
        lo, hi = (
            (vmin if vmin is not None else finite.min()),
            (vmax if vmax is not None else finite.max()),
        )
        middle = (lo + hi) / 2
        for i in range(n_rows):
            for j in range(n_cols):
                v = values[i, j]
                if np.isfinite(v):
                    colour = "black" if (v > middle or hi == lo) else "white"
                    ax.text(j, i, fmt.format(v), ha="center", va="center", color=colour, fontsize=8)
    bar = fig.colorbar(image, ax=ax)
    if cbar_label:
        bar.set_label(cbar_label)
    return fig


def lines_with_errorbars(
    series: Mapping[str, tuple[Sequence[float], Sequence[float], Sequence[float]]],
    *,
    title: str,
    xlabel: str,
    ylabel: str,
    logx: bool = False,
    hlines: Mapping[str, float] | None = None,
) -> Figure:
    """One line per ``label -> (x, mean, std)`` with error bars; ``hlines`` are dashed references."""
    fig = new_figure(6.0, 4.0)
    ax = fig.add_subplot()
    for label, (x, mean, std) in series.items():
        std = np.nan_to_num(np.asarray(std, dtype=float))
        ax.errorbar(x, mean, yerr=std, marker="o", capsize=3, label=label)
    for label, y in (hlines or {}).items():
        ax.axhline(y, linestyle="--", linewidth=1, color="grey")
        ax.annotate(
            label,
            (0.01, y),
            xycoords=("axes fraction", "data"),
            fontsize=8,
            va="bottom",
            color="grey",
        )
    if logx:
        ax.set_xscale("log")
        xs = sorted({float(v) for x, _, _ in series.values() for v in x})
        ax.set_xticks(xs, labels=[f"{v:g}" for v in xs])
        ax.minorticks_off()
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.grid(True, alpha=0.3)
    if series:
        ax.legend(fontsize=8)
    return fig


def confusion_matrix_figure(
    cm: np.ndarray, classes: Sequence[str], *, title: str = "Confusion matrix"
) -> Figure:
    """A row-normalised confusion matrix (true class down, predicted across), counts ignored."""
    cm = np.asarray(cm, dtype=float)
    rows = cm.sum(axis=1, keepdims=True)
    norm = np.divide(cm, rows, out=np.full_like(cm, np.nan), where=rows > 0)
    n = len(classes)
    size = max(4.5, 0.55 * n + 2.0)
    fig = new_figure(size + 1.0, size)
    ax = fig.add_subplot()
    cmap = _cmap("Blues", bad="#d0d0d0")
    image = ax.imshow(np.ma.masked_invalid(norm), cmap=cmap, vmin=0.0, vmax=1.0)
    ax.set_xticks(range(n), labels=list(classes), rotation=45, ha="right")
    ax.set_yticks(range(n), labels=list(classes))
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title, fontsize=10)
    if n <= 20:
        for i in range(n):
            for j in range(n):
                v = norm[i, j]
                if np.isfinite(v) and v >= 0.005:
                    ax.text(
                        j,
                        i,
                        f"{v:.2f}",
                        ha="center",
                        va="center",
                        fontsize=7,
                        color="white" if v > 0.5 else "black",
                    )
    fig.colorbar(image, ax=ax, label="fraction of the true class")
    return fig


def reliability_figure(
    bin_edges: np.ndarray,
    accuracy: np.ndarray,
    confidence: np.ndarray,
    counts: np.ndarray,
    *,
    ece: float,
    title: str = "Reliability diagram",
) -> Figure:
    """Accuracy per confidence bin against the diagonal (perfect calibration), with bin counts."""
    edges = np.asarray(bin_edges, dtype=float)
    width = np.diff(edges)
    centers = edges[:-1] + width / 2
    counts = np.asarray(counts, dtype=float)
    has = counts > 0
    fig = new_figure(5.0, 5.5)
    ax, ax_count = fig.subplots(2, 1, height_ratios=[3, 1], sharex=True)
    ax.bar(
        centers[has],
        np.asarray(accuracy)[has],
        width=width[has],
        edgecolor="black",
        alpha=0.8,
        label="accuracy",
    )
    ax.bar(
        centers[has],
        np.asarray(confidence)[has],
        width=width[has],
        fill=False,
        edgecolor="tab:red",
        hatch="//",
        label="mean confidence",
    )
    ax.plot([0, 1], [0, 1], "k--", linewidth=1, label="perfect calibration")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_ylabel("accuracy")
    ax.set_title(f"{title} (ECE {100 * ece:.2f}%)", fontsize=10)
    ax.legend(fontsize=8, loc="upper left")
    ax_count.bar(centers, counts, width=width, color="grey", edgecolor="black")
    ax_count.set_xlabel("confidence (max softmax probability)")
    ax_count.set_ylabel("samples")
    return fig


def distributions_figure(
    probs: Mapping[float, np.ndarray],
    classes: Sequence[str],
    *,
    titles: Sequence[str],
    suptitle: str = "",
) -> Figure:
    """Grouped bars: for each example (one panel), each class's probability at every temperature.

    ``probs`` maps a temperature to an (examples, classes) array of softened distributions.
    """
    temps = list(probs)
    n_examples = next(iter(probs.values())).shape[0] if probs else 0
    cols = min(3, max(1, n_examples))
    rows = max(1, math.ceil(n_examples / cols))
    n_cls = len(classes)
    fig = new_figure(4.2 * cols, 3.2 * rows)
    axes = np.atleast_1d(fig.subplots(rows, cols, squeeze=False)).ravel()
    width = 0.8 / max(1, len(temps))
    x = np.arange(n_cls)
    for e in range(n_examples):
        ax = axes[e]
        for k, t in enumerate(temps):
            ax.bar(
                x + (k - (len(temps) - 1) / 2) * width, probs[t][e], width=width, label=f"T={t:g}"
            )
        ax.set_xticks(x, labels=list(classes), rotation=60, ha="right", fontsize=7)
        ax.set_ylim(0, 1)
        ax.set_title(titles[e] if e < len(titles) else f"example {e}", fontsize=9)
        if e % cols == 0:
            ax.set_ylabel("probability")
    for ax in axes[n_examples:]:
        ax.set_visible(False)
    if n_examples:
        axes[0].legend(fontsize=7)
    if suptitle:
        fig.suptitle(suptitle, fontsize=10)
    return fig


def bars_figure(
    labels: Sequence[str],
    values: Sequence[float],
    *,
    title: str,
    ylabel: str,
    errors: Sequence[float] | None = None,
    hlines: dict[str, float] | None = None,
) -> Figure:
    """A bar chart (per-class accuracy; methods side by side with error bars and dashed references)."""
    fig = new_figure(max(6.0 if hlines else 4.0, 0.45 * len(labels) + 1.5), 4.0 if hlines else 3.5)
    ax = fig.add_subplot()
    ax.bar(range(len(labels)), values, color="tab:blue", yerr=errors, capsize=3 if errors else 0)
    for i, (name, y) in enumerate((hlines or {}).items()):
        ax.axhline(y, linestyle="--", color=f"C{i + 1}", label=name)
    if hlines:
        low = min([*values, *hlines.values()])
        high = max(
            [
                *(v + (e or 0) for v, e in zip(values, errors or [0] * len(values), strict=True)),
                *hlines.values(),
            ]
        )
        ax.set_ylim(low - 0.1 * (high - low + 1), high + 0.1 * (high - low + 1))
        ax.legend(fontsize=7, loc="lower right")
    ax.set_xticks(range(len(labels)), labels=list(labels), rotation=45, ha="right", fontsize=8)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.grid(True, axis="y", alpha=0.3)
    return fig


def _cmap(name: str, bad: str | None = None):
    from matplotlib import colormaps

    cmap = colormaps[name]
    return cmap.with_extremes(bad=bad) if bad else cmap
