"""A step's teacher outputs: carried by the batch, served from the store, or computed online.

:class:`TeacherOutputs` is the engine's one source of teacher logits and teacher-layer forms.
It decides once per run what the store keeps (compact forms always; raw maps only within
``teacher_store.max_gb`` over the run's views), fills each epoch's view before the epoch's
steps (:meth:`TeacherOutputs.start_epoch`), and answers each step (:meth:`TeacherOutputs.step`):

- logits the batch carries (a data-free transfer set) win;
- else, when every teacher layer the step taps has a stored form, this epoch's stored view
  (gathered on the training device by each sample's position in the store, no host sync);
- else the teacher runs online on the batch (forms computed from the taps).

:func:`store_options` and :func:`open_store` build the store from ``teacher_store`` with the
key of everything the stored bytes depend on (teacher weights, data, indices, transform,
augmentation version, how they were filled).
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import torch
from torch import nn

from kdlight.methods.base import RAW, Form, Method
from kdlight.methods.taps import tapped_forward

# logged as the engine: the system says what it is served from (users and tests filter on it)
log = logging.getLogger("kdlight.engine")


def store_options(cfg) -> dict[str, Any] | None:
    """``teacher_store``'s options (see :class:`kdlight.teacher.store.TeacherLogitStore`), or None when off."""
    store_cfg = cfg.get("teacher_store")
    if not store_cfg or not store_cfg.get("enabled", False):
        return None
    from kdlight.teacher.store import DEFAULT_MAX_GB, DEFAULT_SHARD_ROWS

    return {
        "dtype": store_cfg.get("dtype", "float16"),
        "batch_size": store_cfg.get("batch_size", 256),
        "top_k": store_cfg.get("top_k", None),
        "shard_rows": store_cfg.get("shard_rows", DEFAULT_SHARD_ROWS),
        "max_gb": store_cfg.get("max_gb", DEFAULT_MAX_GB),
    }


def store_key(teacher: nn.Module, datamodule, options: dict[str, Any]) -> dict[str, Any]:
    """Everything the stored bytes depend on: the teacher's weights, the data and how it was filled."""
    from kdlight.checkpoints import weights_hash
    from kdlight.data.augment import AUGMENT_VERSION
    from kdlight.io import key_hash

    return {
        "teacher": weights_hash(teacher),
        "data": datamodule.name,
        "fingerprint": datamodule.fingerprint(),
        "indices": key_hash({"idx": datamodule.train_idx.tolist()}),
        "transform": datamodule.transform_key(),
        "augment_version": AUGMENT_VERSION,
        # float16 logits of one image can differ in the last bit with the batch that computed
        # them (batched kernels): what decides the bytes is part of the key
        "fill": {
            "dtype": options["dtype"],
            "batch_size": options["batch_size"],
            "channels_last": bool(getattr(datamodule, "channels_last", False)),
        },
    }


def open_store(cfg, teacher: nn.Module, datamodule):
    """The teacher store of this run's teacher and data (``paths.store_dir``/logits), or None when off."""
    options = store_options(cfg)
    if options is None:
        return None
    from hydra.utils import to_absolute_path

    from kdlight.teacher.store import TeacherLogitStore

    root = Path(to_absolute_path(cfg.paths.store_dir)) / "logits"
    return TeacherLogitStore(
        root,
        store_key(teacher, datamodule, options),
        num_samples=int(datamodule.train_idx.numel()),
        num_classes=datamodule.num_classes,
        **options,
    )


