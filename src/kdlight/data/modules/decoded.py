"""The per-image loader of :class:`~kdlight.data.modules.image_folder.ImageFolderDataModule`:
items decoded by persistent DataLoader workers, the epoch's view set in shared memory before the
epoch's first index reaches them, and a corrupt file raised as one sentence in the main process
(not as a worker's traceback)."""

from __future__ import annotations

import os
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from kdlight.errors import DataError


class Decoded(Dataset):
    """Items ``(index, uint8 image, view)`` for the sample indices ``indices``; ``view`` set per epoch.

    ``images(i)``: sample ``i`` as a PIL image (:class:`FolderImages` or
    :class:`~kdlight.data.shards.read.ShardImages`). ``view`` lives in a one-element shared-memory
    tensor, so a worker started in an earlier epoch reads the value the main process set for this
    one (the workers persist across epochs: restarting them cost about 0.8 s an epoch on 2 cores).
    """

    def __init__(self, images, indices: torch.Tensor, geometry, train: bool) -> None:
        self.images = images
        self.indices = indices
        self.geometry = geometry
        self.train = train  # only training images are augmented
        self._view = torch.full((1,), -1, dtype=torch.int64).share_memory_()  # -1: None

    @property
    def view(self) -> int | None:
        v = int(self._view[0])
        return None if v < 0 else v

    @view.setter
    def view(self, value: int | None) -> None:
        self._view[0] = -1 if value is None else int(value)

    def __len__(self) -> int:
        return int(self.indices.numel())

    def __getitem__(self, k: int) -> tuple[int, torch.Tensor | str, int | None]:
        i = int(self.indices[k])
        view = self.view if self.train else None
        try:
            return i, self.geometry(self.images(i), i, view), view
        except DataError as exc:  # raised in the main process (_Checked), not as a worker traceback
            return i, str(exc), view


def collate(items, labels: torch.Tensor | None, split: str) -> dict[str, Any]:
    errors = [it[1] for it in items if isinstance(it[1], str)]
    if errors:
        return {"error": errors[0], "split": split}
    idx = torch.tensor([it[0] for it in items], dtype=torch.long)
    batch: dict[str, Any] = {
        "idx": idx,
        "x": torch.stack([it[1] for it in items]),
        "split": split,
        "view": items[0][2] if items else None,
    }
    if labels is not None:
        batch["y"] = labels[idx]
    return batch


class ViewLoader(DataLoader):
    """A DataLoader that gives its dataset the current view each time an epoch starts iterating it.

    The view is written before ``DataLoader.__iter__`` hands the epoch's first indices to the
    workers, so every item of the epoch is decoded for it, whether the workers persist
    (``persistent_workers``, which :class:`~kdlight.data.modules.image_folder.ImageFolderDataModule`
    sets) or start anew; the sampler, which Lightning may replace (DDP), stays a plain one.
    """

    def __init__(self, *args, view_fn=None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.view_fn = view_fn

    def __iter__(self):
        if self.view_fn is not None:
            self.dataset.view = self.view_fn()
        return _Checked(super().__iter__())


class _Checked:
    """A loader's iterator that raises a batch's decoding error (a corrupt file, named in one
    sentence) as :class:`DataError` in the main process; everything else is the wrapped one's."""

    def __init__(self, it) -> None:
        self._it = it

    def __iter__(self):
        return self

    def __next__(self):
        batch = next(self._it)
        if isinstance(batch, dict) and "error" in batch:
            raise DataError(batch["error"])
        return batch

    def __len__(self) -> int:
        return len(self._it)

    def __getattr__(self, name: str):
        return getattr(self._it, name)


def cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1
