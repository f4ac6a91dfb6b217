"""What every kdlight system shares: evaluation metrics and the optimizer wiring."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics.classification import MulticlassAccuracy

from kdlight.errors import ConfigError, TrainingDiverged


class EvalModule(L.LightningModule):
    """Validation/test loops, NaN guard and optimizer configuration over ``self.net``.

    ``optimizer`` is a partial (``_partial_: true`` in Hydra) called with the trainable
    parameters; ``scheduler`` (optional) is a partial called with the optimizer and stepped
    once per epoch.
    """

    net: nn.Module

    def __init__(
        self,
        num_classes: int,
        optimizer: Callable[..., torch.optim.Optimizer],
        scheduler: Callable[..., Any] | None = None,
        compile: bool = False,
    ) -> None:
        super().__init__()
        if optimizer is None:
            raise ConfigError("module.optimizer is missing; give a partial optimizer config.")
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.compile_net = bool(compile)
        self.val_acc = MulticlassAccuracy(num_classes=num_classes, average="micro")
        self.test_acc = MulticlassAccuracy(num_classes=num_classes, average="micro")

    def setup(self, stage: str) -> None:
        if self.compile_net and stage == "fit":
            self.net = torch.compile(self.net)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def check_finite(self, loss: torch.Tensor) -> None:
        """Stop training with a clear message at the first non-finite loss."""
        if not torch.isfinite(loss):
            raise TrainingDiverged(
                f"the training loss became {loss.item()} at global step {self.global_step} "
                f"(epoch {self.current_epoch}); lower module.optimizer.lr or check the data (the last "
                "good checkpoint is kept)."
            )

    def _eval_step(
        self, batch: dict[str, Any], stage: str, metric: MulticlassAccuracy
    ) -> torch.Tensor:
        logits = self.net(batch["x"])
        y = batch["y"]
        loss = F.cross_entropy(logits.float(), y)
        metric(logits, y)
        self.log(f"{stage}/loss", loss, prog_bar=False, sync_dist=True, batch_size=y.numel())
        self.log(f"{stage}/acc", metric, prog_bar=True, batch_size=y.numel())
        return logits

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._eval_step(batch, "val", self.val_acc)

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        return self._eval_step(batch, "test", self.test_acc)  # logits, for test-end callbacks

    def trainable_parameters(self):
        return self.net.parameters()

    def configure_optimizers(self):
        optimizer = self.optimizer_factory(
            params=[p for p in self.trainable_parameters() if p.requires_grad]
        )
        if self.scheduler_factory is None:
            return optimizer
        scheduler = self.scheduler_factory(optimizer=optimizer)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "epoch"},
        }


def check_outputs(net: nn.Module, example: torch.Tensor, num_classes: int, role: str) -> None:
    """Raise :class:`ConfigError` unless ``net`` takes ``example``'s shape and predicts ``num_classes``."""
    was = net.training
    net.eval()
    try:
        with torch.no_grad():
            out = net(example)
    except RuntimeError as exc:
        raise ConfigError(
            f"the {role} {type(net).__name__} cannot take this dataset's inputs of shape "
            f"{tuple(example.shape[1:])}: {str(exc).splitlines()[0]}"
        ) from None
    finally:
        net.train(was)
    if out.shape[1] != num_classes:
        raise ConfigError(
            f"the {role} {type(net).__name__} predicts {out.shape[1]} classes but the data has "
            f"{num_classes}; set {role}.num_classes={num_classes}."
        )
