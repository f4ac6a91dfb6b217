"""What the engine, the teacher and the run code may use of a data module: :class:`DataModule`.

A data module is a ``LightningDataModule`` (Lightning calls its hooks, e.g.
``on_after_batch_transfer``) with the attributes below; the run code calls ``prepare_data``,
``setup`` and the loaders itself (evaluation, analysis). Nothing outside :mod:`kdlight.data`
reads any other attribute of one.
:class:`~kdlight.data.modules.array.ArrayDataModule` and its subclasses implement all of it;
a module that wraps another (data-free KD's transfer set) exposes the wrapped one as ``real``,
and the engine reads the training rows from that.

A batch, after ``on_after_batch_transfer``, is a dict: ``idx`` (int64 (B,): sample indices
into the split's arrays), ``x`` (the normalised float input), ``y`` (int64 (B,); absent from
training batches when ``unlabeled``), ``split`` (``train``/``val``/``test``) and ``view``
(the augmentation view of a training batch, None when not augmented).
"""

from __future__ import annotations

from typing import Any, Protocol

import torch


class LabelledSamples(Protocol):
    """What is read of a data module's ``arrays`` (:class:`~kdlight.data.formats.arrays.ImageArrays`
    or :class:`~kdlight.data.formats.image_files.ImageFiles`): the labels and the class names."""

    train_y: torch.Tensor  # int64 (N,): labels of every training row, held-out rows included
    classes: list[str]  # label -> class name


class DataModule(Protocol):
    """The contract between a kdlight data module and the code that trains on it.

    Identity (teacher and store keys, hyper-parameters):
        name: the dataset's name, e.g. ``cifar10``.
        num_classes: the number of classes the networks predict; a module built with
            ``num_classes=None`` (``data=image_folder``'s default) counts them in ``setup``,
            after which the run code puts the count into ``data.num_classes`` for the models.
        val_size, split_seed: how the validation rows are held out of the training set.
        batch_size: training batch size; eval_batch_size: validation/test batch size.
        fingerprint(): a short hash of the training data's content.
        transform_key(): everything that decides the input of a (view, index).
    Rows (valid after ``setup``):
        arrays: the labelled samples (:class:`LabelledSamples`).
        train_idx, val_idx: int64 indices into ``arrays.train_y`` of the rows trained on and
            held out for validation.
        unlabeled: whether training batches carry no labels.
        input_shape: the per-sample input shape, e.g. ``(3, 32, 32)``.
        channels: ``input_shape[0]`` (1 for grey-scale data): a library network's ``in_chans``.
    Evaluation order: ``val``/``test`` loaders interleave the classes (every prefix holds each
        class in proportion), so a limited evaluation sees every class; batches carry ``idx``.
    Lifecycle: prepare_data() (download / decode / cache, once per machine), setup(stage),
        train_dataloader(), val_dataloader(), test_dataloader().
    Inputs (what the teacher store computes from):
        augment: whether training inputs are augmented; views: None (a fresh view per epoch)
            or K (views reused cyclically); current_view(): the view of the current epoch.
        view_batch(idx, view, split, device): the exact normalised input of rows ``idx`` under
            ``view``, as the loader gives it.
        transform(x, idx, view): a uint8 batch -> the normalised (augmented) float batch.
        channels_last: whether batches are NHWC (networks are converted to match).
    """

    name: str
    num_classes: int
    val_size: int
    split_seed: int
    batch_size: int
    eval_batch_size: int
    arrays: LabelledSamples | None
    train_idx: torch.Tensor | None
    val_idx: torch.Tensor | None
    unlabeled: bool
    augment: bool
    views: int | None
    channels_last: bool

    @property
    def input_shape(self) -> tuple[int, ...]: ...

    @property
    def channels(self) -> int: ...

    def prepare_data(self) -> None: ...

    def setup(self, stage: str | None = None) -> None: ...

    def train_dataloader(self) -> Any: ...

    def val_dataloader(self) -> Any: ...

    def test_dataloader(self) -> Any: ...

    def fingerprint(self) -> str: ...

    def transform_key(self) -> dict[str, Any]: ...

    def current_view(self) -> int: ...

    def view_batch(
        self,
        idx: torch.Tensor,
        view: int | None,
        split: str = "train",
        device: torch.device | str | None = None,
    ) -> torch.Tensor: ...

    def transform(self, x: torch.Tensor, idx: torch.Tensor, view: int | None) -> torch.Tensor: ...


def as_batch(batch: Any) -> dict[str, Any]:
    """A batch as the engine reads it: a kdlight dict as is; ``(x, y)`` or ``(x, y, idx)`` from a
    plain DataLoader as ``{"x", "y"[, "idx"]}`` (a plain batch has no sample indices unless it
    carries them third)."""
    if isinstance(batch, dict):
        return batch
    if isinstance(batch, (tuple, list)) and len(batch) in (2, 3):
        out = {"x": batch[0], "y": batch[1]}
        if len(batch) == 3:
            out["idx"] = batch[2]
        return out
    from kdlight.errors import DataError

    kind = f"a {type(batch).__name__}" + (
        f" of {len(batch)}" if isinstance(batch, (tuple, list)) else ""
    )
    raise DataError(
        f"a training batch is {kind}; kdlight takes (x, y), (x, y, idx) or a kdlight data "
        "module's dict batches."
    )
