"""The teacher pipeline: load a named checkpoint, or train the teacher once and keep it in a store.

The store is keyed by everything that decides the teacher's weights (its model config, its
training config, the data and its transform, the seed), so every run of a sweep that shares
them reuses one trained teacher. Training happens under an inter-process lock and the file
appears atomically, so concurrent sweep jobs train it once and never read half a file.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra.utils import instantiate, to_absolute_path
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import TensorBoardLogger
from omegaconf import DictConfig, ListConfig, OmegaConf
from torch import nn

from kdlight.checkpoints import load_checkpoint_file, load_weights, nonfinite_weights
from kdlight.engine import ClassifierModule, check_outputs
from kdlight.errors import CheckpointError, ConfigError
from kdlight.io import atomic_torch_save, atomic_write_text, file_lock, key_hash

log = logging.getLogger(__name__)

STORE_VERSION = 1
_TRAINER_KEYS = (
    "max_epochs",
    "fast_dev_run",
    "limit_train_batches",
    "limit_val_batches",
    "overfit_batches",
    "precision",
)


def teacher_key(cfg: DictConfig, datamodule) -> dict[str, Any]:
    """Everything that decides a trained teacher's weights, as plain JSON-able data."""
    trainer = OmegaConf.to_container(cfg.trainer, resolve=True)
    tt = OmegaConf.to_container(cfg.teacher_train, resolve=True)
    return {
        "version": STORE_VERSION,
        "teacher": OmegaConf.to_container(cfg.teacher, resolve=True),
        "teacher_train": tt,
        "trainer": {k: trainer.get(k) for k in _TRAINER_KEYS},
        "data": {
            "name": datamodule.name,
            "fingerprint": datamodule.fingerprint(),
            "val_size": datamodule.val_size,
            "split_seed": datamodule.split_seed,
            "batch_size": datamodule.batch_size,
            "transform": datamodule.transform_key(),
        },
    }


def build_teacher(cfg: DictConfig, datamodule) -> tuple[nn.Module, dict[str, Any]]:
    """Return the frozen teacher network and a dict describing where it came from."""
    from kdlight.ensemble import build_ensemble, ckpt_list

    if ckpt_list(cfg) is not None:  # teacher_ckpt=[a,b,...]: the members' averaged soft targets
        return build_ensemble(cfg, datamodule, build_teacher)
    if isinstance(cfg.get("teacher_ckpt"), ListConfig | list):  # a list of one file
        cfg = cfg.copy()
        cfg.teacher_ckpt = cfg.teacher_ckpt[0]
    net = instantiate(cfg.teacher)
    example = datamodule.view_batch(datamodule.train_idx[:2], None)
    check_outputs(net, example, datamodule.num_classes, "teacher")  # before any (long) training
    ckpt = cfg.get("teacher_ckpt")
    if ckpt:
        path = Path(to_absolute_path(str(ckpt)))
        if not path.exists():
            raise CheckpointError(
                f"teacher checkpoint {path} does not exist; set teacher_ckpt to an existing file or null to train the teacher."
            )
        if path.is_dir():
            raise CheckpointError(
                f"teacher checkpoint {path} is a folder, not a file; set teacher_ckpt to the checkpoint file inside it."
            )
        load_weights(net, path)
        info: dict[str, Any] = {"source": str(path)}
    else:
        info = train_or_reuse(cfg, net, datamodule)
    bad = nonfinite_weights(net)
    if bad:
        raise CheckpointError(
            f"the teacher's weights from {info['source']} hold NaN or Inf values ({bad}); "
            "it cannot teach, so retrain it or name another teacher_ckpt."
        )
    net.eval().requires_grad_(False)
    return net, info


