"""A student learning from a frozen teacher."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torchmetrics.classification import MulticlassAccuracy

from kdlight.errors import ConfigError
from kdlight.modules.base import EvalModule


class DistillationModule(EvalModule):
    """Trains ``student`` with ``loss(student_logits, teacher_logits, labels)``.

    The teacher is frozen: always in eval mode (dropout off, BatchNorm statistics fixed), no
    gradients, not in the optimizer, and left out of checkpoints (it is rebuilt from its
    own file). With ``teacher_store`` the teacher's logits for each (view, sample) come from
    a :class:`kdlight.store.TeacherLogitStore` computed once for the exact same inputs,
    instead of a teacher forward every step. Logs ``train/loss`` and every term the loss
    returns (``train/loss_kd``, ``train/loss_ce``), and ``test/agreement`` (top-1 agreement
    of student and teacher on the test set).
    """

    def __init__(
        self,
        student: nn.Module,
        teacher: nn.Module,
        loss: nn.Module,
        num_classes: int,
        optimizer,
        scheduler=None,
        compile: bool = False,
        teacher_store=None,
        log_agreement: bool = True,
    ) -> None:
        super().__init__(num_classes, optimizer, scheduler, compile)
        self.net = student
        self.teacher = teacher
        self.teacher.requires_grad_(False)
        self.teacher.eval()
        self.loss_fn = loss
        self.teacher_store = teacher_store
        self.log_agreement = bool(log_agreement)
        self.train_acc = MulticlassAccuracy(num_classes=num_classes, average="micro")
        self.agreement = MulticlassAccuracy(num_classes=num_classes, average="micro")
        self._positions: torch.Tensor | None = None
        self.strict_loading = False  # teacher weights are not stored in our checkpoints
        self.save_hyperparameters(
            ignore=["student", "teacher", "loss", "optimizer", "scheduler", "teacher_store"]
        )

    @property
    def student(self) -> nn.Module:
        return self.net

    def train(self, mode: bool = True):
        super().train(mode)
        self.teacher.eval()
        return self

    # ---- teacher outputs -----------------------------------------------------------------
    @torch.no_grad()
    def teacher_logits(self, batch: dict[str, Any]) -> torch.Tensor:
        """The teacher's logits for this batch's exact inputs: from the store, or online."""
        if self.teacher_store is None:
            return self.teacher(batch["x"]).float()
        pos = self._positions[batch["idx"].cpu()]
        if bool((pos < 0).any()):
            raise RuntimeError("a training index is not covered by the teacher store")
        view = batch.get("view") or 0
        return self.teacher_store.gather(view, pos).to(batch["x"].device)

    def on_train_epoch_start(self) -> None:
        if self.teacher_store is None:
            return
        dm = self.trainer.datamodule
        if self._positions is None:
            train_idx = dm.train_idx
            self._positions = torch.full((dm.arrays.train_y.numel(),), -1, dtype=torch.long)
            self._positions[train_idx] = torch.arange(train_idx.numel())
        view = dm.current_view() if dm.augment else 0
        train_idx = dm.train_idx

        def compute(pos: torch.Tensor) -> torch.Tensor:
            x = dm.view_batch(train_idx[pos], view if dm.augment else None, device=self.device)
            with torch.inference_mode():
                return self.teacher(x).float().cpu()

        self.teacher_store.get(view, compute, progress=self.trainer.is_global_zero)

    # ---- steps ---------------------------------------------------------------------------
    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        labels = batch.get("y")
        if labels is None and getattr(self.loss_fn, "needs_labels", True):
            raise ConfigError(
                "the distillation loss needs labels (alpha < 1) but data.unlabeled=true; "
                "set distill.alpha=1.0 to train on the teacher's targets alone."
            )
        student_logits = self.net(batch["x"])
        teacher_logits = self.teacher_logits(batch)
        terms = self.loss_fn(student_logits, teacher_logits, labels)
        loss = terms["loss"]
        self.check_finite(loss)
        for name, value in terms.items():
            self.log(
                f"train/{name}", value, prog_bar=name == "loss", batch_size=student_logits.shape[0]
            )
        if labels is not None:
            self.train_acc(student_logits, labels)
            self.log(
                "train/acc", self.train_acc, on_step=False, on_epoch=True, batch_size=labels.numel()
            )
        return loss

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        logits = self._eval_step(batch, "test", self.test_acc)
        if self.log_agreement:
            with torch.no_grad():
                teacher_pred = self.teacher(batch["x"]).argmax(dim=1)
            self.agreement(logits, teacher_pred)
            self.log("test/agreement", self.agreement, batch_size=logits.shape[0])
        return logits

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state = checkpoint.get("state_dict", {})
        for key in [k for k in state if k.startswith("teacher.")]:
            del state[key]

    def trainable_parameters(self):
        return self.net.parameters()
