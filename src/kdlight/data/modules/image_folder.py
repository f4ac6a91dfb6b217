"""Image folders of any size (ImageNet-scale): files decoded per batch by DataLoader workers.

``root/train/<class>/*`` and ``root/val/<class>/*`` (``test/`` is accepted for ``val/``), JPEG
or PNG of any sizes; classes sort by folder name into labels, as torchvision's ``ImageFolder``.
Only the file list is held in memory. A training image is cropped by ``RandomResizedCrop``
(torchvision's draw, from a generator seeded by (``aug_seed``, view, sample index)), resized to
``image_size`` and flipped; evaluation resizes the shorter side to ``eval_resize`` and takes
the centre ``image_size`` crop. ``crop: pad`` (for small images, e.g. Tiny-ImageNet's 64 px)
instead takes the evaluation image and applies CIFAR's pad-crop + flip to the whole batch.
Either way the input of (view, index) is a pure function of the data and the settings, so
the teacher store (:mod:`kdlight.teacher.store`) serves exact teacher outputs; :meth:`view_batch`
decodes the files a store fill asks for. ``shards`` reads the same samples from LitData shards
written by ``kdlight-shards convert`` (:mod:`kdlight.data.shards.convert`) instead of the files.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import PIL
import torch
from PIL import Image
from torch.utils.data import DataLoader

from kdlight.data.augment import (
    RESIZED_CROP_VERSION,
    random_crop_flip,
    random_resized_crop_params,
    sample_generator,
)
from kdlight.data.formats.digest import file_digests
from kdlight.data.formats.image_files import (
    FolderImages,
    ImageFiles,
    check_root,
    image_files,
    samples_fingerprint,
    scan_class_folders,
    split_folder,
)
from kdlight.data.modules.array import ArrayDataModule, EpochSeededShuffle
from kdlight.data.modules.decoded import Decoded, ViewLoader, collate, cpus
from kdlight.data.shards.read import ShardImages, read_manifest
from kdlight.data.shards.read import fingerprint as shards_fingerprint
from kdlight.data.subsets import labeled_subset, split_train_val
from kdlight.errors import ConfigError, DataError

log = logging.getLogger(__name__)

CROPS = ("random_resized", "pad")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Geometry:
    """The per-image part of the input pipeline: PIL image -> uint8 (3, size, size) tensor.

    Training (``view`` given, ``crop == "random_resized"``): the box of
    :func:`~kdlight.data.augment.random_resized_crop_params` drawn from
    ``sample_generator(index, view, seed)``, cut out and resized to ``size`` (PIL bilinear),
    then flipped when the same generator's next ``U(0, 1) < 0.5``: pixel for pixel what
    torchvision's ``RandomResizedCrop(size)`` + ``RandomHorizontalFlip()`` give on a PIL
    image with the global RNG seeded by ``sample_seed(index, view, seed)``. Otherwise
    (evaluation, and every image under ``crop == "pad"``): shorter side resized to
    ``eval_resize``, centre ``size`` crop (``Resize`` + ``CenterCrop``, likewise).
    """

    size: int
    eval_resize: int
    crop: str
    scale: tuple[float, float]
    ratio: tuple[float, float]
    flip: bool
    seed: int

    def __call__(self, img: Image.Image, index: int, view: int | None) -> torch.Tensor:
        s = self.size
        if view is not None and self.crop == "random_resized":
            g = sample_generator(index, view, self.seed)
            top, left, h, w = random_resized_crop_params(
                img.height, img.width, g, self.scale, self.ratio
            )
            out = img.crop((left, top, left + w, top + h)).resize((s, s), Image.Resampling.BILINEAR)
            if self.flip and float(torch.rand((), generator=g)) < 0.5:
                out = out.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        else:
            w, h = img.size
            r = self.eval_resize
            short, long = (w, h) if w <= h else (h, w)
            new_long = int(r * long / short)
            nw, nh = (r, new_long) if w <= h else (new_long, r)
            out = img if (nw, nh) == (w, h) else img.resize((nw, nh), Image.Resampling.BILINEAR)
            top, left = int(round((nh - s) / 2.0)), int(round((nw - s) / 2.0))
            if (nw, nh) != (s, s):
                out = out.crop((left, top, left + s, top + s))
        return torch.from_numpy(np.array(out, dtype=np.uint8)).permute(2, 0, 1)


# ---- the data module ---------------------------------------------------------------------


class ImageFolderDataModule(ArrayDataModule):
    """Image folders of any size, decoded per batch by ``num_workers`` DataLoader workers.

    Args (besides :class:`~kdlight.data.modules.array.ArrayDataModule`'s ``batch_size``, ``val_size``,
    ``labeled_fraction``, ``unlabeled``, ``augment``, ``views``, ``mean``/``std``, seeds):
        root: the folder holding ``train/<class>/*`` and ``val/<class>/*`` (or ``test/``).
        image_size: the side of the square input the networks get.
        eval_resize: evaluation resizes the shorter side to this, then centre-crops
            ``image_size`` (None: ``round(image_size / 0.875)``, 256 for 224).
        crop: ``random_resized`` (RandomResizedCrop(``scale``, ``ratio``) + flip, ImageNet's)
            or ``pad`` (evaluation image, then CIFAR's ``pad``-pixel random crop + flip on the
            batch: for small images such as Tiny-ImageNet's 64 px).
        num_workers: DataLoader worker processes that decode and crop (0: in the main process;
            never more than the CPUs this process may use, nor than a split's batches).
        name: the dataset's name in hyper-parameters, reports and store keys.
        num_classes: the number of class folders in ``train/`` (None: counted); another
            number is refused, as is a test split lacking a class.
        shards: a folder written by ``kdlight-shards convert`` (LitData shards of such a tree):
            read instead of ``root``, giving the same samples, labels and inputs (None: ``root``).
    """

    name = "image_folder"
    layout = "train/<class>/*.jpg and val/<class>/*.jpg (also .jpeg, .png)"

    def __init__(
        self,
        root: str = "data/image_folder",
        image_size: int = 224,
        eval_resize: int | None = None,
        crop: str = "random_resized",
        scale: Sequence[float] = (0.08, 1.0),
        ratio: Sequence[float] = (3 / 4, 4 / 3),
        num_workers: int = 4,
        name: str | None = None,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        num_classes: int | None = None,
        shards: str | None = None,
        **kwargs,
    ) -> None:
        super().__init__(mean=mean, std=std, num_classes=num_classes, **kwargs)
        size = int(image_size)
        resize = int(eval_resize) if eval_resize is not None else int(round(size / 0.875))
        if size < 1 or resize < size:
            raise ConfigError(
                f"data.image_size={image_size} / data.eval_resize={eval_resize} are invalid; "
                "image_size must be >= 1 and eval_resize >= image_size (or null)."
            )
        if crop not in CROPS:
            raise ConfigError(f"data.crop={crop!r} is invalid; valid: {', '.join(CROPS)}.")
        lo, hi = (float(v) for v in scale)
        rlo, rhi = (float(v) for v in ratio)
        if not (0 < lo <= hi <= 1) or not (0 < rlo <= rhi):
            raise ConfigError(
                f"data.scale={list(scale)} / data.ratio={list(ratio)} are invalid; scale needs "
                "0 < min <= max <= 1 and ratio 0 < min <= max."
            )
        if int(num_workers) < 0:
            raise ConfigError(f"data.num_workers={num_workers} is invalid; it must be >= 0.")
        self.root = str(root)
        self.shards = str(shards) if shards not in (None, "") else None
        self.image_size = size
        self.eval_resize = resize
        self.crop = crop
        self.scale = (lo, hi)
        self.ratio = (rlo, rhi)
        self.num_workers = int(num_workers)
        if name is not None:
            self.name = str(name)
        self.geometry = Geometry(
            size, resize, crop, self.scale, self.ratio, self.flip, self.aug_seed
        )
        self._fingerprint: str | None = None
        self._pool: ThreadPoolExecutor | None = None

    # ---- files -------------------------------------------------------------------------
    def scan(self, root: Path) -> ImageFiles:
        """Read the folder's file list (subclasses read other layouts, e.g. Tiny-ImageNet's)."""
        train = split_folder(root, ("train",), self.layout)
        test = split_folder(root, ("val", "test"), self.layout)
        tr_files, tr_y, classes = scan_class_folders(root, train, None, self.layout)
        te_files, te_y, _ = scan_class_folders(root, test, classes, self.layout)
        return image_files(root, (tr_files, tr_y), (te_files, te_y), classes)

    def load_files(self) -> ImageFiles:
        if self.shards is not None:
            return read_manifest(self.shards)
        # no cache across data modules: a scan reads directory entries only (ImageNet: seconds)
        return self.scan(check_root(self.root, self.layout))

    def images(self, split: str):
        """A picklable callable: sample index of ``split`` -> PIL image, from the files or the shards."""
        a = self.arrays
        files = a.test_files if split == "test" else a.train_files
        if self.shards is None:
            return FolderImages(a.root, files)
        key = "test" if split == "test" else "train"
        cache = self.__dict__.setdefault("_shard_images", {})
        if key not in cache:  # one reader per split: it keeps its StreamingDataset open
            cache[key] = ShardImages(a.root, key, files, (a.digests or {}).get(key))
        return cache[key]

    def load_arrays(self) -> ImageFiles:
        return self.load_files()

    def setup(self, stage: str | None = None) -> None:
        if self.arrays is not None:
            return
        files = self.load_files()
        where = self.shards or self.root
        n_cls = len(files.classes)
        if self.num_classes is None:
            self.num_classes = n_cls
        if n_cls != self.num_classes:
            # more would leave outputs no label reaches; fewer, labels the networks cannot predict
            raise DataError(
                f"{where} has {n_cls} classes but data.num_classes={self.num_classes}; "
                f"set data.num_classes={n_cls} or null (counted from the class folders)."
            )
        missing = sorted(set(range(n_cls)) - set(files.test_y.unique().tolist()))
        if missing:
            split = "test" if self.shards else "val/ (or test/)"
            name = files.classes[missing[0]]
            more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
            raise DataError(
                f"{where} has no {split} images of class {name!r}{more} of its {n_cls} training "
                "classes; add some, or remove the class from train/."
            )
        self.arrays = files
        pool, self.val_idx = split_train_val(files.train_y, self.val_size, self.split_seed)
        self.train_idx = labeled_subset(pool, files.train_y, self.labeled_fraction, self.split_seed)

    # ---- loaders -----------------------------------------------------------------------
    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        self.setup()
        a = self.arrays
        labels = a.test_y if split == "test" else a.train_y
        train = split == "train"
        idx = self.train_idx if train else self.eval_indices(split)
        data = Decoded(self.images(split), idx, self.geometry, train and self.augment)
        batch = self.batch_size if train else self.eval_batch_size
        # more workers than batches or than CPUs would only cost their start-up
        workers = min(self.num_workers, -(-len(data) // batch), cpus())
        return ViewLoader(
            data,
            batch_size=batch,
            sampler=EpochSeededShuffle(data) if shuffle else None,
            drop_last=self.drops_last(split, len(data)),
            num_workers=workers,
            persistent_workers=workers > 0,  # forked once, not every epoch (see Decoded)
            collate_fn=functools.partial(
                collate, labels=None if train and self.unlabeled else labels, split=split
            ),
            view_fn=self.current_view if train and self.augment else None,
        )

    def on_after_batch_transfer(self, batch: dict[str, Any], dataloader_idx: int) -> dict[str, Any]:
        if not isinstance(batch, dict) or "split" not in batch:
            return batch
        view = self.current_view() if batch["split"] == "train" and self.augment else None
        if (
            batch.get("view") != view
        ):  # the workers cropped another view: teacher outputs would not match
            raise RuntimeError(
                f"a {batch['split']} batch was decoded for view {batch.get('view')} but the epoch's "
                f"view is {view}; iterate the loader after the epoch starts."
            )
        batch["x"] = self.transform(batch["x"], batch["idx"], view)
        return batch

    # ---- batches -----------------------------------------------------------------------
    def transform(self, x: torch.Tensor, idx: torch.Tensor, view: int | None) -> torch.Tensor:
        """uint8 batch (already cropped per image) -> normalised float; ``crop: pad`` pad-crops here."""
        if self.augment and view is not None and self.crop == "pad":
            x = random_crop_flip(x, idx, view, self.aug_seed, pad=self.pad, flip=self.flip)
        mean, std = self._norm_on(x.device)
        x = x.float().div_(255.0).sub_(mean).div_(std)  # as ArrayDataModule.transform
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    def decode(self, idx: torch.Tensor, view: int | None, split: str = "train") -> torch.Tensor:
        """The uint8 (B, 3, S, S) images of ``idx`` as a loader worker makes them, decoded on threads."""
        self.setup()
        images = self.images(split)
        view = view if split == "train" and self.augment else None

        def one(i: int) -> torch.Tensor:
            return self.geometry(images(i), i, view)

        if self._pool is None:  # PIL decodes and resizes without the GIL
            self._pool = ThreadPoolExecutor(max(1, self.num_workers))
        return torch.stack(list(self._pool.map(one, idx.tolist())))

    def view_batch(self, idx: torch.Tensor, view: int | None, split: str = "train", device=None):
        """The exact normalised input of ``idx`` for ``view`` (what the loader gives), on ``device``."""
        x = self.decode(idx.cpu(), view, split)
        if device is not None:
            x = x.to(device, non_blocking=True)
            idx = idx.to(device)
        return self.transform(x, idx, view if split == "train" else None)

    def teardown(self, stage: str) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False)
            self._pool = None

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_pool"] = None  # threads do not travel to spawned processes
        return state

    # ---- identity ----------------------------------------------------------------------
    def transform_key(self) -> dict[str, Any]:
        """Everything that decides the input of a (view, index): for teacher and store keys."""
        aug = self.augment
        return {
            "pipeline": "image_folder",
            "version": RESIZED_CROP_VERSION,
            "pillow": PIL.__version__,
            "image_size": self.image_size,
            "eval_resize": self.eval_resize,
            "augment": aug,
            "crop": self.crop if aug else None,
            "scale": list(self.scale) if aug and self.crop == "random_resized" else None,
            "ratio": list(self.ratio) if aug and self.crop == "random_resized" else None,
            "pad": self.pad if aug and self.crop == "pad" else None,
            "flip": self.flip if aug else None,
            "aug_seed": self.aug_seed if aug else None,
            "views": self.views if aug else None,
            "mean": self.mean.flatten().tolist(),
            "std": self.std.flatten().tolist(),
        }

    def fingerprint(self) -> str:
        """A short hash of the training samples: names, labels and every byte of every file.

        Each file is read once; its digest is cached by path, size and mtime
        (:func:`~kdlight.data.formats.digest.file_digests`). Shards give the digests their
        manifest recorded at conversion (checked against each image read), so a folder and
        its shards have one fingerprint.
        """
        if self._fingerprint is None:
            self.setup()
            a = self.arrays
            if self.shards is not None:
                self._fingerprint = shards_fingerprint(a.root, a)
            else:
                digests = file_digests(a.root, a.train_files.tolist(), max(1, self.num_workers))
                self._fingerprint = samples_fingerprint(a.train_y, a.train_files, digests)
        return self._fingerprint

    @property
    def input_shape(self) -> tuple[int, ...]:
        return (3, self.image_size, self.image_size)  # decoded as RGB, grey files included
