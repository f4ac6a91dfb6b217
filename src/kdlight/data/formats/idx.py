"""IDX files (MNIST's format): a big-endian header of type, rank and sizes, then the raw data."""

from __future__ import annotations

import gzip
import math
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import torch

from kdlight.errors import DataError

IDX_IMAGES_MAGIC = 0x00000803
IDX_LABELS_MAGIC = 0x00000801
_IDX_DTYPES = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


def read_idx(path: str | os.PathLike) -> torch.Tensor:
    """Read an IDX file (raw, or gzipped when named ``*.gz``) into a tensor of its shape.

    Format: big-endian magic ``0x0000TTDD`` (TT: 0x08 uint8, 0x09 int8, 0x0B int16, 0x0C int32,
    0x0D float32, 0x0E float64; DD: number of dimensions), then DD big-endian uint32 sizes, then
    the data. Raises :class:`DataError` naming the file when it is missing, not IDX, truncated
    or longer than its header says.
    """
    return torch.from_numpy(read_idx_array(Path(path))[1])


def read_idx_array(path: Path) -> tuple[int, np.ndarray]:
    """(magic number, native-endian array) of an IDX file."""
    try:
        if path.name.endswith(".gz"):
            with gzip.open(path, "rb") as f:
                data = f.read()
        else:
            data = path.read_bytes()
    except FileNotFoundError as exc:
        raise DataError(f"IDX file {path} does not exist.") from exc
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(
            f"cannot read IDX file {path}: corrupt or truncated gzip data ({exc})."
        ) from exc
    if len(data) < 4:
        raise DataError(
            f"IDX file {path} is truncated: {len(data)} bytes, shorter than its header."
        )
    magic = int.from_bytes(data[:4], "big")
    ndim = data[3]
    if data[0] or data[1] or data[2] not in _IDX_DTYPES or ndim == 0:
        raise DataError(
            f"{path} is not an IDX file: magic number 0x{magic:08x}, expected 0x0000TTDD "
            f"(e.g. 0x{IDX_IMAGES_MAGIC:08x} for images, 0x{IDX_LABELS_MAGIC:08x} for labels)."
        )
    dtype = _IDX_DTYPES[data[2]]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataError(
            f"IDX file {path} is truncated: {len(data)} bytes, shorter than its {header}-byte header."
        )
    dims = struct.unpack(f">{ndim}I", data[4:header])
    expected = math.prod(dims) * dtype.itemsize
    have = len(data) - header
    if have != expected:
        problem = "is truncated" if have < expected else "has trailing bytes"
        raise DataError(
            f"IDX file {path} {problem}: its header promises shape {dims} ({expected} data "
            f"bytes) but the file holds {have}."
        )
    array = np.frombuffer(data, dtype=dtype, count=math.prod(dims), offset=header)
    return magic, array.reshape(dims).astype(dtype.newbyteorder("="), copy=True)
