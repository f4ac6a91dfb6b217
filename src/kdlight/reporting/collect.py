"""Finding and reading the run folders under a report's root, whatever state each run is in.

A run is any folder holding the run record (:mod:`kdlight.run.record`) or ``.hydra/config.yaml``;
one without a readable record is still listed, with the status that says why.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import ListConfig

from kdlight.errors import KdlightError
from kdlight.io import load_yaml_bounded
from kdlight.run.record import METRICS_FILE, read_record

FINISHED, FAILED, RUNNING, MISSING, UNREADABLE = (
    "finished",
    "failed",
    "running",
    "no metrics",
    "unreadable",
)


@dataclass
class Run:
    """One run folder: its status, hparams (with ``seed``), final metrics and, if failed, the error."""

    path: Path
    status: str
    hparams: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    overrides: list[str] = field(default_factory=list)

    @property
    def seed(self) -> Any:
        return self.hparams.get("seed")


def find_run_dirs(root: str | os.PathLike) -> list[Path]:
    """Every folder under ``root`` (``root`` included) holding a run record or ``.hydra/config.yaml``.

    Sorted naturally (job ``10`` after job ``9``); symlinked folders are not followed.
    """
    root = Path(root)
    found = []
    for here, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if d not in ("checkpoints", "tb", "analysis")]
        path = Path(here)
        if METRICS_FILE in files or (path / ".hydra" / "config.yaml").is_file():
            found.append(path)
    return sorted(found, key=lambda p: natural_key(str(p.relative_to(root))))


def read_run(path: str | os.PathLike) -> Run:
    """Read one run folder; a missing or unreadable run record gives a run with that status."""
    path = Path(path)
    overrides = _read_overrides(path / ".hydra" / "overrides.yaml")
    try:
        record = read_record(path)
    except KdlightError as exc:
        return Run(
            path,
            UNREADABLE,
            _hparams_from_config(path),
            error=f"{METRICS_FILE}: {exc}",
            overrides=overrides,
        )
    if record is None:
        return Run(path, MISSING, _hparams_from_config(path), overrides=overrides)
    hparams = dict(record.hparams) or _hparams_from_config(path)
    status = record.status
    if status in ("unknown", "", "None"):  # a record without a status: judge by its metrics
        status = FINISHED if "test/acc_last" in record.metrics else RUNNING
    # the report's statistics read every number, the wall time included, from one flat dict
    metrics = {k: v for k, v in record.to_dict().items() if k not in ("status", "hparams", "error")}
    return Run(path, status, hparams, metrics, record.error, overrides)


def _hparams_from_config(run_dir: Path) -> dict[str, Any]:
    """The experiment name and seed from ``.hydra/config.yaml``, for runs that died before their record."""
    config = run_dir / ".hydra" / "config.yaml"
    if not config.is_file():
        return {}
    try:
        cfg = load_yaml_bounded(config)  # someone else's file: bounded (alias bombs)
        return {"experiment": cfg.get("name"), "seed": cfg.get("seed")}
    except Exception:  # noqa: BLE001 - a config we cannot read still gets listed, without hparams
        return {}


def _read_overrides(path: Path) -> list[str]:
    if not path.is_file():
        return []
    try:
        items = load_yaml_bounded(path)
        return [str(i) for i in items] if isinstance(items, ListConfig) else []
    except Exception:  # noqa: BLE001 - overrides are only shown, never needed
        return []


def natural_key(s: str) -> list:
    return [(0, int(t), "") if t.isdigit() else (1, 0, t) for t in re.split(r"(\d+)", s) if t]
