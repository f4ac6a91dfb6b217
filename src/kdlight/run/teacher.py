"""Obtain the teacher: load a named checkpoint, or train it once into the store on its own settings.

A trained teacher depends only on its own config: its model config, ``teacher_train`` (seed,
epochs, optimizer, scheduler and its own ``trainer`` settings: limits, precision, ...) and the
data it trains on (dataset, fingerprint, split, batch size, transform). That is its store key,
so every run sharing them (a sweep, or the same experiment with other student epochs or
limits) reuses one trained teacher; nothing of the student's run is in it. It is trained under
an inter-process lock and appears atomically (:func:`kdlight.io.cached`), so concurrent sweep
jobs train it once and never read half a file.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra.utils import instantiate, to_absolute_path
from lightning.pytorch.loggers import TensorBoardLogger
from omegaconf import DictConfig, ListConfig, OmegaConf
from torch import nn

from kdlight.callbacks import AtomicModelCheckpoint
from kdlight.checkpoints import load_checkpoint_file, load_weights, nonfinite_weights
from kdlight.errors import CheckpointError, ConfigError
from kdlight.io import cached, key_hash, refuse_link
from kdlight.run.checks import check_outputs

log = logging.getLogger(__name__)

STORE_VERSION = 2  # 2: the key holds teacher_train's own trainer, none of the student's
TEACHER_FILE = "teacher.pt"
#: Settings of the student's ``trainer`` that only say where and how visibly to compute (not
#: what): the teacher's Trainer takes them too. Everything else comes from teacher_train.
MACHINE_KEYS = (
    "accelerator",
    "deterministic",
    "benchmark",
    "enable_progress_bar",
    "enable_model_summary",
    "log_every_n_steps",
)
#: The teacher's Trainer unless ``teacher_train.trainer`` says otherwise.
TEACHER_TRAINER_DEFAULTS = {
    "min_epochs": 1,
    "precision": "32-true",
    "check_val_every_n_epoch": 1,
    "num_sanity_val_steps": 0,
}


def teacher_key(cfg: DictConfig, datamodule) -> dict[str, Any]:
    """Everything that decides a trained teacher's weights, as plain JSON-able data."""
    return {
        "version": STORE_VERSION,
        "teacher": OmegaConf.to_container(cfg.teacher, resolve=True),
        "teacher_train": OmegaConf.to_container(cfg.teacher_train, resolve=True),
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
    from kdlight.teacher.ensemble import build_ensemble, ckpt_list

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

    def load(path: Path) -> dict[str, Any] | None:
        meta = load_checkpoint_file(path)["kdlight"]
        return meta if meta.get("key_hash") == h else None  # another teacher's: retrain

    def compute(folder: Path) -> dict[str, Any]:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        # torchrun/SLURM started every rank: none can train alone while the others wait
        if world > 1:
            raise ConfigError(
                f"the teacher for this run is not in the store {folder} and cannot be trained by "
                f"one of {world} distributed processes; train it first with a single-process run "
                "of the same experiment (trainer.devices=1), or set teacher_ckpt."
            )
        log.info("training teacher %s into the store %s", cfg.teacher._target_, folder)
        state, meta = _train(cfg, datamodule, folder, h)
        shutil.rmtree(folder / "ckpt", ignore_errors=True)  # teacher.pt holds all that is needed
        return {"state_dict": state, "kdlight": meta}

    root = Path(to_absolute_path(cfg.paths.store_dir)) / "teachers"
    path, meta, trained = cached(
        root, key, compute, name=TEACHER_FILE, load=load, what="stored teacher"
    )
    if not trained:
        log.info(
            "reusing stored teacher %s (val acc %.4f)", path, meta.get("val_acc", float("nan"))
        )
    load_weights(net, path)
    return {"source": str(path), **{k: meta[k] for k in ("val_acc", "test_acc") if k in meta}}


def teacher_trainer(cfg: DictConfig, folder: Path, callbacks: list) -> L.Trainer:
    """The teacher's own Trainer: ``teacher_train`` settings, the student's machine, one process.

    One process also when the run is DDP: the store's lock is held, so the other ranks (started
    by this process's first distributed fit, or by torchrun/SLURM) cannot join a distributed
    teacher fit; they wait on the lock and reuse the stored teacher.
    """
    tt = cfg.teacher_train
    machine = {k: cfg.trainer[k] for k in MACHINE_KEYS if cfg.trainer.get(k) is not None}
    own = OmegaConf.to_container(tt.get("trainer") or OmegaConf.create(), resolve=True)
    return L.Trainer(
        **{**TEACHER_TRAINER_DEFAULTS, **machine, **own},
        max_epochs=int(tt.max_epochs),
        callbacks=callbacks,
        logger=TensorBoardLogger(str(folder), name="tb", version="", default_hp_metric=False),
        default_root_dir=str(folder),
        strategy="auto",
        devices=1,
        num_nodes=1,
    )


def _train(cfg: DictConfig, datamodule, folder: Path, h: str):
    # a link planted there would send the teacher's checkpoints outside the store (rmtree
    # refuses links, and ignore_errors hid that): refused in one sentence, before any work
    refuse_link(folder / "ckpt", "the teacher store's checkpoint folder")
    tt = cfg.teacher_train
    seed_state = torch.random.get_rng_state()
    L.seed_everything(int(tt.seed), workers=True, verbose=False)
    # initialised after its own seed: its weights depend on nothing of the student's run
    net = instantiate(cfg.teacher)
    dm = instantiate(cfg.data, labeled_fraction=1.0, unlabeled=False)
    if getattr(dm, "channels_last", False):  # as the student's batches: see assemble.memory_format
        net.to(memory_format=torch.channels_last)
    from kdlight.engine import ClassifierModule

    module = ClassifierModule(
        net=net,
        num_classes=datamodule.num_classes,
        optimizer=instantiate(tt.optimizer),
        scheduler=instantiate(tt.scheduler) if tt.get("scheduler") else None,
        fused_optimizer=tt.get("fused_optimizer", "auto"),
    )
    shutil.rmtree(folder / "ckpt", ignore_errors=True)  # leftovers of an interrupted training
    ckpt_cb = AtomicModelCheckpoint(
        dirpath=folder / "ckpt", monitor="val/acc", mode="max", filename="best", save_last=False
    )
    trainer = teacher_trainer(cfg, folder, [ckpt_cb, *_progress_callbacks(cfg)])
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


__all__ = ["STORE_VERSION", "build_teacher", "teacher_key", "teacher_trainer", "train_or_reuse"]