def train_or_reuse(cfg: DictConfig, net: nn.Module, datamodule) -> dict[str, Any]:
    """Load the stored teacher for this config, training and storing it first if needed."""
    if cfg.get("teacher_train") is None:
        raise ConfigError("no teacher_ckpt is given and teacher_train is null; give one of them.")
    key = teacher_key(cfg, datamodule)
    h = key_hash(key)
    folder = Path(to_absolute_path(cfg.paths.store_dir)) / "teachers" / h
    path = folder / "teacher.pt"
    # teacher.pt appears atomically: a valid one is complete, and a read-only store serves it
    meta = _read_valid(path, h, warn=False)  # judged (and reported) again under the lock
    with file_lock(folder / "train.lock") if meta is None else contextlib.nullcontext():
        meta = meta or _read_valid(path, h)
        if meta is None:
            world = int(os.environ.get("WORLD_SIZE", "1"))
            # torchrun/SLURM started every rank: none can train alone while the others wait
            if world > 1:
                raise ConfigError(
                    f"the teacher for this run is not in the store {folder} and cannot be trained by "
                    f"one of {world} distributed processes; train it first with a single-process run "
                    "of the same experiment (trainer.devices=1), or set teacher_ckpt."
                )
            log.info("training teacher %s into the store %s", cfg.teacher._target_, folder)
            state, meta = _train(cfg, net, datamodule, folder, key, h)
            atomic_torch_save({"state_dict": state, "kdlight": meta}, path)
            atomic_write_text(
                folder / "key.json", json.dumps(key, indent=2, sort_keys=True, default=str)
            )
            # teacher.pt holds all that is needed
            shutil.rmtree(folder / "ckpt", ignore_errors=True)
        else:
            log.info(
                "reusing stored teacher %s (val acc %.4f)", path, meta.get("val_acc", float("nan"))
            )
    load_weights(net, path)
    return {"source": str(path), **{k: meta[k] for k in ("val_acc", "test_acc") if k in meta}}


def _read_valid(path: Path, h: str, warn: bool = True) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        blob = load_checkpoint_file(path)
        meta = blob["kdlight"]
        return meta if meta.get("key_hash") == h else None
    except Exception:  # an unreadable store entry is retrained, never trusted
        if warn:
            log.warning("ignoring unreadable stored teacher %s", path)
        return None


def _train(cfg: DictConfig, net: nn.Module, datamodule, folder: Path, key, h: str):
    tt = cfg.teacher_train
    seed_state = torch.random.get_rng_state()
    L.seed_everything(int(tt.seed), workers=True, verbose=False)
    dm = instantiate(cfg.data, labeled_fraction=1.0, unlabeled=False)
    if getattr(dm, "channels_last", False):  # as the student's batches: see train._memory_format
        net.to(memory_format=torch.channels_last)
    module = ClassifierModule(
        net=net,
        num_classes=datamodule.num_classes,
        optimizer=instantiate(tt.optimizer),
        scheduler=instantiate(tt.scheduler) if tt.get("scheduler") else None,
        fused_optimizer=cfg.module.get("fused_optimizer", "auto"),
    )
    shutil.rmtree(folder / "ckpt", ignore_errors=True)  # leftovers of an interrupted training
    ckpt_cb = ModelCheckpoint(
        dirpath=folder / "ckpt", monitor="val/acc", mode="max", filename="best", save_last=False
    )
    callbacks = [ckpt_cb] + [c for c in _progress_callbacks(cfg)]
    trainer = instantiate(
        cfg.trainer,
        max_epochs=int(tt.max_epochs),
        callbacks=callbacks,
        logger=TensorBoardLogger(str(folder), name="tb", version="", default_hp_metric=False),
        # One process, also when the run is DDP: we hold the store lock, so the other ranks
        # (started by this process's first distributed fit, or by torchrun/SLURM) cannot join
        # a distributed teacher fit; they wait on the lock and reuse the stored teacher.
        strategy="auto",
        devices=1,
        num_nodes=1,
        sync_batchnorm=False,
    )
    trainer.fit(module, datamodule=dm)
    if ckpt_cb.best_model_path:
        load_weights(net, ckpt_cb.best_model_path)
    val_acc = (
        float(ckpt_cb.best_model_score) if ckpt_cb.best_model_score is not None else float("nan")
    )
    test = trainer.test(module, datamodule=dm, verbose=False)
    test_acc = float(test[0]["test/acc"]) if test else float("nan")
    torch.random.set_rng_state(seed_state)
    meta = {"key_hash": h, "val_acc": val_acc, "test_acc": test_acc, "target": cfg.teacher._target_}
    log.info("teacher trained: val acc %.4f, test acc %.4f", val_acc, test_acc)
    return {k: v.detach().cpu() for k, v in net.state_dict().items()}, meta


def _progress_callbacks(cfg: DictConfig) -> list:
    cbs = cfg.get("callbacks") or {}
    return [instantiate(c) for name, c in cbs.items() if "progress" in name and c is not None]
