"""The tables of one stored view and how a step reads its rows (on the training device)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from kdlight.teacher.topk import TOPK_TABLES, topk_expand

LOGITS = "logits"
#: Tables of one view up to this size move to the training device for the epoch (larger ones
#: stay memory-mapped on the host and rows are gathered there).
DEVICE_MAX_BYTES = 1 << 30


@dataclass(frozen=True)
class Table:
    """One per-sample table of a view: its name, the shape of one row and its dtype."""

    name: str
    row_shape: tuple[int, ...]
    dtype: str  # a numpy dtype name: float16, float32, int16, int32

    @property
    def row_bytes(self) -> int:
        return math.prod(self.row_shape) * np.dtype(self.dtype).itemsize


class StoredView:
    """The tables of one view (each a list of row shards), served by position.

    :meth:`logits` rebuilds full logits from a top-k table (:func:`topk_expand`) and
    :meth:`rows` returns any table's rows (a feature form's, in the store dtype).
    """

    def __init__(
        self,
        tables: dict[str, list[torch.Tensor]],
        shard_rows: int,
        num_classes: int,
        top_k: int | None,
    ) -> None:
        self.tables = tables
        self.shard_rows = int(shard_rows)
        self.num_classes = int(num_classes)
        self.top_k = top_k

    def to(self, device: torch.device | str, max_bytes: int = DEVICE_MAX_BYTES) -> StoredView:
        """A view whose tables of at most ``max_bytes`` are one tensor on ``device``.

        On the host, memory maps stay memory maps (no copy); larger tables stay on the host.
        """
        device = torch.device(device)
        moved = {}
        for name, shards in self.tables.items():
            size = sum(s.numel() * s.element_size() for s in shards)
            if device.type == "cpu" or size > max_bytes:
                moved[name] = shards
            else:
                moved[name] = [torch.cat(shards).to(device) if len(shards) > 1 else shards[0].to(device)]  # fmt: skip
        return StoredView(moved, self.shard_rows, self.num_classes, self.top_k)

    def rows(self, name: str, pos: torch.Tensor) -> torch.Tensor:
        """Rows ``pos`` (positions in the store) of table ``name``, in its dtype, on ``pos``'s device."""
        shards = self.tables[name]
        if len(shards) == 1:
            table = shards[0]
            out = table.index_select(0, pos if pos.device == table.device else pos.to(table.device))
            return out.to(pos.device)
        where = pos.cpu()
        shard = where // self.shard_rows
        out = torch.empty((where.numel(), *shards[0].shape[1:]), dtype=shards[0].dtype)
        for s in torch.unique(shard).tolist():
            mask = shard == s
            out[mask] = shards[s].index_select(0, where[mask] - s * self.shard_rows).to("cpu")
        return out.to(pos.device)

    def logits(self, pos: torch.Tensor) -> torch.Tensor:
        """(len(pos), C) float32 teacher logits (exact, or rebuilt from the top-k table)."""
        if self.top_k is None:
            return self.rows(LOGITS, pos).float()
        values, indices, lse = (self.rows(n, pos) for n in TOPK_TABLES)
        return topk_expand(values, indices, lse, self.num_classes)

    def full_logits(self) -> torch.Tensor:
        """All rows' logits: the memory map itself for an exact one-shard view."""
        if self.top_k is None:
            shards = self.tables[LOGITS]
            return shards[0] if len(shards) == 1 else torch.cat(shards)
        cat = [torch.cat(self.tables[n]) for n in TOPK_TABLES]
        return topk_expand(*cat, self.num_classes)
