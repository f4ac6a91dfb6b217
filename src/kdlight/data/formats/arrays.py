"""The in-memory form every format decodes to: uint8 NCHW images and int64 labels."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class ImageArrays:
    """A labelled image dataset held in memory.

    ``train_x``/``test_x``: uint8 (N, C, H, W); ``train_y``/``test_y``: int64 (N,) indexing
    ``classes``; ``source`` says where the arrays came from (for logs and messages);
    ``signature``: the source files' paths, sizes and mtimes (:func:`~kdlight.data.formats.digest.stat_signature`),
    under which the arrays' content digest is cached (None: hashed every time).
    """

    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    classes: list[str]
    source: str = field(default="", compare=False)
    signature: str | None = field(default=None, compare=False)
