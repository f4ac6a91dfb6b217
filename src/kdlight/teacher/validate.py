"""Whether one stored shard file may be served: its header, size, checksums and values.

A shard is trusted only if its data file is a regular file (not a link) whose header, size,
checksum (equal to its meta's AND to the view's manifest's) and values (finite; top-k indices
in [0, num_classes), distinct per row) are what the store writes. The checksum is computed on
the very file that is then mapped (one open file), so a file replaced after the check is
never served unchecked.
"""

from __future__ import annotations

import math
import os
import stat
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from kdlight.teacher.fill import checksum_file

#: Elements checked per step for NaN/Inf and index ranges (bounds the check's temporary memory).
CHECK_ELEMENTS = 1 << 22


def npy_header(f) -> tuple[tuple[int, ...], bool, np.dtype, int]:
    """``(shape, fortran_order, dtype, data offset)`` of the ``.npy`` file open as ``f``."""
    f.seek(0)
    version = np.lib.format.read_magic(f)
    if version not in ((1, 0), (2, 0)):
        raise ValueError(f"npy format {version}")
    read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0  # fmt: skip
    shape, fortran, dtype = read(f)
    return shape, fortran, dtype, f.tell()


def check_values(arr: np.ndarray, num_classes: int | None = None) -> str | None:
    """Why the values of ``arr`` cannot be what the store wrote, or None.

    ``num_classes``: ``arr`` is a top-k index table (indices in [0, num_classes), distinct per
    row); None: a value table (finite).
    """
    rows = max(1, CHECK_ELEMENTS // max(1, math.prod(arr.shape[1:])))
    for a in range(0, arr.shape[0], rows):
        part = np.asarray(arr[a : a + rows])
        if num_classes is None:
            if not np.isfinite(part).all():
                return "holds NaN or Inf"
            continue
        if part.min(initial=0) < 0 or part.max(initial=0) >= num_classes:
            return f"holds class indices outside [0, {num_classes})"
        if (np.diff(np.sort(part, axis=1), axis=1) == 0).any():
            return "repeats a class index within a row"
    return None


def read_shard(
    data: Path,
    meta: Mapping[str, Any],
    meta_name: str,
    manifest: Mapping[str, Any],
    manifest_name: str,
    shape_expected: list[int],
    dtype_name: str,
    index_classes: int | None,
) -> tuple[torch.Tensor | None, str | None]:
    """``(the shard as a copy-on-write memory map, None)`` if it validates, else ``(None, why)``.

    ``meta``: the shard's meta (already checked to describe this table); ``manifest``: the
    view's checksums; ``index_classes``: the class count when the shard is a top-k index table.
    """
    try:
        fd = os.open(data, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError as exc:
        return None, f"{data} cannot be opened ({exc.strerror})"
    try:
        with open(fd, "rb") as f:
            if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
                return None, f"{data} is not a regular file"
            shape, fortran, dtype, offset = npy_header(f)
            if fortran or list(shape) != shape_expected or dtype != np.dtype(dtype_name):
                return (
                    None,
                    f"{data} holds {list(shape)} {dtype}, not {shape_expected} {dtype_name}",
                )
            size = os.fstat(f.fileno()).st_size
            implied = offset + math.prod(shape) * dtype.itemsize
            if size != implied:
                return None, f"{data} has {size} bytes, not the {implied} its header implies"
            checksum = checksum_file(f)
            if meta.get("checksum") != checksum:
                return None, f"{data} does not match the checksum in {meta_name}"
            if manifest.get(data.name) != checksum:
                return None, f"{data} does not match the checksum in {manifest_name}"
            # copy-on-write: writes to the tensor stay private and never reach the file
            arr = np.memmap(f, dtype=dtype, mode="c", offset=offset, shape=tuple(shape))
    except (OSError, ValueError) as exc:
        return None, f"{data} cannot be read ({exc})"
    bad = check_values(arr, index_classes)
    if bad:
        return None, f"{data} {bad}"
    return torch.from_numpy(arr), None
