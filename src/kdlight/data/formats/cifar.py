"""CIFAR-100's python pickles, read by an unpickler that resolves only numpy's array machinery."""

from __future__ import annotations

import contextlib
import io
import os
import pickle
import tarfile
import zlib
from pathlib import Path

import numpy as np
import torch

from kdlight.data.formats.arrays import ImageArrays
from kdlight.data.formats.digest import stat_signature
from kdlight.errors import DataError

#: CIFAR-100's fine classes: the labels a pickle may hold are 0..NUM_CLASSES - 1.
NUM_CLASSES = 100


def _numpy_global(module: str, name: str):
    """The numpy function ``module.name`` under numpy 1 (``numpy.core``) or 2 (``numpy._core``)."""
    import importlib

    for candidate in (module.replace("numpy.core", "numpy._core"), module):
        with contextlib.suppress(ImportError, AttributeError):
            return getattr(importlib.import_module(candidate), name)
    raise pickle.UnpicklingError(f"{module}.{name} is not available in this numpy")


class _RefusedGlobal(pickle.UnpicklingError):
    """A pickle named a global outside :class:`_CifarUnpickler`'s allowlist."""


class _CifarUnpickler(pickle.Unpickler):
    """An unpickler for CIFAR's python pickles that resolves only numpy's array machinery.

    Dicts, lists, strings, bytes and numbers need no global; numpy arrays need the four
    globals below (and ``_codecs.encode``, which Python 3 writes for bytes in protocol 2).
    Any other global, which is how a pickle runs code, is refused.
    """

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.numeric", "_frombuffer"),
        ("numpy._core.numeric", "_frombuffer"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),
    }

    def find_class(self, module: str, name: str):
        if (module, name) not in self._ALLOWED:
            raise _RefusedGlobal(f"global {module}.{name} is not allowed")
        if module == "_codecs":
            import codecs

            return codecs.encode
        if module == "numpy":
            return getattr(np, name)
        return _numpy_global(module, name)


def _unpickle(raw: bytes, where: str) -> dict:
    """A CIFAR pickle as a dict with ``str`` keys, read by :class:`_CifarUnpickler`."""
    try:
        obj = _CifarUnpickler(io.BytesIO(raw), encoding="latin1").load()
    except _RefusedGlobal as exc:
        raise DataError(
            f"{where} was refused: it is not a plain CIFAR pickle ({exc}), and loading it "
            f"could execute code."
        ) from exc
    except Exception as exc:  # noqa: BLE001 - truncated or garbled pickles fail in many ways
        raise DataError(
            f"{where} is not a readable CIFAR pickle, it may be corrupt or truncated "
            f"({type(exc).__name__})."
        ) from exc
    if not isinstance(obj, dict):
        raise DataError(f"{where} holds a {type(obj).__name__}, not a CIFAR dict.")
    return {k.decode("latin1") if isinstance(k, bytes) else str(k): v for k, v in obj.items()}


def _pickle_files(source: Path) -> dict[str, tuple[bytes, str]]:
    """``train``, ``test``, ``meta`` of a ``cifar-100-python`` folder or tarball: name -> (bytes, where)."""
    wanted = ("train", "test", "meta")
    found: dict[str, tuple[bytes, str]] = {}
    if source.is_dir():
        for name in wanted:
            if (source / name).is_file():
                found[name] = ((source / name).read_bytes(), str(source / name))
    else:
        try:
            with tarfile.open(source, "r:*") as tar:
                for member in tar:
                    base = member.name.rstrip("/").rsplit("/", 1)[-1]
                    if member.isfile() and base in wanted and base not in found:
                        found[base] = (tar.extractfile(member).read(), f"{source}:{member.name}")
        except (tarfile.TarError, OSError, EOFError, zlib.error) as exc:
            raise DataError(
                f"cannot read archive {source} ({exc}); expected the cifar-100-python.tar.gz "
                f"of the CIFAR-100 download."
            ) from exc
    missing = [n for n in wanted if n not in found]
    if missing:
        raise DataError(
            f"{source} lacks {', '.join(missing)}; a CIFAR-100 pickle folder holds the files "
            f"train, test and meta (delete it and download again)."
        )
    return found


def read_cifar_pickles(source: str | os.PathLike) -> ImageArrays:
    """Read CIFAR-100 in its python pickle format: a ``cifar-100-python/`` folder or its tarball.

    ``train``/``test``: dicts with ``data`` (uint8 N x 3072: the red, green and blue 32x32
    planes of each image, row-major) and ``fine_labels`` (N ints in 0..99); ``meta``:
    ``fine_label_names``. Keys may be ``bytes`` (as the original files unpickle with
    ``encoding="bytes"``) or ``str``. Only numpy's array globals are resolved, so a crafted
    pickle cannot run code. Raises :class:`DataError` for a missing, refused or malformed file.
    """
    source = Path(source)
    files = _pickle_files(source)
    meta = _unpickle(*files["meta"])
    names = meta.get("fine_label_names")
    if not isinstance(names, list | tuple) or len(names) != NUM_CLASSES:
        raise DataError(
            f"{files['meta'][1]} has no list of {NUM_CLASSES} 'fine_label_names'; "
            f"it is not CIFAR-100's meta file."
        )
    classes = [n.decode("latin1") if isinstance(n, bytes) else str(n) for n in names]
    out = {}
    for split in ("train", "test"):
        d = _unpickle(*files[split])
        where = files[split][1]
        data, labels = d.get("data"), d.get("fine_labels")
        if not isinstance(data, np.ndarray) or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
            shape = getattr(data, "shape", type(data).__name__)
            raise DataError(
                f"{where} has 'data' of shape {shape}; CIFAR-100 needs a uint8 N x 3072 array."
            )
        y = np.asarray(labels if labels is not None else [], dtype=np.int64)
        if y.shape != (len(data),):
            raise DataError(
                f"{where} holds {len(data)} images but {y.size} 'fine_labels'; they must match."
            )
        if y.size and (y.min() < 0 or y.max() >= NUM_CLASSES):
            raise DataError(
                f"{where} has fine label {int(y.min() if y.min() < 0 else y.max())}; CIFAR-100 "
                f"labels must be 0..{NUM_CLASSES - 1}."
            )
        x = np.ascontiguousarray(data.astype(np.uint8, copy=False).reshape(-1, 3, 32, 32))
        out[f"{split}_x"] = torch.from_numpy(x)
        out[f"{split}_y"] = torch.from_numpy(y)
    read = [source / n for n in files] if source.is_dir() else [source]
    return ImageArrays(**out, classes=classes, source=str(source), signature=stat_signature(read))
