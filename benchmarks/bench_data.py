"""Training-input throughput on an ImageNet-style image folder: kdlight's folder and shards
loaders against torchvision's ``ImageFolder``; prints one JSON document on stdout.

Usage: ``.venv/bin/python benchmarks/bench_data.py [--root TREE] [--workers 0,1,2]`` (see
benchmarks/README.md, section "Data loading"). Without ``--root`` the tree is synthetic, written
to a temporary folder (``--images`` JPEGs of sides in [``--min-side``, ``--max-side``], the same
generator as ``bench_imagefolder.py``); ``--root`` takes any ``train/<class>/*`` (+ ``val/``) tree.
The tree is converted once with ``kdlight-shards convert`` (timed: ``convert_s``).

Each side runs one shuffled epoch over every training image per worker count, batch
``--batch-size``, and ends with a normalised float (B, 3, S, S) batch in the main process:

- ``torchvision``: ``ImageFolder(train/)`` with ``RandomResizedCrop(S)``, ``RandomHorizontalFlip()``,
  ``ToTensor()``, ``Normalize(ImageNet)`` in a ``DataLoader(shuffle=True, num_workers=w)``.
- ``kdlight_folder``: ``ImageFolderDataModule``'s training loader (decode, RandomResizedCrop from
  the (seed, view, index) generator, flip, in ``w`` workers) then its batch transform
  (uint8 -> float, normalise), as ``on_after_batch_transfer`` runs it; NCHW like torchvision's.
- ``kdlight_shards``: the same module with ``shards=`` the converted folder.
- ``kdlight_folder_uint8``, ``kdlight_shards_uint8``: the loaders' uint8 batches, not normalised:
  in a GPU run the normalisation runs on the device after the (4x smaller) uint8 copy, so this
  is what the CPU side of such a run pays. On a CPU-only run the float side is the one to read.

``images_per_s`` = images / seconds from creating the loader's iterator to the last batch
(worker start-up included, as a training epoch pays it); ``ratio_*`` = kdlight / torchvision at
the same worker count, measured in the same run (the best of ``--repeats`` epochs each).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch

BENCH_DIR = Path(__file__).resolve().parent
if str(BENCH_DIR) not in sys.path:
    sys.path.insert(0, str(BENCH_DIR))

from bench_imagefolder import write_tree  # noqa: E402
from kd.harness import emit, machine, quiet, ratio, rounded  # noqa: E402

SIDES = (
    "torchvision",
    "kdlight_folder",
    "kdlight_shards",
    "kdlight_folder_uint8",
    "kdlight_shards_uint8",
)
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def _log(msg: str) -> None:
    print(f"[bench_data] {msg}", file=sys.stderr, flush=True)


def _uptime() -> str:
    try:
        return subprocess.run(
            ["uptime"], capture_output=True, text=True, check=False
        ).stdout.strip()
    except OSError:
        return ""


def torchvision_epoch(root: Path, size: int, batch: int, workers: int) -> tuple[int, float]:
    import torchvision.transforms as T
    from torchvision.datasets import ImageFolder

    tf = T.Compose(
        [
            T.RandomResizedCrop(size),
            T.RandomHorizontalFlip(),
            T.ToTensor(),
            T.Normalize(MEAN, STD),
        ]
    )
    loader = torch.utils.data.DataLoader(
        ImageFolder(str(root / "train"), transform=tf),
        batch_size=batch,
        shuffle=True,
        num_workers=workers,
    )
    n, start = 0, time.perf_counter()
    for x, _ in loader:
        n += x.shape[0]
    return n, time.perf_counter() - start


def kdlight_epoch(
    root: Path,
    shards: Path | None,
    size: int,
    batch: int,
    workers: int,
    classes: int,
    normalise: bool = True,
) -> tuple[int, float]:
    from kdlight.data.modules.image_folder import ImageFolderDataModule

    dm = ImageFolderDataModule(
        root=str(root),
        shards=str(shards) if shards else None,
        num_classes=classes,
        val_size=0,
        batch_size=batch,
        image_size=size,
        num_workers=workers,
        augment=True,
        channels_last=False,
    )
    dm.trainer = SimpleNamespace(current_epoch=0)  # what current_view() reads
    dm.setup()
    n, start = 0, time.perf_counter()
    for b in dm.train_dataloader():
        x = dm.on_after_batch_transfer(b, 0)["x"] if normalise else b["x"]
        n += x.shape[0]
    return n, time.perf_counter() - start


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--root", type=Path, default=None, help="an image tree (default: synthetic)")
    p.add_argument("--images", type=int, default=2000, help="synthetic training images")
    p.add_argument("--classes", type=int, default=10, help="synthetic classes")
    p.add_argument("--min-side", type=int, default=300)
    p.add_argument("--max-side", type=int, default=500)
    p.add_argument("--image-size", type=int, default=224, help="RandomResizedCrop output side")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--workers", default="0,1,2", help="DataLoader worker counts, comma-separated")
    p.add_argument("--repeats", type=int, default=1, help="epochs per side and worker count")
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch threads of the main process (default: torch's); workers use 1 each",
    )
    p.add_argument("--work-dir", type=Path, default=None, help="keep the tree and shards here")
    p.add_argument("--output", type=Path, default=None, help="also write the JSON here")
    p.add_argument("--quick", action="store_true", help="200 small images: checks it runs")
    a = p.parse_args(argv)
    if a.quick:
        a.images, a.min_side, a.max_side, a.image_size = 200, 64, 128, 64
    return a


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    quiet()
    from kdlight.data.shards.convert import convert

    workers = [int(w) for w in a.workers.split(",") if w.strip()]
    if a.threads is not None:
        torch.set_num_threads(a.threads)
    doc: dict[str, Any] = {
        "benchmark": "training input throughput (decode + RandomResizedCrop + flip + normalise): "
        "kdlight image folder and shards vs torchvision ImageFolder",
        "quick": a.quick,
        "machine": machine(),
        "torch_threads": torch.get_num_threads(),
        "uptime_start": _uptime(),
        "loadavg_start": [rounded(x, 2) for x in os.getloadavg()],
        "batch_size": a.batch_size,
        "image_size": a.image_size,
        "workers": workers,
        "repeats": a.repeats,
    }
    with tempfile.TemporaryDirectory(prefix="bench_data_") as tmp:
        work = a.work_dir or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        if a.root is None:
            root = work / "tree"
            _log(f"writing {a.images} JPEGs to {root}")
            doc["tree"] = write_tree(root, a.images, a.classes, 1, (a.min_side, a.max_side), seed=0)
        else:
            root = a.root.expanduser().resolve()
            doc["tree"] = {"root": str(root)}
        classes = len([p for p in (root / "train").iterdir() if p.is_dir()])
        shards = work / "shards"
        _log(f"converting {root} to shards in {shards}")
        start = time.perf_counter()
        convert(root, shards, progress=False)
        doc["convert_s"] = rounded(time.perf_counter() - start)
        doc["shards_bytes"] = sum(f.stat().st_size for f in shards.rglob("*.bin"))
        doc["tree_bytes"] = sum(
            f.stat().st_size for f in (root / "train").rglob("*") if f.is_file()
        )
        runs: dict[str, Any] = {}
        for w in workers:
            sides: dict[str, list[float]] = {s: [] for s in SIDES}
            counts: dict[str, int] = {}
            for rep in range(a.repeats):
                for side in SIDES:  # interleaved, so a change in the machine's load hits all three
                    if side == "torchvision":
                        n, sec = torchvision_epoch(root, a.image_size, a.batch_size, w)
                    else:
                        sh = shards if side.startswith("kdlight_shards") else None
                        norm = not side.endswith("_uint8")
                        n, sec = kdlight_epoch(
                            root, sh, a.image_size, a.batch_size, w, classes, normalise=norm
                        )
                    sides[side].append(n / sec)
                    counts[side] = n
                    _log(f"workers={w} repeat={rep} {side}: {n} images in {sec:.2f} s")
            best = {s: max(v) for s, v in sides.items()}
            runs[str(w)] = {
                **{
                    s: {"images": counts[s], "images_per_s": [rounded(x, 1) for x in v]}
                    for s, v in sides.items()
                },
                "ratio_folder_to_torchvision": ratio(best["kdlight_folder"], best["torchvision"]),
                "ratio_shards_to_torchvision": ratio(best["kdlight_shards"], best["torchvision"]),
                "ratio_shards_to_folder": ratio(best["kdlight_shards"], best["kdlight_folder"]),
                "ratio_folder_uint8_to_torchvision": ratio(
                    best["kdlight_folder_uint8"], best["torchvision"]
                ),
                "ratio_shards_uint8_to_torchvision": ratio(
                    best["kdlight_shards_uint8"], best["torchvision"]
                ),
            }
        doc["runs"] = runs
    doc["uptime_end"] = _uptime()
    doc["loadavg_end"] = [rounded(x, 2) for x in os.getloadavg()]
    emit(doc, a.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