class TeacherOutputs:
    """The teacher's logits and layer forms for each training step (see the module docstring).

    ``teacher`` is the engine's frozen teacher (the same module, so it moves with the engine);
    ``store`` a :class:`~kdlight.teacher.store.TeacherLogitStore` or None (always online).
    """

    def __init__(self, teacher: nn.Module, method: Method, store=None) -> None:
        self.teacher = teacher
        self.method = method
        self.store = store if method.uses_store else None
        self.forms: dict[str, Form] = {}  # teacher layer -> the form the method reads
        self.form_shapes: dict[str, tuple[int, ...]] = {}
        self.stored_layers: frozenset[str] | None = None  # decided at the first epoch
        self._positions: torch.Tensor | None = None
        self._positions_on_table: torch.Tensor | None = None
        self._served = None  # the StoredView of this epoch's view, on the training device
        self._served_tables: dict[str, str] = {}  # teacher layer -> its table in self._served
        self._table_view: int | None = None

    def set_forms(self, t_feats: dict[str, torch.Tensor]) -> None:
        """Record the method's forms of the tapped teacher layers and their row shapes."""
        self.forms = {n: f for n, f in self.method.teacher_forms().items() if n in t_feats}
        self.form_shapes = {
            n: tuple(int(d) for d in f.fn(t_feats[n]).shape[1:]) for n, f in self.forms.items()
        }

    def apply_forms(self, feats: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Online taps turned into the forms the method reads (raw where it declares none)."""
        return {n: self.forms[n].fn(f) if n in self.forms else f for n, f in feats.items()}

    # ---- per batch -------------------------------------------------------------------------
    @torch.no_grad()
    def logits(self, batch: dict[str, Any]) -> torch.Tensor:
        """The teacher's logits for this batch's exact inputs: from the store, or online."""
        if self.store is None or self._positions is None:
            return self.teacher(batch["x"]).float()
        view = batch.get("view") or 0
        if view != self._table_view or self._served is None:  # not this epoch's view
            pos = self._positions[batch["idx"].cpu()]
            return self.store.gather(view, pos).to(batch["x"].device)
        # on the table's device, no host sync; a row outside training is out of range: IndexError
        return self._served.logits(self._positions_on_table[batch["idx"]])

    def _served_from_store(self, plan, batch: dict[str, Any]) -> bool:
        """Whether this step's teacher outputs all come from this epoch's stored view."""
        return (
            self._served is not None
            and (batch.get("view") or 0) == self._table_view
            and (plan.teacher_logits or bool(plan.teacher_layers))
            and set(plan.teacher_layers) <= self._served_tables.keys()
        )

    def step(
        self, plan, batch: dict[str, Any], stop_early: bool
    ) -> tuple[torch.Tensor | None, dict[str, torch.Tensor]]:
        """``(teacher logits or None, {teacher layer: form})`` for what ``plan`` asks of this batch."""
        t_logits, t_feats = None, {}
        if "teacher_logits" in batch:  # computed with the batch (data-free transfer set)
            t_logits = batch["teacher_logits"]
        elif self._served_from_store(plan, batch):
            # on the tables' device, no host sync; a row outside training: IndexError
            pos = self._positions_on_table[batch["idx"]]
            if plan.teacher_logits:
                t_logits = self._served.logits(pos)
            for n in plan.teacher_layers:
                t_feats[n] = self._served.rows(self._served_tables[n], pos).float()
        elif plan.teacher_layers:
            with torch.no_grad():
                t_logits, t_feats = tapped_forward(
                    self.teacher, batch["x"], plan.teacher_layers, stop_early, "teacher layer"
                )
                t_feats = self.apply_forms(t_feats)
            t_logits = None if t_logits is None else t_logits.float()
        elif plan.teacher_logits:
            t_logits = self.logits(batch)
        return t_logits, t_feats

    # ---- per epoch -------------------------------------------------------------------------
    def _serves(self, epoch: int) -> bool:
        plan = self.method.plan(epoch)
        if self.store is None or not (plan.teacher_logits or plan.teacher_layers):
            return False
        return set(plan.teacher_layers) <= (self.stored_layers or frozenset())

    def _form_tables(self) -> dict[str, Any]:
        """Teacher layer -> the store table of its form."""
        return {
            n: self.store.feature_table(n, f.name, self.form_shapes[n])
            for n, f in self.forms.items()
        }

    def _decide(self, dm, max_epochs: int | None, say: bool) -> None:
        """Which teacher layers the store keeps for this run (once); say so in the log."""
        store, name = self.store, type(self.method).__name__.lower()
        tapped = list(dict.fromkeys(self.method.teacher_layers))
        tables = self._form_tables()
        views = (getattr(dm, "views", None) or max_epochs) if dm.augment else 1
        rows = int(dm.train_idx.numel())
        per_view = rows * sum(tables[n].row_bytes for n in tables)
        # compact forms are always kept; raw maps only within max_gb over the run's views
        raw = rows * sum(t.row_bytes for n, t in tables.items() if self.forms[n].name == RAW.name)
        total_gb = raw * views / 2**30 if views and views > 0 else math.inf
        forms = ", ".join(f"{self.forms[n].name} of {n}" for n in tables)
        self.stored_layers = frozenset()
        if not tapped:
            msg = f"teacher store: distill={name} is served the teacher's logits"
        elif not tables or set(tapped) - set(tables):
            raw = ", ".join(sorted(set(tapped) - set(tables)))
            msg = (
                f"teacher store: distill={name} declares no store form for the teacher layer(s) "
                f"{raw}, so the teacher runs online on the steps that tap them"
            )
        elif raw and total_gb > store.max_gb:
            msg = (
                f"teacher store: distill={name} would keep {forms}: {raw / 2**20:.1f} MB of raw "
                f"maps per view, {total_gb:.2f} GB over the run's views > teacher_store.max_gb="
                f"{store.max_gb:g}, so the teacher runs online on the steps that tap them"
            )
        else:
            self.stored_layers = frozenset(tables)
            msg = (
                f"teacher store: distill={name} is served the teacher's logits and {forms} "
                f"({store.dtype}, {per_view / 2**20:.1f} MB per view)"
            )
        if say:
            log.info(msg)

    def start_epoch(
        self, dm, epoch: int, device: torch.device, max_epochs: int | None, main: bool
    ) -> None:
        """Fill (or open) this epoch's stored view and keep it on ``device`` for the epoch's steps.

        ``dm`` is the real data module (its ``train_idx``, ``view_batch``, ``current_view``);
        ``main``: this is the process that logs and shows progress.
        """
        if self.store is None:
            return
        if self.stored_layers is None:
            self._decide(dm, max_epochs, main)
        if not self._serves(epoch):
            return
        train_idx = dm.train_idx
        if self._positions is None:
            # row -> position in the store; rows not trained on get N (out of range), never a
            # silent wrong row
            self._positions = torch.full(
                (dm.arrays.train_y.numel(),), train_idx.numel(), dtype=torch.long
            )
            self._positions[train_idx] = torch.arange(train_idx.numel())
        view = dm.current_view() if dm.augment else 0
        # this epoch's tables: the logits and the forms of the layers its steps tap
        layers = list(dict.fromkeys(self.method.plan(epoch).teacher_layers))
        tables = {n: t for n, t in self._form_tables().items() if n in layers}

        def compute(pos: torch.Tensor) -> torch.Tensor | dict[str, torch.Tensor]:
            x = dm.view_batch(train_idx[pos], view if dm.augment else None, device=device)
            with torch.inference_mode():
                if not layers:
                    return self.teacher(x).float().cpu()
                logits, feats = tapped_forward(self.teacher, x, layers, False, "teacher layer")
                out = {"logits": logits.float().cpu()}
                for n in layers:
                    out[tables[n].name] = self.forms[n].fn(feats[n]).float().cpu()
                return out

        served = self.store.get_view(
            view, compute, {t.name: t.row_shape for t in tables.values()}, progress=main
        )
        # the view just validated by get_view(), kept for the epoch on the training device (a
        # CPU table stays a memory map): each step gathers its rows without re-reading files
        self._served = served.to(device)
        self._served_tables = {n: t.name for n, t in tables.items()}
        self._table_view = view
        self._positions_on_table = self._positions.to(device)


__all__ = ["TeacherOutputs", "open_store", "store_key", "store_options"]
