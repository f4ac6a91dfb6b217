"""The distillation engine: a student learning from a frozen teacher through any method.

One system runs every :class:`kdlight.methods.base.Method`; it never names one. The teacher's
outputs come from :class:`kdlight.teacher.outputs.TeacherOutputs` (store, online or carried by
the batch). Trained by the CLI with a kdlight data module, or by a plain ``lightning.Trainer``
on ``(x, y)`` batches (the library API: ``kdlight.DistillationModule(student, teacher,
method="kd", alpha=0.9)``).
"""

from __future__ import annotations

import itertools
import logging
from typing import Any

import torch
from torch import nn
from torchmetrics.classification import MulticlassAccuracy

from kdlight.data.protocol import as_batch
from kdlight.engine.base import DEFAULT_OPTIMIZER, EvalModule, num_classes_of
from kdlight.errors import ConfigError
from kdlight.methods.base import Context, Method
from kdlight.methods.taps import plain, tapped_forward
from kdlight.teacher.outputs import TeacherOutputs

log = logging.getLogger("kdlight.engine")


class DistillationModule(EvalModule):
    """Trains ``student`` from a frozen ``teacher`` through ``method`` (any distillation method).

    The teacher is frozen: always in eval mode (dropout off, BatchNorm statistics fixed), no
    gradients, not in the optimizer, and left out of checkpoints (it is rebuilt from its own
    file). Each step runs what ``method.plan(epoch)`` asks for: forward hooks only on the
    layers it names and only during the step; the teacher's logits and layer forms come from
    :class:`~kdlight.teacher.outputs.TeacherOutputs` (``teacher_store``, online, or carried by
    the batch; decided once per run and logged when training starts).
    The method's own parameters are in the optimizer and, with its buffers, in checkpoints.
    Logs ``train/<term>`` for every term the method returns, ``train/acc`` and
    ``test/agreement`` (top-1 agreement of student and teacher on the test set).

    A teacher-free method (``method.needs_teacher`` False) takes ``teacher=None`` (a teacher
    given anyway is ignored, with a warning). Validation and test run ``method.deployed(student)``
    where the method returns one (:meth:`eval_net`); a method's own optimizer and separated
    gradients (:meth:`Method.optimizer`, :meth:`Method.separate_gradients`) are wired here.
    """

    def __init__(
        self,
        student: nn.Module,
        teacher: nn.Module | None,
        method: Method | str = "kd",
        num_classes: int | None = None,
        optimizer=DEFAULT_OPTIMIZER,
        scheduler=None,
        compile: bool = False,
        teacher_store=None,
        log_agreement: bool = True,
        fused_optimizer: bool | str = "auto",
        example_input: torch.Tensor | None = None,
        **method_hparams: Any,
    ) -> None:
        num_classes = num_classes_of(student) if num_classes is None else num_classes
        super().__init__(num_classes, optimizer, scheduler, compile, fused_optimizer)
        if isinstance(method, str):
            from kdlight.config import method_from_name

            method = method_from_name(method, **method_hparams)
        elif method_hparams:
            raise ConfigError(
                f"DistillationModule got settings {sorted(method_hparams)} beside a built method; "
                "give them to the method's constructor, or name the method (method='kd')."
            )
        if not isinstance(method, Method):
            raise ConfigError(
                f"distill._target_ builds a {type(method).__name__}, which is not a kdlight method "
                "(a subclass of kdlight.methods.base.Method)."
            )
        if not method.needs_teacher:
            if teacher is not None:
                log.warning(
                    "distill=%s learns without a teacher: the teacher given is ignored (none is "
                    "built, loaded, trained or stored)",
                    type(method).__name__.lower(),
                )
            teacher, teacher_store = None, None
        elif teacher is None:
            raise ConfigError(
                f"method {type(method).__name__} distills from a teacher but teacher=None; give "
                "the teacher network (only teacher-free methods such as method='tfkd' take None)."
            )
        self.net = student
        self.teacher = teacher
        if teacher is not None:
            self.teacher.requires_grad_(False)
            self.teacher.eval()
        self.method = method
        # the one source of this system's teacher logits and forms (store / online / carried)
        self.teacher_outputs = TeacherOutputs(teacher, method, teacher_store)
        self.log_agreement = bool(log_agreement) and teacher is not None
        self.agreement = MulticlassAccuracy(num_classes=num_classes, average="micro")
        self.num_classes = int(num_classes)
        self.example_input = example_input
        self._built = False
        self.strict_loading = False  # teacher weights are not stored in our checkpoints
        self.save_hyperparameters(
            ignore=[
                "student",
                "teacher",
                "method",
                "optimizer",
                "scheduler",
                "teacher_store",
                "example_input",
            ]
        )

    @property
    def student(self) -> nn.Module:
        return self.net

    def train(self, mode: bool = True):
        super().train(mode)
        if self.teacher is not None:
            self.teacher.eval()
        return self

    # ---- the method's own layers ---------------------------------------------------------
    @torch.no_grad()
    def build_method(self, example: torch.Tensor) -> None:
        """Give the method the tapped features of ``example`` so it can size its own layers."""
        student = plain(self.net)
        self.method.resolve_layers(student, self.teacher)
        was = student.training
        student.eval()
        try:
            s_layers, t_layers = self.method.student_layers, self.method.teacher_layers
            # whole forwards (one example batch): a module called twice (a block's shared ReLU)
            # is seen at its last call, as during training steps that do not stop early
            _, s_feats = tapped_forward(student, example, s_layers, False, "student layer")
            t_feats = {}
            if self.teacher is not None:
                _, t_feats = tapped_forward(self.teacher, example, t_layers, False, "teacher layer")
        finally:
            student.train(was)
        self.method.build(s_feats, t_feats, self.num_classes)
        self.method.to(example.device)
        self.teacher_outputs.set_forms(t_feats)
        self._built = True

    def setup(self, stage: str) -> None:
        if not self._built:
            dm = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
            dm = getattr(dm, "real", dm)  # a transfer-set module wraps the real data
            if dm is not None and hasattr(dm, "view_batch"):
                idx = dm.train_idx if dm.train_idx.numel() else dm.val_idx
                self.method.bind_data(
                    int(dm.arrays.train_y.numel()),
                    dm.train_idx,
                    None if getattr(dm, "unlabeled", False) else dm.arrays.train_y[dm.train_idx],
                )
                self.build_method(dm.view_batch(idx[:2], None))
            else:
                self._build_without_data_module()
        super().setup(stage)

    def _build_without_data_module(self) -> None:
        """Build the method for plain ``(x, y)`` loaders or another LightningDataModule."""
        name = type(self.method).__name__
        kind = type(self.method)
        if (
            kind.bind_data is not Method.bind_data
            or kind.fit_datamodule is not Method.fit_datamodule
        ):
            raise ConfigError(
                f"method {name} keeps state per training sample or makes its own training data; "
                "fit it with a kdlight data module (python -m kdlight.train ... or kdlight.data)."
            )
        if self.example_input is not None:
            self.build_method(self.example_input[:2])
            return
        self.method.resolve_layers(plain(self.net), self.teacher)
        if self.method.student_layers or self.method.teacher_layers:
            raise ConfigError(
                f"method {name} sizes its layers from the networks' features: pass "
                "example_input=<a batch of inputs> to DistillationModule."
            )
        self.method.build({}, {}, self.num_classes)
        self.teacher_outputs.set_forms({})
        self._built = True

    def fit_datamodule(self, datamodule):
        """The data module to fit on (the method may swap the training data, e.g. data-free KD)."""
        return self.method.fit_datamodule(datamodule, self.teacher)

    def trainable_parameters(self):
        return itertools.chain(self.net.parameters(), self.method.parameters())

    def eval_net(self) -> nn.Module:
        """The network validation and test run: the method's :meth:`~Method.deployed` one, else the student."""
        deployed = self.method.deployed(self.net) if self._built else None
        return self.net if deployed is None else deployed

    def build_optimizer(self, params: list[torch.Tensor], clips: bool) -> torch.optim.Optimizer:
        own = self.method.optimizer(self.optimizer_factory, params)
        return super().build_optimizer(params, clips) if own is None else own

    # ---- teacher outputs: kdlight.teacher.outputs decides, fills and serves them --------------
    @property
    def teacher_store(self):
        """The teacher store this system is served from, or None (online)."""
        return self.teacher_outputs.store

    def teacher_logits(self, batch: dict[str, Any]) -> torch.Tensor:
        """The teacher's logits for this batch's exact inputs: from the store, or online."""
        return self.teacher_outputs.logits(batch)

    def on_train_epoch_start(self) -> None:
        super().on_train_epoch_start()
        trainer = self.trainer
        if self.method.restarts_optimizer(self.current_epoch):
            for optimizer in trainer.optimizers:  # the torch optimizers themselves
                optimizer.state.clear()
            log.info("epoch %d: the optimizer's state starts afresh (%s's next stage)",
                     self.current_epoch, type(self.method).__name__)  # fmt: skip
        self.teacher_outputs.start_epoch(
            trainer.datamodule,
            self.current_epoch,
            self.device,
            trainer.max_epochs,
            trainer.is_global_zero,
        )

    # ---- steps ---------------------------------------------------------------------------
    def context(self, batch: dict[str, Any]) -> Context:
        """Run what the method's plan asks for on ``batch`` and collect it into a :class:`Context`."""
        batch = as_batch(batch)
        self.method.check_batch(batch)
        epoch = self.current_epoch
        plan = self.method.plan(epoch)
        labels = batch.get("y")
        if labels is None and self.method.needs_labels:
            raise ConfigError(
                f"distill={type(self.method).__name__} needs labels but the training data is "
                "unlabeled (data.unlabeled=true); use a method or setting that learns from the "
                "teacher alone (e.g. distill=kd distill.alpha=1.0)."
            )
        x = batch["x"]
        stop = plan.stop_early
        if plan.student_layers:
            s_logits, s_feats = tapped_forward(
                self.net, x, plan.student_layers, stop, "student layer"
            )
        else:
            s_logits, s_feats = self.net(x), {}
        if self.teacher is None:  # a teacher-free method
            t_logits, t_feats = None, {}
        else:
            t_logits, t_feats = self.teacher_outputs.step(plan, batch, stop)
        trainer = self._trainer
        return Context(
            student_logits=s_logits,
            teacher_logits=t_logits,
            labels=labels,
            idx=batch.get("idx"),
            epoch=epoch,
            step=self.global_step,
            max_epochs=trainer.max_epochs if trainer is not None else None,
            student_feats=s_feats,
            teacher_feats=t_feats,
            batch=batch,
        )

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        ctx = self.context(batch)
        terms = self.method(ctx)
        loss = terms["loss"]
        self.check_finite(loss)
        if ctx.labels is not None and ctx.student_logits is not None:
            self.update_train_acc(ctx.student_logits, ctx.labels)
        self.log_train_terms(terms, ctx.batch["x"].shape[0])
        parts = self.method.separate_gradients(terms)
        return loss if parts is None else self.hand_over_distill_gradient(*parts)

    def hand_over_distill_gradient(self, task: torch.Tensor, distill: torch.Tensor) -> torch.Tensor:
        """Give the optimizer the distillation loss's gradient; return the task loss to back-propagate.

        The gradient is scaled as Lightning scales the task loss (the mixed-precision loss
        scale, divided by ``accumulate_grad_batches``); the optimizer unscales it (see
        :meth:`Method.separate_gradients`).
        """
        trainer = self.trainer
        optimizer = self.optimizers(use_pl_optimizer=False)
        name = type(self.method).__name__
        if not hasattr(optimizer, "add_distill_gradients"):
            raise ConfigError(
                f"method {name} separates its gradients but its optimizer "
                f"{type(optimizer).__name__} cannot take them (no add_distill_gradients)."
            )
        if trainer.world_size > 1:
            raise ConfigError(
                f"distill={name.lower()} updates with separately computed gradients, which "
                f"distributed training does not average; train it in one process "
                f"(trainer.devices=1, not {trainer.world_size} processes)."
            )
        params = [p for g in optimizer.param_groups for p in g["params"]]
        scaler = getattr(trainer.precision_plugin, "scaler", None)
        scale = float(scaler.get_scale()) if scaler is not None and scaler.is_enabled() else 1.0
        distill = distill / max(int(trainer.accumulate_grad_batches), 1)
        grads = (
            torch.autograd.grad(distill * scale, params, retain_graph=True, allow_unused=True)
            if distill.requires_grad
            else [None] * len(params)
        )
        optimizer.add_distill_gradients(params, grads, scale)
        if not task.requires_grad:  # no task gradient this step: back-propagate a zero
            task = task + 0.0 * distill
        return task

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        batch = as_batch(batch)
        logits = self._eval_step(batch, "test")
        if self.log_agreement and self.teacher is not None:
            with torch.no_grad():
                teacher_pred = self.teacher(batch["x"]).argmax(dim=1)
            self.agreement.update(logits, teacher_pred)
        return logits

    def on_test_epoch_end(self) -> None:
        super().on_test_epoch_end()
        if self.log_agreement and self.agreement.update_called:
            self.log("test/agreement", self.agreement)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state = checkpoint.get("state_dict", {})
        for key in [k for k in state if k.startswith("teacher.")]:
            del state[key]
