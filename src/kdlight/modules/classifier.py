"""Train any network with cross-entropy: teachers and student baselines."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics.classification import MulticlassAccuracy

from kdlight.errors import ConfigError
from kdlight.modules.base import EvalModule


class ClassifierModule(EvalModule):
    """Cross-entropy training of ``net``; logs ``train/loss``, ``train/acc``, ``val/*``, ``test/*``."""

    def __init__(
        self, net: nn.Module, num_classes: int, optimizer, scheduler=None, compile: bool = False
    ):
        super().__init__(num_classes, optimizer, scheduler, compile)
        self.net = net
        self.train_acc = MulticlassAccuracy(num_classes=num_classes, average="micro")
        self.save_hyperparameters(ignore=["net", "optimizer", "scheduler"])

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        if "y" not in batch:
            raise ConfigError(
                "cross-entropy training needs labels but data.unlabeled=true; "
                "train on unlabeled data with distillation (distill=hinton distill.alpha=1.0)."
            )
        logits = self.net(batch["x"])
        loss = F.cross_entropy(logits.float(), batch["y"])
        self.check_finite(loss)
        self.train_acc(logits, batch["y"])
        self.log("train/loss", loss, prog_bar=True, batch_size=logits.shape[0])
        self.log(
            "train/acc", self.train_acc, on_step=False, on_epoch=True, batch_size=logits.shape[0]
        )
        return loss
