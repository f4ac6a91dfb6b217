"""The decoded-array cache: an uncompressed ``.npz`` of an :class:`ImageArrays`, keyed by its source.

A cache holds ``meta`` (the JSON fingerprint of the source and :data:`CACHE_FORMAT_VERSION`),
``source``, ``classes`` and the four arrays; one whose fingerprint differs is rebuilt.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import torch

from kdlight.data.formats.arrays import ImageArrays

log = logging.getLogger(__name__)

#: Bump when the cache layout or the decoding changes; older caches are then rebuilt.
CACHE_FORMAT_VERSION = 1
CACHE_SUFFIX = ".kdlight-cache.npz"
#: Where caches go when the folder beside the data is not writable (else ``~/.cache/kdlight``).
CACHE_DIR_ENV = "KDLIGHT_CACHE_DIR"


def default_cache_dir() -> Path:
    """Fallback cache folder: ``$KDLIGHT_CACHE_DIR``, else ``$XDG_CACHE_HOME/kdlight``, else ``~/.cache/kdlight``."""
    if os.environ.get(CACHE_DIR_ENV):
        return Path(os.environ[CACHE_DIR_ENV]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "kdlight"


def cache_paths(src: Path, stem: str, cache_dir) -> list[Path]:
    """Cache files ``<stem>.kdlight-cache.npz`` to try, in order: in ``cache_dir`` if given, else
    beside ``src`` then the fallback."""
    name = stem + CACHE_SUFFIX
    if cache_dir is not None:
        return [Path(cache_dir).expanduser() / name]
    return [src.parent / name, default_cache_dir() / name]


def read_cache(path: Path, fingerprint: dict) -> ImageArrays | None:
    """Arrays from a cache file if it exists and matches ``fingerprint``; None otherwise."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            if json.loads(str(z["meta"])) != fingerprint:
                log.info("cache %s is stale; rebuilding it", path)
                return None
            arrays = ImageArrays(
                train_x=torch.from_numpy(z["train_x"]),
                train_y=torch.from_numpy(z["train_y"]),
                test_x=torch.from_numpy(z["test_x"]),
                test_y=torch.from_numpy(z["test_y"]),
                classes=[str(c) for c in z["classes"]],
                source=str(z["source"]),
            )
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
        log.warning("ignoring unreadable cache %s (%s); rebuilding it", path, exc)
        return None
    if len(arrays.train_x) != len(arrays.train_y) or len(arrays.test_x) != len(arrays.test_y):
        return None
    return arrays


def write_cache(arrays: ImageArrays, fingerprint: dict, paths: list[Path]) -> Path | None:
    """Write the cache atomically to the first writable path; a failure only costs speed."""
    for path in paths:
        tmp = None
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            if not _writable_dir(path.parent):
                log.debug("not writing a cache in read-only folder %s", path.parent)
                continue
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
            with os.fdopen(fd, "wb") as f:
                np.savez(
                    f,
                    meta=np.array(json.dumps(fingerprint, sort_keys=True)),
                    source=np.array(arrays.source),
                    classes=np.array(arrays.classes, dtype=str),
                    train_x=arrays.train_x.numpy(),
                    train_y=arrays.train_y.numpy(),
                    test_x=arrays.test_x.numpy(),
                    test_y=arrays.test_y.numpy(),
                )
            os.chmod(tmp, 0o644)  # mkstemp makes it private; the data is not
            # Readers see either the old file or the complete new one, never a partial write.
            os.replace(tmp, path)
            log.debug("wrote cache %s", path)
            return path
        except OSError as exc:
            log.info("cannot write cache %s (%s)", path, exc)
            if tmp is not None:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
    log.warning("could not write a cache to any of %s; data will be decoded again next time", paths)
    return None


def _writable_dir(folder: Path) -> bool:
    """True when we may write in ``folder``: permitted, and not marked read-only (root ignores modes)."""
    return os.access(folder, os.W_OK) and bool(folder.stat().st_mode & 0o222)
