"""A run folder as ``kdlight.train`` and Hydra leave it, written by hand for tests that read runs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf


def lightning_checkpoint(path: Path, state: dict, prefix: str = "net.") -> Path:
    """A file shaped like a kdlight Lightning checkpoint holding ``state`` under ``prefix``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(
        {
            "state_dict": {prefix + k: v for k, v in state.items()},
            "pytorch-lightning_version": "2.6",
            "epoch": 0,
            "global_step": 1,
        },
        path,
    )
    return path


def write_run(
    folder: Path,
    config: dict | DictConfig | str | None = None,
    *,
    checkpoints: dict[str, Any] | None = None,
    metrics: dict | None = None,
    overrides: list[str] | None = None,
    hydra: dict | None = None,
) -> Path:
    """Write a run folder: ``.hydra/config.yaml`` (``config``: a dict, a DictConfig or YAML text),
    ``.hydra/overrides.yaml``, ``.hydra/hydra.yaml``, ``checkpoints/<name>`` (each value
    ``torch.save``-d; ``{}`` makes the folder empty) and ``metrics.json``; each only when given.
    """
    folder.mkdir(parents=True, exist_ok=True)
    meta = folder / ".hydra"
    if config is not None:
        meta.mkdir(exist_ok=True)
        if isinstance(config, str):
            (meta / "config.yaml").write_text(config)
        elif isinstance(config, DictConfig):
            OmegaConf.save(config, meta / "config.yaml")
        else:
            OmegaConf.save(OmegaConf.create(config), meta / "config.yaml")
    if overrides is not None:
        meta.mkdir(exist_ok=True)
        (meta / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
    if hydra is not None:
        meta.mkdir(exist_ok=True)
        OmegaConf.save(OmegaConf.create(hydra), meta / "hydra.yaml")
    if checkpoints is not None:
        (folder / "checkpoints").mkdir(exist_ok=True)
        for name, obj in checkpoints.items():
            torch.save(obj, folder / "checkpoints" / name)
    if metrics is not None:
        (folder / "metrics.json").write_text(json.dumps(metrics))
    return folder
