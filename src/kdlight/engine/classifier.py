"""Cross-entropy training of one network: teachers and students trained alone."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from kdlight.data.protocol import as_batch
from kdlight.engine.base import DEFAULT_OPTIMIZER, EvalModule, num_classes_of
from kdlight.errors import ConfigError


class ClassifierModule(EvalModule):
    """Cross-entropy training of ``net``; logs ``train/loss``, ``train/acc``, ``val/*``, ``test/*``."""

    def __init__(
        self,
        net: nn.Module,
        num_classes: int | None = None,
        optimizer=DEFAULT_OPTIMIZER,
        scheduler=None,
        compile: bool = False,
        fused_optimizer: bool | str = "auto",
    ):
        num_classes = num_classes_of(net) if num_classes is None else num_classes
        super().__init__(num_classes, optimizer, scheduler, compile, fused_optimizer)
        self.net = net
        self.save_hyperparameters(ignore=["net", "optimizer", "scheduler"])

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        batch = as_batch(batch)
        if "y" not in batch:
            raise ConfigError(
                "cross-entropy training needs labels but data.unlabeled=true; "
                "train on unlabeled data with distillation (distill=kd distill.alpha=1.0)."
            )
        logits = self.net(batch["x"])
        loss = F.cross_entropy(logits.float(), batch["y"])
        self.check_finite(loss)
        self.update_train_acc(logits, batch["y"])
        self.log_train_terms({"loss": loss}, logits.shape[0])
        return loss
