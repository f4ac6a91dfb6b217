"""Rebuild a trained run for analysis: its config, test data, network and (if any) its teacher.

The run folder is opened by :mod:`kdlight.run.read` (only allowed networks and data modules are
built from its config; checkpoints are read weights-only from inside it).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from kdlight.errors import CheckpointError, KdlightError
from kdlight.run.read import find_run, open_run


@dataclass
class LoadedRun:
    """A run rebuilt from its folder: config, test data, the trained network and (if any) its teacher."""

    run_dir: Path
    checkpoint: Path
    cfg: Any
    datamodule: Any
    net: nn.Module
    teacher: nn.Module | None
    teacher_source: str | None
    checkpoint_meta: dict[str, Any]

    @property
    def classes(self) -> list[str]:
        arrays = getattr(self.datamodule, "arrays", None)
        names = list(getattr(arrays, "classes", None) or [])
        return (
            names
            if len(names) == self.datamodule.num_classes
            else [str(i) for i in range(self.datamodule.num_classes)]
        )


def resolve_checkpoint(path: str | os.PathLike) -> Path:
    """``path`` if it is a file; for a run folder its validation-best checkpoint, else ``last.ckpt``
    (resolved inside the run folder by :mod:`kdlight.run.read`)."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(
            f"checkpoint {path} does not exist; give a .ckpt file or a run folder."
        )
    return find_run(path)[1]


def load_run(
    checkpoint: str | os.PathLike,
    data_dir: str | os.PathLike | None = None,
    overrides: Sequence[str] = (),
    with_teacher: bool = True,
) -> LoadedRun:
    """Rebuild a run from ``checkpoint`` (``<run>/checkpoints/x.ckpt``, or the run folder).

    ``data_dir`` replaces the run's ``data.data_dir``; ``overrides`` are ``key=value`` dot-list
    settings applied to the run's config (e.g. ``data.eval_batch_size=256``). Relative paths in
    the config resolve against the directory the run was started from (``.hydra/hydra.yaml``).
    The folder is opened by :mod:`kdlight.run.read`: only allowed networks and data modules are
    built from its config, and checkpoints are read weights-only from inside it.
    """
    from omegaconf import OmegaConf, open_dict

    from kdlight.checkpoints import load_weights

    if not Path(checkpoint).exists():
        raise CheckpointError(
            f"checkpoint {checkpoint} does not exist; give a .ckpt file or a run folder."
        )
    run, ckpt = open_run(checkpoint)
    cfg = run.cfg
    if overrides:
        try:
            cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist(list(overrides)))
        except Exception as exc:  # noqa: BLE001 - a malformed --set: one sentence
            raise KdlightError(
                f"--set {' '.join(overrides)} cannot be applied to the run's config ({exc})."
            ) from None
        run.cfg = cfg
    cwd = run.cwd or Path(".")
    with open_dict(cfg):
        root = data_dir if data_dir is not None else cfg.data.get("data_dir", "data")
        cfg.data.data_dir = str(_absolute(root, cwd))
    net = run.build("student")  # networks first: a refused config stops before any data work
    meta = load_weights(net, ckpt)
    net.eval()
    teacher, source = None, None
    if with_teacher and cfg.get("distill") is not None:
        sources = run.teacher_sources()
        if sources:
            source = str(sources[0][1])
            if not Path(source).is_file():
                raise CheckpointError(
                    f"the run's teacher checkpoint {source} does not exist; analyse without it (--no-teacher)."
                )
            teacher = run.build("teacher")
            load_weights(teacher, source)
            teacher.eval()
    datamodule = run.build_data()
    datamodule.prepare_data()
    datamodule.setup("test")
    return LoadedRun(run.dir, ckpt, cfg, datamodule, net, teacher, source, meta)


@torch.inference_mode()
def predict(
    nets: Sequence[nn.Module], datamodule, split: str = "test", device: str | torch.device = "cpu"
):
    """Logits of each net on ``split`` (one pass over the data) and the labels: ``([N x C, ...], N)``."""
    device = torch.device(device)
    loader = {"test": datamodule.test_dataloader, "val": datamodule.val_dataloader}[split]()
    for net in nets:
        net.eval().to(device)
    outs: list[list[torch.Tensor]] = [[] for _ in nets]
    labels = []
    for batch in loader:
        x = datamodule.transform(batch["x"].to(device), batch["idx"].to(device), None)
        for k, net in enumerate(nets):
            outs[k].append(net(x).float().cpu())
        labels.append(batch["y"])
    return [torch.cat(o) for o in outs], torch.cat(labels)


def _absolute(path: str | os.PathLike, cwd: Path) -> Path:
    p = Path(os.path.expanduser(str(path)))
    return p if p.is_absolute() else (cwd / p).resolve()
