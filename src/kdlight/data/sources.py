"""Raw datasets as in-memory uint8 arrays: image folders / archives and python pickles (CIFAR-10,
CIFAR-100) and IDX files (MNIST).

Every loader returns an :class:`ImageArrays`. Image folders are decoded once with PIL and cached
as an uncompressed ``.npz``; IDX files are small enough to read directly each time.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import json
import logging
import math
import os
import pickle
import struct
import sys
import tarfile
import tempfile
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from kdlight.errors import DataError

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar")
SPLITS = ("train", "test")

#: Bump when the cache layout or the decoding changes; older caches are then rebuilt.
CACHE_FORMAT_VERSION = 1
CACHE_SUFFIX = ".kdlight-cache.npz"
#: Where caches go when the folder beside the data is not writable (else ``~/.cache/kdlight``).
CACHE_DIR_ENV = "KDLIGHT_CACHE_DIR"

CIFAR10_ARCHIVE_NAME = "cifar10-jpeg.tar.gz"
CIFAR10_ARCHIVE_ENV = "KDLIGHT_CIFAR10_ARCHIVE"
#: Shared image-folder archives tried after ``data_dir``: relative to the working directory,
#: then relative to a source checkout of kdlight.
CIFAR10_FALLBACK_ARCHIVES: tuple[Path, ...] = (
    Path("../shared/data") / CIFAR10_ARCHIVE_NAME,
    Path(__file__).resolve().parents[3].parent / "shared" / "data" / CIFAR10_ARCHIVE_NAME,
)
CIFAR10_CLASSES = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)

#: Dataset name -> torchvision class (and its folder name under ``data_dir``).
MNIST_FAMILY = {"mnist": "MNIST", "fashion_mnist": "FashionMNIST"}
MNIST_CLASSES = {
    "mnist": tuple(str(d) for d in range(10)),
    "fashion_mnist": (
        "T-shirt/top",
        "Trouser",
        "Pullover",
        "Dress",
        "Coat",
        "Sandal",
        "Shirt",
        "Sneaker",
        "Bag",
        "Ankle boot",
    ),
}
#: The four IDX files, each also accepted with a ``.gz`` suffix.
IDX_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
#: Debian's ``dataset-fashion-mnist`` package installs the four ``.gz`` files here.
DEBIAN_FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")

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


@dataclass
class ImageArrays:
    """A labelled image dataset held in memory.

    ``train_x``/``test_x``: uint8 (N, C, H, W); ``train_y``/``test_y``: int64 (N,) indexing
    ``classes``; ``source`` says where the arrays came from (for logs and messages).
    """

    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    classes: list[str]
    source: str = field(default="", compare=False)


# ---------------------------------------------------------------------------------------------
# Image folders and archives
# ---------------------------------------------------------------------------------------------


def load_image_folder(
    path: str | os.PathLike,
    cache_dir: str | os.PathLike | None = None,
    progress: bool | None = None,
) -> ImageArrays:
    """Decode ``train/<class>/*`` and ``test/<class>/*`` images (folder or tar archive) once, then cache.

    ``path`` is a folder or a ``.tar``/``.tar.gz``/``.tgz`` archive holding ``train/`` and
    ``test/`` at its top level or under one top-level folder. Classes sort alphabetically into
    label indices; files sort by name within a class. Images are decoded with PIL as RGB and
    must all share one size. The arrays are cached as ``<name>.kdlight-cache.npz`` in
    ``cache_dir`` if given, else beside ``path`` or, where that is not writable, in
    ``$KDLIGHT_CACHE_DIR`` (default ``~/.cache/kdlight``). A cache whose format version or
    source fingerprint (archive size + mtime; folder file names, sizes, mtimes) differs is
    rebuilt. ``progress=None`` shows a progress bar only when stderr is a terminal.
    Raises :class:`DataError` for a missing, malformed or corrupt source.
    """
    src = Path(path).expanduser()
    if not src.exists():
        raise DataError(f"image folder or archive {src} does not exist.")
    src = src.resolve()
    if src.is_dir():
        entries, fingerprint = _scan_folder(src)
    elif _archive_stem(src) is not None:
        st = src.stat()
        entries = None
        fingerprint = {"kind": "tar", "size": st.st_size, "mtime_ns": st.st_mtime_ns}
    else:
        raise DataError(
            f"{src} is neither a folder nor a .tar/.tar.gz/.tgz archive of train/<class>/*.jpg "
            f"and test/<class>/*.jpg images."
        )
    fingerprint["version"] = CACHE_FORMAT_VERSION
    cache_paths = _cache_paths(src, cache_dir)
    for cache_path in cache_paths:
        arrays = _read_cache(cache_path, fingerprint)
        if arrays is not None:
            log.debug("loaded %s from cache %s", src, cache_path)
            arrays.source = str(src)  # the data may have moved along with its cache
            return arrays

    show = sys.stderr.isatty() if progress is None else bool(progress)
    with _progress_bar(show) as bar:
        if entries is None:
            entries = _scan_tar(src, bar)
        arrays = _decode_layout(_layout(entries, src), src, bar)
    _write_cache(arrays, fingerprint, cache_paths)
    return arrays


def _archive_stem(path: Path) -> str | None:
    """Name of ``path`` without its archive suffix, or None when it is not a tar archive name."""
    lower = path.name.lower()
    for suffix in ARCHIVE_SUFFIXES:
        if lower.endswith(suffix) and len(lower) > len(suffix):
            return path.name[: -len(suffix)]
    return None


# An entry is a member path split into parts, and its content: bytes (archive member), a Path
# (file in a folder) or None (a directory).
_Entry = tuple[tuple[str, ...], object]


def _inside_tree(path: Path, real_root: Path, root: Path) -> None:
    """Refuse a file or folder of an image tree that a symlink takes outside the tree."""
    real = path.resolve()
    if real != real_root and not real.is_relative_to(real_root):
        raise DataError(
            f"{path} in the image folder {root} is a link to {real}, outside the folder; "
            "copy the file into the folder or remove the link."
        )


def _scan_folder(root: Path) -> tuple[list[_Entry], dict]:
    """List files and folders up to ``top/split/class/file`` depth, with a fingerprint of them."""
    entries: list[_Entry] = []
    names = hashlib.sha1()
    n_files = n_bytes = newest = 0
    real_root = root.resolve()
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        rel = Path(dirpath).relative_to(root).parts
        _inside_tree(Path(dirpath), real_root, root)
        if len(rel) >= 3:  # deeper than top/split/class: nothing we read lives there
            dirnames[:] = []
        dirnames.sort()
        if rel:
            entries.append((rel, None))
        for name in sorted(filenames):
            if not name.lower().endswith(IMAGE_SUFFIXES):
                continue
            file = Path(dirpath, name)
            _inside_tree(file, real_root, root)
            st = file.stat()
            entries.append(((*rel, name), file))
            names.update("/".join((*rel, name)).encode() + b"\0")
            n_files += 1
            n_bytes += st.st_size
            newest = max(newest, st.st_mtime_ns)
    fingerprint = {
        "kind": "folder",
        "files": n_files,
        "size": n_bytes,
        "mtime_ns": newest,
        "names": names.hexdigest(),
    }
    return entries, fingerprint


def _scan_tar(path: Path, bar) -> list[_Entry]:
    """Read every member of a tar archive in one streaming pass (no extraction to disk)."""
    entries: list[_Entry] = []
    task = bar.add_task(f"reading {path.name}", total=path.stat().st_size) if bar else None
    try:
        with open(path, "rb") as raw, tarfile.open(fileobj=raw, mode="r|*") as tar:
            for i, member in enumerate(tar):
                parts = tuple(p for p in member.name.split("/") if p not in ("", "."))
                if not parts:
                    continue
                if member.isdir():
                    entries.append((parts, None))
                elif member.isfile() and parts[-1].lower().endswith(IMAGE_SUFFIXES):
                    entries.append((parts, tar.extractfile(member).read()))
                if bar and i % 512 == 0:
                    bar.update(task, completed=raw.tell())
            if bar:
                bar.update(task, completed=raw.tell())
    except (tarfile.TarError, OSError, EOFError, zlib.error) as exc:
        raise DataError(
            f"cannot read archive {path} ({exc}); expected a valid .tar/.tar.gz/.tgz file."
        ) from exc
    return entries


def _layout(entries: list[_Entry], where: Path) -> dict[str, dict[str, list[tuple[str, object]]]]:
    """Group entries into ``{split: {class: [(member name, content), ...]}}``, checking the layout."""
    ignored = ("__MACOSX",)
    visible = [(p, c) for p, c in entries if not p[0].startswith(".") and p[0] not in ignored]
    tops = {p[0] for p, _ in visible}
    if tops & set(SPLITS):
        depth, top = 0, ""
    elif len(tops) == 1 and any(len(p) > 1 and p[1] in SPLITS for p, _ in visible):
        depth, top = 1, f"{next(iter(tops))}/"  # one top-level folder, e.g. cifar10/train/...
    else:
        raise DataError(
            f"{where} has no train/ and test/ folders at its top level or under a single "
            f"top-level folder (found: {', '.join(sorted(tops)) or 'nothing'}); expected "
            f"train/<class>/*.jpg and test/<class>/*.jpg."
        )
    layout: dict[str, dict[str, list[tuple[str, object]]]] = {}
    for parts, content in visible:
        rest = parts[depth:]
        if len(rest) < 2 or rest[0] not in SPLITS or rest[1].startswith("."):
            continue
        classes = layout.setdefault(rest[0], {})
        files = classes.setdefault(rest[1], [])
        if len(rest) == 3 and content is not None:
            files.append(("/".join(parts), content))
    for split in SPLITS:
        prefix = top + split
        if not layout.get(split):
            raise DataError(
                f"{where} has no class folders in {prefix}/; expected {prefix}/<class>/*.jpg "
                f"(also .jpeg or .png)."
            )
        for cls, files in layout[split].items():
            if not files:
                raise DataError(
                    f"class folder {prefix}/{cls} in {where} holds no .jpg/.jpeg/.png images; "
                    f"remove it or add images."
                )
            files.sort(key=lambda item: item[0])
    if set(layout["train"]) != set(layout["test"]):
        raise DataError(
            f"{where}: the classes in train/ ({', '.join(sorted(layout['train']))}) and in test/ "
            f"({', '.join(sorted(layout['test']))}) must be the same."
        )
    return layout


def _decode_layout(layout, where: Path, bar) -> ImageArrays:
    """Decode every image into uint8 NCHW arrays; labels follow the sorted class names."""
    classes = sorted(layout["train"])
    total = sum(len(files) for split in SPLITS for files in layout[split].values())
    task = bar.add_task("decoding images", total=total) if bar else None
    shape: list = []  # (H, W, name of the first image), set by the first decode
    out = {}
    done = 0
    for split in SPLITS:
        items = [item for cls in classes for item in layout[split][cls]]
        counts = [len(layout[split][cls]) for cls in classes]
        x = None
        for i, (name, content) in enumerate(items):
            img = _decode_image(name, content, where)
            if not shape:
                shape.extend((*img.shape[:2], name))
            if img.shape[:2] != tuple(shape[:2]):
                raise DataError(
                    f"image {name} in {where} is {img.shape[1]}x{img.shape[0]} pixels but "
                    f"{shape[2]} is {shape[1]}x{shape[0]}; all images must have the same size."
                )
            if x is None:
                x = np.empty((len(items), *img.shape), dtype=np.uint8)
            x[i] = img
            if bar and i % 512 == 511:
                bar.update(task, completed=done + i + 1)
        done += len(items)
        if bar:
            bar.update(task, completed=done)
        out[f"{split}_x"] = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))
        out[f"{split}_y"] = torch.from_numpy(
            np.repeat(np.arange(len(classes), dtype=np.int64), counts)
        )
    return ImageArrays(**out, classes=classes, source=str(where))


def _decode_image(name: str, content, where: Path) -> np.ndarray:
    """Decode one JPEG/PNG to an (H, W, 3) uint8 array, or raise DataError naming it."""
    fp = io.BytesIO(content) if isinstance(content, bytes) else content
    try:
        with Image.open(fp, formats=("JPEG", "PNG")) as img:
            return np.asarray(img if img.mode == "RGB" else img.convert("RGB"))
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise DataError(
            f"image {name} in {where} is corrupt or not a JPEG/PNG ({exc}); replace or remove it."
        ) from exc


# ---------------------------------------------------------------------------------------------
# Cache
# ---------------------------------------------------------------------------------------------


def default_cache_dir() -> Path:
    """Fallback cache folder: ``$KDLIGHT_CACHE_DIR``, else ``$XDG_CACHE_HOME/kdlight``, else ``~/.cache/kdlight``."""
    if os.environ.get(CACHE_DIR_ENV):
        return Path(os.environ[CACHE_DIR_ENV]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "kdlight"


def _cache_paths(src: Path, cache_dir) -> list[Path]:
    """Cache files to try, in order: in ``cache_dir`` if given, else beside ``src`` then the fallback."""
    name = (_archive_stem(src) or src.name) + CACHE_SUFFIX
    if cache_dir is not None:
        return [Path(cache_dir).expanduser() / name]
    return [src.parent / name, default_cache_dir() / name]


def _read_cache(path: Path, fingerprint: dict) -> ImageArrays | None:
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


def _write_cache(arrays: ImageArrays, fingerprint: dict, paths: list[Path]) -> Path | None:
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


@contextlib.contextmanager
def _progress_bar(enabled: bool) -> Iterator:
    """A rich Progress on stderr when enabled, else None."""
    if not enabled:
        yield None
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn())
    with Progress(*columns, TimeElapsedColumn(), console=Console(stderr=True)) as bar:
        yield bar


# ---------------------------------------------------------------------------------------------
# CIFAR-10 and CIFAR-100
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CifarSpec:
    """What differs between CIFAR-10 and CIFAR-100 where they are looked for and checked.

    ``archive_name``/``folder``: an image-folder archive / tree in ``data_dir``; ``batches``:
    torchvision's pickle folder (and, for CIFAR-100, ``<batches>.tar.gz``, the original
    download); ``env``: the variable naming an archive.
    """

    title: str
    num_classes: int
    archive_name: str
    folder: str
    batches: str
    env: str


CIFAR10 = CifarSpec(
    "CIFAR-10", 10, CIFAR10_ARCHIVE_NAME, "cifar10", "cifar-10-batches-py", CIFAR10_ARCHIVE_ENV
)
CIFAR100 = CifarSpec(
    "CIFAR-100",
    100,
    "cifar100-jpeg.tar.gz",
    "cifar100",
    "cifar-100-python",
    "KDLIGHT_CIFAR100_ARCHIVE",
)


def load_cifar10(
    data_dir: str | os.PathLike,
    download: bool = True,
    archive: str | os.PathLike | None = None,
    cache_dir: str | os.PathLike | None = None,
    progress: bool | None = None,
) -> ImageArrays:
    """Load CIFAR-10 from the first source found; uint8 (N, 3, 32, 32), labels in standard order.

    Order: (a) ``archive`` (image-folder archive or folder) when given; (b) in ``data_dir``:
    ``cifar10-jpeg.tar.gz``, ``cifar10/``, torchvision's ``cifar-10-batches-py/``; (c)
    ``$KDLIGHT_CIFAR10_ARCHIVE``, then :data:`CIFAR10_FALLBACK_ARCHIVES`; (d) torchvision's
    download into ``data_dir`` when ``download``. Image folders are decoded by
    :func:`load_image_folder` (cached). Raises :class:`DataError` listing every place looked
    at when nothing is found.
    """
    return _load_cifar(
        CIFAR10, data_dir, download, archive, cache_dir, progress, CIFAR10_FALLBACK_ARCHIVES
    )


def load_cifar100(
    data_dir: str | os.PathLike,
    download: bool = True,
    archive: str | os.PathLike | None = None,
    cache_dir: str | os.PathLike | None = None,
    progress: bool | None = None,
) -> ImageArrays:
    """Load CIFAR-100 (fine labels) from the first source found; uint8 (N, 3, 32, 32).

    Order: (a) ``archive`` when given: an image-folder tree or archive (``train/<class>/*``,
    ``test/<class>/*``; the 100 class names sort into the standard label order), a
    ``cifar-100-python/`` folder or the original ``cifar-100-python.tar.gz``; (b) in
    ``data_dir``: ``cifar100-jpeg.tar.gz``, ``cifar100/``, ``cifar-100-python/``,
    ``cifar-100-python.tar.gz``; (c) ``$KDLIGHT_CIFAR100_ARCHIVE``; (d) torchvision's download
    (URL and checksum of ``torchvision.datasets.CIFAR100``) into ``data_dir`` when
    ``download``. The pickles are read by :func:`read_cifar_pickles`, which never runs code.
    """
    return _load_cifar(CIFAR100, data_dir, download, archive, cache_dir, progress, ())


def _load_cifar(
    spec: CifarSpec, data_dir, download: bool, archive, cache_dir, progress, fallbacks
) -> ImageArrays:
    data_dir = Path(data_dir).expanduser()
    if archive is not None and str(archive) != "":
        path = Path(archive).expanduser()
        if not path.exists():
            raise DataError(
                f"data.archive={archive} does not exist; give a {spec.title} image-folder archive "
                f"(.tar.gz of train/<class>/*.jpg, test/<class>/*.jpg) or folder, or leave it "
                f"unset to use data_dir and torchvision."
            )
        return _cifar_from_path(spec, path, cache_dir, progress)

    looked: list[str] = []
    candidates = [data_dir / spec.archive_name, data_dir / spec.folder, data_dir / spec.batches]
    if spec is CIFAR100:
        candidates.append(data_dir / f"{spec.batches}.tar.gz")
    if os.environ.get(spec.env):
        candidates.append(Path(os.environ[spec.env]).expanduser())
    candidates += [p for p in fallbacks if p.resolve() not in {c.resolve() for c in candidates}]
    for path in candidates:
        if path.exists():
            return _cifar_from_path(spec, path, cache_dir, progress)
        looked.append(str(path))

    if download:
        try:
            if spec is CIFAR100:
                return _cifar100_download(data_dir)
            return _cifar10_torchvision(data_dir, download=True)
        except Exception as exc:  # noqa: BLE001 - any download failure falls through to our message
            looked.append(
                f"torchvision download into {data_dir} (failed: {type(exc).__name__}: {exc})"
            )
    else:
        looked.append("torchvision download (skipped: data.download=false)")
    raise DataError(
        f"{spec.title} not found; looked at: {'; '.join(looked)}; provide it with "
        f"data.download=true (torchvision, needs the network) or an image-folder archive "
        f"via data.archive=/path/to/{spec.archive_name} (or ${spec.env})."
    )


def _cifar_from_path(spec: CifarSpec, path: Path, cache_dir, progress) -> ImageArrays:
    """CIFAR from torchvision's pickle folder (or CIFAR-100's original tarball) or an image
    folder / archive, checked for shape and number of classes."""
    if path.is_dir() and path.name == CIFAR10.batches and spec is CIFAR10:
        return _cifar10_torchvision(path.parent, download=False)
    if spec is CIFAR100 and (
        (path.is_dir() and (path / "meta").is_file()) or path.name.startswith(spec.batches)
    ):
        return read_cifar_pickles(path)
    arrays = load_image_folder(path, cache_dir=cache_dir, progress=progress)
    shape = tuple(arrays.train_x.shape[1:])
    if len(arrays.classes) != spec.num_classes or shape != (3, 32, 32):
        raise DataError(
            f"{path} is not {spec.title}: it holds {len(arrays.classes)} classes of "
            f"{shape[2]}x{shape[1]} images, expected {spec.num_classes} classes of 32x32 RGB images."
        )
    return arrays


def _cifar10_torchvision(root: Path, download: bool) -> ImageArrays:
    """CIFAR-10 via ``torchvision.datasets.CIFAR10`` (its ``.data`` is N x 32 x 32 x 3 uint8)."""
    cifar10 = _torchvision_dataset("CIFAR10")
    try:
        train = cifar10(root=str(root), train=True, download=download)
        test = cifar10(root=str(root), train=False, download=False)
    except RuntimeError as exc:
        if download:
            raise
        raise DataError(
            f"{root / 'cifar-10-batches-py'} is incomplete or corrupt ({exc}); delete it and "
            f"download again, or give an image-folder archive via data.archive=..."
        ) from exc

    def nchw(data) -> torch.Tensor:
        return torch.from_numpy(
            np.ascontiguousarray(np.asarray(data, dtype=np.uint8).transpose(0, 3, 1, 2))
        )

    return ImageArrays(
        train_x=nchw(train.data),
        train_y=torch.as_tensor(np.asarray(train.targets), dtype=torch.int64),
        test_x=nchw(test.data),
        test_y=torch.as_tensor(np.asarray(test.targets), dtype=torch.int64),
        classes=list(train.classes),
        source=str(root / "cifar-10-batches-py"),
    )


def _cifar100_download(data_dir: Path) -> ImageArrays:
    """Download ``cifar-100-python.tar.gz`` (torchvision's URL, MD5-checked), then read it safely."""
    cifar100 = _torchvision_dataset("CIFAR100")
    _download_archive(cifar100.url, data_dir, cifar100.filename, cifar100.tgz_md5)
    return read_cifar_pickles(data_dir / CIFAR100.batches)


def _download_archive(url: str, root: Path, filename: str, md5: str) -> None:
    """Download and extract with torchvision's utility (its checksum check included)."""
    from torchvision.datasets.utils import download_and_extract_archive

    download_and_extract_archive(url, str(root), filename=filename, md5=md5)


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
    if not isinstance(names, list | tuple) or len(names) != CIFAR100.num_classes:
        raise DataError(
            f"{files['meta'][1]} has no list of {CIFAR100.num_classes} 'fine_label_names'; "
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
        if y.size and (y.min() < 0 or y.max() >= CIFAR100.num_classes):
            raise DataError(
                f"{where} has fine label {int(y.min() if y.min() < 0 else y.max())}; CIFAR-100 "
                f"labels must be 0..{CIFAR100.num_classes - 1}."
            )
        x = np.ascontiguousarray(data.astype(np.uint8, copy=False).reshape(-1, 3, 32, 32))
        out[f"{split}_x"] = torch.from_numpy(x)
        out[f"{split}_y"] = torch.from_numpy(y)
    return ImageArrays(**out, classes=classes, source=str(source))


# ---------------------------------------------------------------------------------------------
# IDX files: MNIST and Fashion-MNIST
# ---------------------------------------------------------------------------------------------


def read_idx(path: str | os.PathLike) -> torch.Tensor:
    """Read an IDX file (raw, or gzipped when named ``*.gz``) into a tensor of its shape.

    Format: big-endian magic ``0x0000TTDD`` (TT: 0x08 uint8, 0x09 int8, 0x0B int16, 0x0C int32,
    0x0D float32, 0x0E float64; DD: number of dimensions), then DD big-endian uint32 sizes, then
    the data. Raises :class:`DataError` naming the file when it is missing, not IDX, truncated
    or longer than its header says.
    """
    return torch.from_numpy(_read_idx(Path(path))[1])


def _read_idx(path: Path) -> tuple[int, np.ndarray]:
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


def load_mnist_family(name: str, data_dir: str | os.PathLike, download: bool = True) -> ImageArrays:
    """Load ``mnist`` or ``fashion_mnist`` from IDX files: x uint8 (N, 1, 28, 28), y int64 (N,).

    Looks for the four :data:`IDX_FILES` (raw or ``.gz``) in ``data_dir/<name>``,
    ``data_dir/<name>/raw``, ``data_dir/<MNIST|FashionMNIST>/raw`` (torchvision's layout), then
    for Fashion-MNIST in :data:`DEBIAN_FASHION_MNIST_DIR`; then torchvision downloads into
    ``data_dir`` when ``download``. Raises :class:`DataError` for an unknown name, a corrupt or
    mismatched file, or when no source is found.
    """
    if name not in MNIST_FAMILY:
        raise DataError(f"unknown dataset name {name!r}; valid names: {', '.join(MNIST_FAMILY)}.")
    data_dir = Path(data_dir).expanduser()
    dirs = [data_dir / name, data_dir / name / "raw", data_dir / MNIST_FAMILY[name] / "raw"]
    if name == "fashion_mnist":
        dirs.append(Path(DEBIAN_FASHION_MNIST_DIR))
    looked = []
    for folder in dirs:
        files = [_find_idx(folder, stem) for stem in IDX_FILES]
        if all(files):
            return _load_idx_set(name, files)
        if not folder.is_dir():
            looked.append(f"{folder} (no such folder)")
        else:
            missing = [stem for stem, file in zip(IDX_FILES, files, strict=True) if file is None]
            looked.append(f"{folder} (missing {', '.join(missing)})")

    if download:
        try:
            return _mnist_torchvision(name, data_dir)
        except Exception as exc:  # noqa: BLE001 - any download failure falls through to our message
            looked.append(
                f"torchvision download into {data_dir} (failed: {type(exc).__name__}: {exc})"
            )
    else:
        looked.append("torchvision download (skipped: data.download=false)")
    hint = " or install Debian's dataset-fashion-mnist package" if name == "fashion_mnist" else ""
    raise DataError(
        f"{name} not found: expected {', '.join(IDX_FILES)} (each raw or .gz); looked at "
        f"{'; '.join(looked)}; put the files in {data_dir / name}{hint}, or set "
        f"data.download=true with network access."
    )


def _find_idx(folder: Path, stem: str) -> Path | None:
    """``folder/stem`` or ``folder/stem.gz`` (the raw file first: it is faster), if present."""
    for candidate in (folder / stem, folder / f"{stem}.gz"):
        if candidate.is_file():
            return candidate
    return None


def _load_idx_set(name: str, files: list[Path]) -> ImageArrays:
    """Read and cross-check the four IDX files (train/test images/labels)."""
    out = {}
    classes = MNIST_CLASSES[name]
    for split, images_file, labels_file in (("train", *files[:2]), ("test", *files[2:])):
        magic, x = _read_idx(images_file)
        if magic != IDX_IMAGES_MAGIC:
            raise DataError(
                f"{images_file} has IDX magic 0x{magic:08x} but an image file needs "
                f"0x{IDX_IMAGES_MAGIC:08x} (uint8, N x H x W)."
            )
        magic, y = _read_idx(labels_file)
        if magic != IDX_LABELS_MAGIC:
            raise DataError(
                f"{labels_file} has IDX magic 0x{magic:08x} but a label file needs "
                f"0x{IDX_LABELS_MAGIC:08x} (uint8, N)."
            )
        if len(x) != len(y):
            raise DataError(
                f"{images_file} holds {len(x)} images but {labels_file} holds {len(y)} labels; "
                f"they must match."
            )
        if len(y) and int(y.max()) >= len(classes):
            raise DataError(
                f"{labels_file} has label {int(y.max())}; {name} labels must be 0..{len(classes) - 1}."
            )
        out[f"{split}_x"] = torch.from_numpy(x).unsqueeze(1)
        out[f"{split}_y"] = torch.from_numpy(y.astype(np.int64))
    return ImageArrays(**out, classes=list(classes), source=str(files[0].parent))


def _mnist_torchvision(name: str, data_dir: Path) -> ImageArrays:
    """Download with torchvision (``MNIST``/``FashionMNIST``) and take its ``.data``/``.targets``."""
    cls = _torchvision_dataset(MNIST_FAMILY[name])
    train = cls(root=str(data_dir), train=True, download=True)
    test = cls(root=str(data_dir), train=False, download=False)
    return ImageArrays(
        train_x=train.data.to(torch.uint8).unsqueeze(1).contiguous(),
        train_y=train.targets.to(torch.int64),
        test_x=test.data.to(torch.uint8).unsqueeze(1).contiguous(),
        test_y=test.targets.to(torch.int64),
        classes=list(MNIST_CLASSES[name]),
        source=str(data_dir / MNIST_FAMILY[name]),
    )


def _torchvision_dataset(name: str):
    """``torchvision.datasets.<name>``, imported only when needed (it is slow to import)."""
    import torchvision.datasets

    return getattr(torchvision.datasets, name)
