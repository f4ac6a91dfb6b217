"""The test-end callback: the test ECE and a confusion-matrix figure in TensorBoard."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import torch

from kdlight.analysis.metrics import N_BINS, calibration_bins, confusion_matrix, ece_from_bins


class TestAnalysisCallback(L.Callback):
    """Logs the test ECE and a confusion-matrix figure to TensorBoard at the end of ``trainer.test``.

    Accumulates a confusion matrix and calibration bins batch by batch (a few hundred numbers,
    summed across processes under DDP), so it keeps no logits. Uses the logits ``test_step``
    returns when it returns them, else runs the model once more on the batch. Logs ``test/ece``
    with ``pl_module.log`` (so it is also in ``trainer.test``'s results). ``figures``: ``"best"``
    draws the figure (tag ``test/confusion_matrix_best``) only for the test of a checkpoint
    (``kdlight.run.train`` tests the last weights, then the val-best checkpoint) or when no best
    checkpoint exists (tag ``..._last``), so a run renders one figure; ``"all"`` draws every
    test; ``"none"`` logs the ECE only.
    """

    __test__ = False  # not a pytest test class

    def __init__(self, n_bins: int = N_BINS, figures: str = "best") -> None:
        if figures not in ("best", "all", "none"):
            raise ValueError(f"figures={figures!r} is invalid; use best, all or none.")
        self.n_bins = int(n_bins)
        self.figures = figures
        self._cm: torch.Tensor | None = None
        self._bins: list[torch.Tensor] | None = None

    def on_test_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._cm, self._bins = None, None

    def on_test_batch_end(
        self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0
    ) -> None:
        if not isinstance(batch, dict) or "y" not in batch:
            return
        logits = outputs if isinstance(outputs, torch.Tensor) else None
        if logits is None and isinstance(outputs, dict):
            logits = (
                outputs.get("logits") if isinstance(outputs.get("logits"), torch.Tensor) else None
            )
        if logits is None:
            with torch.no_grad():
                logits = pl_module(batch["x"])
        probs = torch.softmax(logits.detach().float(), dim=1)
        conf, pred = probs.max(dim=1)
        labels = batch["y"].detach()
        cm = confusion_matrix(labels.cpu(), pred.cpu(), probs.shape[1])
        bins = calibration_bins(conf.cpu(), (pred == labels).cpu(), self.n_bins)
        self._cm = cm if self._cm is None else self._cm + cm
        self._bins = (
            list(bins)
            if self._bins is None
            else [a + b for a, b in zip(self._bins, bins, strict=True)]
        )

    def on_test_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._cm is None:
            return
        cm, bins = self._cm, self._bins
        if trainer.world_size > 1:
            cm = trainer.strategy.reduce(cm.to(pl_module.device), reduce_op="sum").cpu()
            bins = [
                trainer.strategy.reduce(b.to(pl_module.device), reduce_op="sum").cpu() for b in bins
            ]
        ece = ece_from_bins(*bins)
        pl_module.log("test/ece", ece)
        kind = self._checkpoint_kind(trainer)
        if kind is None or not trainer.is_global_zero:
            return
        from lightning.pytorch.loggers import TensorBoardLogger

        tb = [lg for lg in trainer.loggers if isinstance(lg, TensorBoardLogger)]
        if not tb:
            return
        from kdlight.reporting import plots

        names = list(getattr(getattr(trainer.datamodule, "arrays", None), "classes", None) or [])
        if len(names) != cm.shape[0]:
            names = [str(i) for i in range(cm.shape[0])]
        acc = float(cm.diagonal().sum() / cm.sum().clamp_min(1))
        title = f"Test, {kind} checkpoint: acc {100 * acc:.2f}%, ECE {100 * ece:.2f}%"
        fig = plots.confusion_matrix_figure(cm.numpy(), names, title=title)
        for lg in tb:
            lg.experiment.add_figure(
                f"test/confusion_matrix_{kind}", fig, global_step=trainer.global_step, close=False
            )

    def _checkpoint_kind(self, trainer: L.Trainer) -> str | None:
        """``best``/``last``/the checkpoint's name for the figure's tag, or None to draw nothing."""
        if self.figures == "none":
            return None
        ckpt = getattr(trainer, "ckpt_path", None)
        if ckpt:
            stem = Path(ckpt).stem
            return "best" if stem.startswith("best") else stem
        best = (
            getattr(trainer.checkpoint_callback, "best_model_path", "")
            if trainer.checkpoint_callback
            else ""
        )
        if self.figures == "best" and best:
            return None  # the val-best checkpoint is tested next; draw that one
        return "last"
