"""Train a classifier or distill a student: fit, test the last and the validation-best weights, record.

With ``distill: null`` the student is trained alone with cross-entropy (teachers, baselines);
with ``distill=kd`` (or any other method) it learns from a frozen teacher, loaded from
``teacher_ckpt`` or trained once into the teacher store. Each run writes its resolved config,
checkpoints (``last.ckpt`` and the validation-best), TensorBoard events and its record
(:mod:`kdlight.run.record`: test accuracy of the last and of the validation-best checkpoint)
into its own directory.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra.utils import instantiate
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig

from kdlight.errors import KdlightError, find_user_error
from kdlight.run.checks import check_config
from kdlight.run.hparams import hparams_of
from kdlight.run.record import RunRecord, record_path, write_record
from kdlight.run.resume import check_resume


def run(cfg: DictConfig) -> dict[str, Any]:
    """Run one experiment described by ``cfg``; return the flat record written into its folder."""
    out = Path(cfg.paths.output_dir)
    try:
        method = check_config(cfg)
    except KdlightError as exc:
        # a sweep's report lists the job as failed; a folder that holds a run is never touched
        if out.is_dir() and not record_path(out).exists() and rank_zero_only.rank == 0:
            try:
                hp_seen = hparams_of(cfg)
            except Exception:  # noqa: BLE001 - the config is what failed
                hp_seen = {"experiment": cfg.get("name"), "seed": cfg.get("seed")}
            write_record(out, RunRecord("failed", hp_seen, error=str(exc)))
        raise
    check_resume(cfg, out)
    hp = hparams_of(cfg)
    started = time.time()

    def write(record: RunRecord) -> None:
        if rank_zero_only.rank == 0:  # under DDP every rank runs this; one writes
            write_record(out, record)

    write(RunRecord("running", hp))
    try:
        metrics = fit_and_test(cfg, hp, method)
    except BaseException as exc:
        user = find_user_error(exc)
        error = str(user or exc) or type(exc).__name__
        write(RunRecord("failed", hp, error=error, wall_time_s=round(time.time() - started, 2)))
        raise
    record = RunRecord("finished", hp, metrics, wall_time_s=round(time.time() - started, 2))
    write(record)
    return record.to_dict()


def save_filled_config(cfg: DictConfig) -> None:
    """Rewrite the run's ``.hydra/config.yaml`` when assembling filled slots from the data
    (:func:`kdlight.run.assemble.fill_from_data`), so readers build the networks it trained."""
    from omegaconf import OmegaConf

    from kdlight.io import atomic_write_text

    saved = Path(cfg.paths.output_dir) / ".hydra" / "config.yaml"
    if rank_zero_only.rank != 0 or not saved.is_file() or saved.is_symlink():
        return
    text = OmegaConf.to_yaml(cfg)
    if saved.read_text() != text:
        atomic_write_text(saved, text)


def fit_and_test(cfg: DictConfig, hp: dict[str, Any], method=None) -> dict[str, Any]:
    """Assemble and fit the run, then test its last and validation-best weights; its metrics."""
    from kdlight.run.assemble import assemble

    parts = assemble(cfg, method)
    save_filled_config(cfg)
    module, datamodule = parts.system, parts.datamodule
    metrics: dict[str, Any] = dict(parts.metrics)
    callbacks = [instantiate(c) for c in (cfg.get("callbacks") or {}).values() if c is not None]
    logger = instantiate(cfg.logger) if cfg.get("logger") else False
    trainer: L.Trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=logger)
    trainer.fit(module, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"))
    # the validation-best checkpoint's callback, not callbacks.last_checkpoint (last.ckpt)
    ckpt_cb = next(
        (
            c
            for c in trainer.callbacks
            if isinstance(c, ModelCheckpoint) and c.filename != ModelCheckpoint.CHECKPOINT_NAME_LAST
        ),
        None,
    )
    last = trainer.test(module, datamodule=datamodule, verbose=False)
    metrics["test/acc_last"] = float(last[0]["test/acc"])
    if "test/agreement" in last[0]:
        metrics["test/agreement_last"] = float(last[0]["test/agreement"])
    if ckpt_cb is not None and ckpt_cb.best_model_path and ckpt_cb.best_model_score is not None:
        best = trainer.test(
            module, datamodule=datamodule, ckpt_path=ckpt_cb.best_model_path, verbose=False
        )
        metrics["test/acc_best"] = float(best[0]["test/acc"])
        if "test/agreement" in best[0]:
            metrics["test/agreement_best"] = float(best[0]["test/agreement"])
        metrics["val/acc_best"] = float(ckpt_cb.best_model_score)
        metrics["best_checkpoint"] = str(ckpt_cb.best_model_path)
        metrics["best_epoch"] = int(
            torch.load(ckpt_cb.best_model_path, map_location="cpu", weights_only=True)["epoch"]
        )
    else:  # no checkpoint written (e.g. fast_dev_run): the last weights are all there is
        metrics["test/acc_best"] = metrics["test/acc_last"]
    metrics["epochs"] = int(trainer.current_epoch)
    log_final(trainer, hp, metrics)
    return metrics


#: Final values every logger gets: distinct tags for the last and the validation-best weights
#: (``trainer.test`` logs both as ``test/acc``) and the teacher's accuracy.
FINAL_KEYS = (
    "test/acc_best",
    "test/acc_last",
    "test/agreement_best",
    "test/agreement_last",
    "val/acc_best",
    "teacher/test_acc",
    "teacher/val_acc",
)


def log_final(trainer: L.Trainer, hp: dict[str, Any], metrics: dict[str, Any]) -> None:
    """Give every logger the run's hparams and final metrics, then close it.

    TensorBoard: the hparams (the method's settings among them) paired with ``hp_metric`` (the
    validation-best weights' test accuracy) and every :data:`FINAL_KEYS` value, each also a
    scalar of its own tag; the stored teacher's training curves are copied to ``tb/teacher``.
    """
    from lightning.pytorch.loggers import TensorBoardLogger, WandbLogger

    final = {"hp_metric": metrics["test/acc_best"]}
    final.update({k: float(metrics[k]) for k in FINAL_KEYS if metrics.get(k) is not None})
    for lg in trainer.loggers:
        if isinstance(lg, TensorBoardLogger):  # the HPARAMS tab pairs them with these metrics
            lg.log_hyperparams(hp, final)
            if rank_zero_only.rank == 0:
                copy_teacher_curves(metrics.get("teacher/source"), Path(lg.log_dir))
        else:  # CSV, W&B, MLflow: hparams once, final metrics as the last logged values
            lg.log_hyperparams(hp)
            lg.log_metrics(final, step=trainer.global_step)
        lg.finalize("success")
        if isinstance(lg, WandbLogger):  # one W&B run per job, also in a multirun's process
            lg.experiment.finish()


def copy_teacher_curves(source: str | None, log_dir: Path) -> None:
    """Copy a stored teacher's TensorBoard events (its training curves) into ``log_dir/teacher``.

    A teacher trained into the store logs beside its weights (``<store>/teachers/<key>/tb``),
    outside any run; a copy (a few kB) puts its curves next to the student's under the run's
    logdir. A teacher file from elsewhere has none, and nothing is copied.
    """
    import shutil

    from kdlight.run.teacher import TEACHER_FILE

    if not isinstance(source, str) or Path(source).name != TEACHER_FILE:
        return  # none, an ensemble's list of members, or the user's own file: not the store's
    events = sorted((Path(source).parent / "tb").glob("events.out.tfevents.*"))
    events = [f for f in events if not f.is_symlink() and f.is_file()]  # the store's own files
    if not events:
        return
    target = log_dir / "teacher"
    target.mkdir(parents=True, exist_ok=True)
    for f in events:
        shutil.copyfile(f, target / f.name)


def objective(record: dict[str, Any]) -> float | None:
    """What a Hydra sweeper optimises: the validation-best accuracy (else the best test one)."""
    return record.get("val/acc_best", record.get("test/acc_best"))


__all__ = ["FINAL_KEYS", "copy_teacher_curves", "fit_and_test", "log_final", "objective", "run"]
