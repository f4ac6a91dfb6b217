"""The tensor data path shared by every dataset: uint8 arrays in memory, whole-batch transforms.

A batch leaves the DataLoader as ``{"idx", "x" (uint8), "y", "split"}``: the loader only
gathers rows of an in-memory uint8 tensor, so there is no per-sample decoding or PIL work.
``on_after_batch_transfer`` then converts, augments and normalises the whole batch on the
device the Trainer chose. Augmentation is a pure function of (aug_seed, view, sample index)
(see :mod:`kdlight.data.augment`), which is what lets a teacher's outputs be computed once
and served to every run of a sweep (:mod:`kdlight.teacher.store`).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset, RandomSampler

from kdlight.data.augment import random_crop_flip, view_of
from kdlight.data.formats.digest import array_digest, cached_digest
from kdlight.data.subsets import (
    check_fraction,
    class_interleaved,
    labeled_subset,
    split_train_val,
)
from kdlight.errors import ConfigError, DataError

SPLITS = ("train", "val", "test")


def _flat(value: Any) -> bool:
    return value is None or isinstance(value, (torch.Tensor, str, int, float))


class _Indices(Dataset):
    """A dataset whose items are sample indices; the collate function gathers the rows."""

    def __init__(self, indices: torch.Tensor) -> None:
        self.indices = indices

    def __len__(self) -> int:
        return int(self.indices.numel())

    def __getitem__(self, i: int) -> int:
        return int(self.indices[i])

    def __getitems__(self, positions: list[int]) -> torch.Tensor:
        # the DataLoader fetches a whole batch here: one gather, not one tensor index per sample
        # (index_select: 12 us for a batch of 128 on a CPU, where indices[positions] takes 20)
        return self.indices.index_select(0, torch.as_tensor(positions, dtype=torch.long))


class EpochSeededShuffle(RandomSampler):
    """A shuffle whose order is a pure function of (seed, epoch), not of the global RNG's state.

    Lightning calls ``set_epoch`` at each epoch start, as for the ``DistributedSampler`` that
    replaces this one under DDP (seeded alike), so a run resumed from a checkpoint draws the
    same orders as an uninterrupted run. ``seed``: the one ``seed_everything`` last set (what
    Lightning's ``DistributedSampler`` uses too), else a draw from the global RNG (``seed: null``).
    """

    def __init__(self, data_source: Dataset) -> None:
        super().__init__(data_source, generator=torch.Generator())
        seed = os.environ.get("PL_GLOBAL_SEED")
        self.seed = int(seed) if seed is not None else int(torch.randint(2**31, ()).item())
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        self.generator.manual_seed((self.seed * 1_000_003 + int(epoch)) % 2**63)


class ArrayDataModule(L.LightningDataModule):
    """Base data module over in-memory uint8 image arrays; subclasses implement :meth:`load_arrays`.

    Args:
        data_dir: where the dataset's files are (or will be downloaded to).
        batch_size: training batch size (per process under DDP).
        eval_batch_size: validation/test batch size.
        val_size: samples held out of the training set (stratified, seeded) for model selection.
        labeled_fraction: fraction of the remaining training samples used, in (0, 1];
            stratified by class and seeded by ``split_seed`` (e.g. 0.05 for the 5% study).
        unlabeled: when true, training batches carry no labels at all (``"y"`` is absent), so
            only a loss that needs no labels (KD with alpha=1) can train on them.
        augment: random crop (``pad``) + horizontal flip, a pure function of
            (``aug_seed``, view, index); off for validation and test.
        views: ``None`` for a fresh augmented view every epoch; ``K`` to reuse K views
            cyclically (``view = epoch % K``) — an approximation that lets a teacher-output
            store hold only K views.
        mean, std: per-channel normalisation applied after augmentation.
        num_classes: the classes the networks predict (None: counted from the data at setup).
        split_seed: seed of the validation split and the labeled subset.
        download: allow torchvision to download the data when it is not found locally.
        drop_last: drop the last training batch of each epoch when it is smaller than
            ``batch_size`` (timm's training loader does; PyTorch's and Lightning's default keeps it).
    """

    name: str = "array"
    num_classes: int = 10

    def __init__(
        self,
        data_dir: str = "data",
        batch_size: int = 128,
        eval_batch_size: int = 1000,
        val_size: int = 5000,
        labeled_fraction: float = 1.0,
        unlabeled: bool = False,
        augment: bool = False,
        pad: int = 4,
        flip: bool = True,
        views: int | None = None,
        mean: Sequence[float] = (0.5,),
        std: Sequence[float] = (0.5,),
        split_seed: int = 0,
        aug_seed: int = 0,
        num_classes: int | None = 10,
        download: bool = True,
        channels_last: bool = False,
        drop_last: bool = False,
    ) -> None:
        super().__init__()
        check_fraction(labeled_fraction)
        if int(batch_size) <= 0 or int(eval_batch_size) <= 0:
            raise ConfigError(
                f"data.batch_size={batch_size} / eval_batch_size={eval_batch_size} are invalid; both must be > 0."
            )
        if views is not None and int(views) < 1:
            raise ConfigError(
                f"data.views={views} is invalid; use null (one view per epoch) or K >= 1."
            )
        if len(mean) != len(std) or any(float(s) <= 0 for s in std):
            raise ConfigError(
                f"data.mean={list(mean)} / data.std={list(std)} are invalid; equal lengths, std > 0."
            )
        self.data_dir = str(data_dir)
        self.batch_size = int(batch_size)
        self.eval_batch_size = int(eval_batch_size)
        self.val_size = int(val_size)
        self.labeled_fraction = float(labeled_fraction)
        self.unlabeled = bool(unlabeled)
        self.augment = bool(augment)
        self.pad = int(pad)
        self.flip = bool(flip)
        self.views = int(views) if views else None
        self.mean = torch.tensor([float(m) for m in mean]).view(1, -1, 1, 1)
        self.std = torch.tensor([float(s) for s in std]).view(1, -1, 1, 1)
        self.split_seed = int(split_seed)
        self.aug_seed = int(aug_seed)
        if num_classes is not None and (
            isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1
        ):
            raise ConfigError(
                f"data.num_classes={num_classes} is invalid; use an integer >= 1, or null to "
                "count the classes in the data."
            )
        # None until setup() counts the classes (then the run code fills data.num_classes)
        self.num_classes = int(num_classes) if num_classes is not None else None
        self.download = bool(download)
        self.channels_last = bool(channels_last)
        self.drop_last = bool(drop_last)
        self.arrays = None
        self.train_idx: torch.Tensor | None = None
        self.val_idx: torch.Tensor | None = None

    # ---- subclass contract -------------------------------------------------------------
    def load_arrays(self):
        """Return a :class:`~kdlight.data.formats.arrays.ImageArrays` (uint8 NCHW tensors + int64 labels)."""
        raise NotImplementedError

    # ---- Lightning hooks -----------------------------------------------------------------
    def prepare_data(self) -> None:
        self.load_arrays()  # downloads / decodes / caches once, on one process

    def setup(self, stage: str | None = None) -> None:
        if self.arrays is not None:
            return
        arrays = self.load_arrays()
        n_cls = int(max(arrays.train_y.max(), arrays.test_y.max())) + 1
        if self.num_classes is None:
            self.num_classes = max(n_cls, len(arrays.classes))
        if n_cls > self.num_classes:
            raise DataError(
                f"{self.name} has labels up to {n_cls - 1} but data.num_classes={self.num_classes}; "
                f"set data.num_classes={n_cls}."
            )
        if arrays.train_x.numel() == 0 or arrays.test_x.numel() == 0:
            raise DataError(f"{self.name} in {self.data_dir} has no training or no test samples.")
        self.arrays = arrays
        pool, self.val_idx = split_train_val(arrays.train_y, self.val_size, self.split_seed)
        self.train_idx = labeled_subset(
            pool, arrays.train_y, self.labeled_fraction, self.split_seed
        )

    def eval_indices(self, split: str) -> torch.Tensor:
        """The rows of ``val``/``test`` in evaluation order: classes interleaved, so a limited
        evaluation (``trainer.limit_val_batches``, ``+debug=limit``) sees every class."""
        self.setup()
        if split == "val":
            return class_interleaved(self.val_idx, self.arrays.train_y)
        return class_interleaved(torch.arange(self.arrays.test_y.numel()), self.arrays.test_y)

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        self.setup()
        idx = self.train_idx if split == "train" else self.eval_indices(split)
        batch = self.batch_size if split == "train" else self.eval_batch_size
        return DataLoader(
            _Indices(idx),
            batch_size=batch,
            sampler=EpochSeededShuffle(_Indices(idx)) if shuffle else None,
            drop_last=self.drops_last(split, len(idx)),
            num_workers=0,
            collate_fn=functools.partial(self.collate, split=split),
        )

    def drops_last(self, split: str, n: int) -> bool:
        """Whether the ``split`` loader over ``n`` samples drops its last, smaller batch."""
        if split != "train" or not self.drop_last:
            return False
        if n < self.batch_size:
            raise DataError(
                f"data.drop_last=true would drop every training batch: the training set has {n} "
                f"samples, fewer than data.batch_size={self.batch_size}; set data.drop_last=false "
                "or a smaller batch size."
            )
        return True

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)

    # ---- batches -----------------------------------------------------------------------
    def collate(self, indices: list[int], split: str) -> dict[str, Any]:
        """Gather a batch of uint8 rows (and labels, unless training unlabeled)."""
        idx = torch.as_tensor(indices, dtype=torch.long)
        images, labels = self._split_arrays(split)
        # index_select, not images[idx]: advanced indexing of an N-d uint8 tensor is 10-20x slower
        # on a CPU (CIFAR-10 batch of 128: about 440 us against 27 us; benchmarks/README.md)
        batch: dict[str, Any] = {"idx": idx, "x": images.index_select(0, idx), "split": split}
        if not (split == "train" and self.unlabeled):
            batch["y"] = labels.index_select(0, idx)
        return batch

    def _split_arrays(self, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; valid: {SPLITS}")
        if split == "test":
            return self.arrays.test_x, self.arrays.test_y
        return self.arrays.train_x, self.arrays.train_y

    def current_view(self) -> int:
        """The augmentation view of the current training epoch."""
        epoch = self.trainer.current_epoch if self.trainer is not None else 0
        return view_of(epoch, self.views)

    def transfer_batch_to_device(
        self, batch: Any, device: torch.device, dataloader_idx: int
    ) -> Any:
        """This module's flat batch: one ``.to`` per tensor (Lightning's walk over any collection
        costs about 20 us a step); any other batch goes Lightning's way."""
        if not (isinstance(batch, dict) and "split" in batch and all(map(_flat, batch.values()))):
            return super().transfer_batch_to_device(batch, device, dataloader_idx)
        # as Lightning does: non_blocking only where it is safe (not to the CPU or MPS)
        blocking = torch.device(device).type in ("cpu", "mps")
        return {
            k: v.to(device, non_blocking=not blocking) if isinstance(v, torch.Tensor) else v
            for k, v in batch.items()
        }

    def on_after_batch_transfer(self, batch: dict[str, Any], dataloader_idx: int) -> dict[str, Any]:
        if not isinstance(batch, dict) or "split" not in batch:
            return batch
        # without augmentation there is one view: a per-epoch view number would miss the teacher store
        view = self.current_view() if batch["split"] == "train" and self.augment else None
        batch["view"] = view
        batch["x"] = self.transform(batch["x"], batch["idx"], view)
        return batch

    def transform(self, x: torch.Tensor, idx: torch.Tensor, view: int | None) -> torch.Tensor:
        """uint8 batch -> normalised float batch; augmented when ``view`` is given and augment is on."""
        if self.augment and view is not None:
            x = random_crop_flip(x, idx, view, self.aug_seed, pad=self.pad, flip=self.flip)
        mean, std = self._norm_on(x.device)
        # in place, the same operations in the same order as (x / 255 - mean) / std
        x = x.float().div_(255.0).sub_(mean).div_(std)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    def _norm_on(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """``(mean, std)`` on ``device``, copied there once rather than at every batch."""
        cached = getattr(self, "_norm_cache", None)
        if cached is None or cached[0] != device:
            cached = (device, self.mean.to(device), self.std.to(device))
            self._norm_cache = cached
        return cached[1], cached[2]

    def view_batch(self, idx: torch.Tensor, view: int | None, split: str = "train", device=None):
        """The exact normalised (and, for a train view, augmented) input for ``idx``, on ``device``."""
        self.setup()
        images, _ = self._split_arrays(split)
        x = images.index_select(0, idx.cpu())
        if device is not None:
            x = x.to(device, non_blocking=True)
            idx = idx.to(device)
        return self.transform(x, idx, view)

    # ---- identity ----------------------------------------------------------------------
    def transform_key(self) -> dict[str, Any]:
        """Everything that decides the teacher's input for a (view, index): for cache keys."""
        return {
            "augment": self.augment,
            "pad": self.pad if self.augment else None,
            "flip": self.flip if self.augment else None,
            "aug_seed": self.aug_seed if self.augment else None,
            "views": self.views if self.augment else None,
            "mean": self.mean.flatten().tolist(),
            "std": self.std.flatten().tolist(),
        }

    def fingerprint(self) -> str:
        """A short hash of the training data's content: every label and every pixel.

        sha256 of the arrays (CIFAR-10's 150 MB: about 0.2 s), cached under the source files'
        paths, sizes and mtimes (:mod:`kdlight.data.formats.digest`) so a second run reads it.
        """
        if getattr(self, "_fingerprint", None) is None:
            self.setup()
            a = self.arrays
            digest = cached_digest(
                getattr(a, "signature", None), lambda: array_digest(a.train_y, a.train_x)
            )
            self._fingerprint = digest[:16]
        return self._fingerprint

    @property
    def input_shape(self) -> tuple[int, ...]:
        self.setup()
        return tuple(self.arrays.train_x.shape[1:])

    @property
    def channels(self) -> int:
        """Input channels (1 for grey-scale data): what a library network's ``in_chans`` must be."""
        return int(self.input_shape[0])
