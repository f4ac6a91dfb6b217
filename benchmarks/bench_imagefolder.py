"""KD throughput on an ImageNet-style image folder (JPEGs of mixed sizes decoded by DataLoader
workers), against the input pipeline alone and the networks alone; prints one JSON document.

Usage: ``.venv/bin/python benchmarks/bench_imagefolder.py [--device cuda] [--quick]`` (see
benchmarks/README.md, section GPU). The tree is synthetic, written by this script to a temporary
folder: ``--images`` JPEGs in ``--classes`` class folders, sides drawn in [``--min-side``,
``--max-side``]. Runs, each ``--steps`` training steps of ``--batch-size`` images:

- ``loader_only``: kdlight's image-folder training loader (decode, RandomResizedCrop, flip in
  ``--num-workers`` workers), the batch moved to the device and normalised: the input limit.
- ``compute_limit``: the teacher (inference) and the student (forward, backward, SGD step) on
  random batches already on the device, channels-last, in the run's precision: the network limit.
- ``kdlight_online``: ``+experiment=imagefolder_resnet18_kd`` with torchvision ResNet-34 ->
  ResNet-18 (random weights, no download), the teacher online (``teacher_store.enabled=false``).

``samples_per_s`` counts whole epochs (DataLoader workers start again each epoch);
``steady_samples_per_s`` leaves out each epoch's first batch (worker start-up, first decode).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F

BENCH_DIR = Path(__file__).resolve().parent
CONF_DIR = BENCH_DIR.parent / "src" / "kdlight" / "conf"
if str(BENCH_DIR) not in sys.path:  # Hydra instantiates bench_imagefolder.EpochClock
    sys.path.insert(0, str(BENCH_DIR))

from kd.harness import emit, machine, quiet, ratio, rounded, stdout_to_stderr  # noqa: E402

EXPERIMENT = "imagefolder_resnet18_kd"
PRECISIONS = ("32-true", "bf16-mixed")


def _log(msg: str) -> None:
    print(f"[bench_imagefolder] {msg}", file=sys.stderr, flush=True)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ---- the tree ----------------------------------------------------------------------------


def _write_image(path: Path, label: int, side: tuple[int, int], seed: int) -> int:
    """One JPEG: a smooth class-tinted field plus pixel noise (decodes like a photo of that size)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    w, h = side
    coarse = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
    field = np.asarray(Image.fromarray(coarse).resize((w, h), Image.BILINEAR), dtype=np.float32)
    tint = np.array([(label * 70) % 256, (label * 130) % 256, (label * 190) % 256], np.float32)
    pixels = 0.6 * field + 0.4 * tint + rng.normal(0.0, 12.0, (h, w, 3))
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(path, quality=90)
    return path.stat().st_size


def write_tree(
    root: Path, images: int, classes: int, val_per_class: int, sides: tuple[int, int], seed: int
) -> dict[str, Any]:
    """``root/train/<class>/*.jpg`` (``images`` files) and ``root/val/<class>/*.jpg``; its statistics."""
    rng = np.random.default_rng(seed)
    jobs = []
    for split, count in (("train", images), ("val", val_per_class * classes)):
        for k in range(count):
            label = k % classes
            folder = root / split / f"class_{label:03d}"
            folder.mkdir(parents=True, exist_ok=True)
            side = tuple(int(s) for s in rng.integers(sides[0], sides[1] + 1, 2))
            jobs.append((folder / f"{split}_{k:06d}.jpg", label, side, int(rng.integers(2**31))))
    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=max(1, min(16, os.cpu_count() or 1))) as pool:
        sizes = list(pool.map(lambda j: _write_image(*j), jobs))
    pixels = [j[2][0] * j[2][1] for j in jobs]
    return {
        "train_images": images,
        "val_images": val_per_class * classes,
        "classes": classes,
        "side_range": list(sides),
        "mean_pixels": round(float(np.mean(pixels))),
        "mean_jpeg_bytes": round(float(np.mean(sizes))),
        "write_s": rounded(time.perf_counter() - start),
    }


# ---- timing ------------------------------------------------------------------------------


class EpochClock(L.Callback):
    """Per training epoch: seconds, samples, and the time from the end of its first batch to its end.

    Two device synchronisations per epoch (after the first batch, at the end), none in between,
    so the steps overlap as they do in an untimed run. Writes JSON to ``out`` when training ends.
    """

    def __init__(self, out: str) -> None:
        self.out = out
        self.epochs: list[dict[str, Any]] = []

    def _now(self, pl_module: L.LightningModule) -> float:
        _sync(pl_module.device)
        return time.perf_counter()

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._t0, self._first, self._samples, self._first_n = self._now(pl_module), None, 0, 0
        self._steps = 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._samples += int(batch["idx"].numel())
        self._steps += 1
        if self._first is None:
            self._first, self._first_n = self._now(pl_module), self._samples

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        end = self._now(pl_module)
        first = end if self._first is None else self._first
        self.epochs.append(
            {
                "seconds": end - self._t0,
                "samples": self._samples,
                "steps": self._steps,
                "steady_seconds": end - first,
                "steady_samples": self._samples - self._first_n,
            }
        )

    def on_train_end(self, trainer, pl_module) -> None:
        Path(self.out).write_text(json.dumps({"epochs": self.epochs}))


def summarise(epochs: list[dict[str, Any]], steps: int) -> dict[str, Any]:
    samples = sum(e["samples"] for e in epochs)
    seconds = sum(e["seconds"] for e in epochs)
    steady_n = sum(e["steady_samples"] for e in epochs)
    steady_s = sum(e["steady_seconds"] for e in epochs)
    return {
        "epochs": len(epochs),
        "steps": steps,
        "samples": samples,
        "seconds": rounded(seconds),
        "samples_per_s": rounded(samples / seconds, 1) if seconds > 0 else None,
        "steady_samples_per_s": rounded(steady_n / steady_s, 1) if steady_s > 0 else None,
    }


# ---- runs --------------------------------------------------------------------------------


def compose(a: argparse.Namespace, tree: Path, work: Path, extra: list[str]):
    """The config a user gets for the experiment on this tree, with benchmark plumbing (no logger, no validation)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    overrides = [
        f"+experiment={EXPERIMENT}",
        "model@student=torchvision",  # both torchvision: no timm needed
        "student.name=resnet18",
        "teacher.name=resnet34",
        f"data.root={tree}",
        f"data.num_classes={a.classes}",
        f"data.image_size={a.image_size}",
        f"data.batch_size={a.batch_size}",
        f"data.eval_batch_size={a.batch_size}",
        f"data.num_workers={a.num_workers}",
        f"data.val_size={a.classes}",  # one image per class held out: validation is off anyway
        f"paths.output_dir={work / 'run'}",
        f"paths.store_dir={work / 'store'}",
        f"trainer.accelerator={'gpu' if a.device == 'cuda' else 'cpu'}",
        f"trainer.precision={a.precision}",
        "teacher_store.enabled=false",
        "module.log_agreement=false",
        "~logger",
        "callbacks=none",
        "+trainer.enable_progress_bar=false",
        "+trainer.enable_model_summary=false",
        "+trainer.enable_checkpointing=false",
        "+trainer.limit_val_batches=0",
        "+trainer.limit_test_batches=1",
        *extra,
    ]
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return hydra_compose(config_name="train", overrides=overrides)


def save_teacher(cfg, path: Path, image_size: int) -> Path:
    """A randomly initialised teacher's state_dict, BatchNorm statistics set on a few random batches."""
    from hydra.utils import instantiate

    torch.manual_seed(0)
    net = instantiate(cfg.teacher).train()
    with torch.no_grad():
        for _ in range(2):
            net(torch.randn(8, 3, image_size, image_size))
    torch.save(net.state_dict(), path)
    return path


def loader_only(cfg, steps: int, device: torch.device) -> dict[str, Any]:
    """kdlight's training loader alone: decode + crop in workers, to the device, normalised."""
    from hydra.utils import instantiate

    dm = instantiate(cfg.data)
    dm.setup("fit")
    epochs, done = [], 0
    while done < steps:
        loader = dm.train_dataloader()
        _sync(device)
        t0, first, first_n, n = time.perf_counter(), None, 0, 0
        for batch in loader:
            x = batch["x"].to(device, non_blocking=True)
            dm.transform(x, batch["idx"], None)
            n += int(batch["idx"].numel())
            done += 1
            if first is None:
                _sync(device)
                first, first_n = time.perf_counter(), n
            if done >= steps:
                break
        _sync(device)
        end = time.perf_counter()
        epochs.append(
            {
                "seconds": end - t0,
                "samples": n,
                "steady_seconds": end - first,
                "steady_samples": n - first_n,
            }
        )
    return summarise(epochs, done) | {"num_workers": int(loader.num_workers)}


def compute_limit(cfg, teacher_file: Path, a: argparse.Namespace, device: torch.device):
    """Teacher inference + student training step on random on-device batches: no data loading at all."""
    from hydra.utils import instantiate

    teacher = instantiate(cfg.teacher)
    teacher.load_state_dict(torch.load(teacher_file, map_location="cpu", weights_only=True))
    torch.manual_seed(0)
    student = instantiate(cfg.student)
    teacher.to(device, memory_format=torch.channels_last).eval()
    student.to(device, memory_format=torch.channels_last).train()
    optimizer = instantiate(cfg.module.optimizer)(student.parameters())
    alpha, t = float(cfg.distill.alpha), float(cfg.distill.temperature)
    x = torch.randn(a.batch_size, 3, a.image_size, a.image_size, device=device)
    x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, a.classes, (a.batch_size,), device=device)
    autocast = (
        torch.autocast(device.type, dtype=torch.bfloat16)
        if a.precision == "bf16-mixed"
        else contextlib.nullcontext()
    )

    def step() -> torch.Tensor:
        with autocast:
            with torch.inference_mode():
                t_logits = teacher(x)
            logits = student(x)
            soft = F.kl_div(
                F.log_softmax(logits.float() / t, 1),
                F.log_softmax(t_logits.float().clone() / t, 1),
                reduction="batchmean",
                log_target=True,
            )
            loss = alpha * t * t * soft + (1 - alpha) * F.cross_entropy(logits.float(), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return loss

    warmup = min(3, a.steps)
    for _ in range(warmup):  # allocator, kernel selection
        step()
    _sync(device)
    start = time.perf_counter()
    for _ in range(a.steps):
        loss = step()
    _sync(device)
    seconds = time.perf_counter() - start
    if not torch.isfinite(loss.detach()):
        raise RuntimeError(f"the compute-limit loop diverged (loss {float(loss)})")
    samples = a.steps * a.batch_size
    return {
        "steps": a.steps,
        "warmup_steps": warmup,
        "samples": samples,
        "seconds": rounded(seconds),
        "samples_per_s": rounded(samples / seconds, 1),
    }


def kdlight_online(cfg_overrides, a, tree: Path, work: Path) -> dict[str, Any]:
    from kdlight.run.train import run

    clock = work / "clock.json"
    start = time.perf_counter()
    cfg = compose(
        a,
        tree,
        work,
        [
            *cfg_overrides,
            "+callbacks.clock._target_=bench_imagefolder.EpochClock",
            f"+callbacks.clock.out={clock}",
        ],
    )
    run(cfg)
    wall = time.perf_counter() - start
    epochs = json.loads(clock.read_text())["epochs"]
    return summarise(epochs, sum(e["steps"] for e in epochs)) | {"run_wall_s": rounded(wall)}


# ---- CLI ---------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument(
        "--quick", action="store_true", help="tiny sizes: checks it runs; numbers mean nothing"
    )
    p.add_argument(
        "--images", type=int, default=None, help="training JPEGs (default 2000; --quick: 48)"
    )
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--min-side", type=int, default=None, help="default 160 (--quick: 40)")
    p.add_argument("--max-side", type=int, default=None, help="default 500 (--quick: 80)")
    p.add_argument(
        "--image-size", type=int, default=None, help="network input side (default 224; --quick: 32)"
    )
    p.add_argument("--batch-size", type=int, default=None, help="default 128 (--quick: 8)")
    p.add_argument(
        "--steps", type=int, default=None, help="training steps per run (default 300; --quick: 6)"
    )
    p.add_argument(
        "--num-workers",
        type=int,
        default=None,
        help="DataLoader workers (default: min(16, CPUs); --quick: 2)",
    )
    p.add_argument(
        "--precision",
        choices=PRECISIONS,
        default=None,
        help="default bf16-mixed on cuda, 32-true on cpu",
    )
    p.add_argument(
        "--work-dir", default=None, help="keep the tree and runs here (default: a temporary folder)"
    )
    p.add_argument("--output", default=None, help="also write the JSON to this file")
    a = p.parse_args(argv)
    q = a.quick
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    a.images = a.images or (48 if q else 2000)
    a.min_side = a.min_side or (40 if q else 160)
    a.max_side = a.max_side or (80 if q else 500)
    a.image_size = a.image_size or (32 if q else 224)
    a.batch_size = a.batch_size or (8 if q else 128)
    a.steps = a.steps or (6 if q else 300)
    a.num_workers = a.num_workers if a.num_workers is not None else (2 if q else min(16, cpus))
    a.precision = a.precision or ("bf16-mixed" if a.device == "cuda" else "32-true")
    if a.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda was asked for but torch sees no CUDA device")
    if not 1 <= a.min_side <= a.max_side:
        p.error(
            f"--min-side {a.min_side} / --max-side {a.max_side} are invalid; need 1 <= min <= max"
        )
    if a.images < 2 * a.classes:
        p.error(
            f"--images {a.images} is invalid; it must be at least 2 x --classes ({2 * a.classes})"
        )
    return a


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    quiet()
    device = torch.device(a.device)
    doc: dict[str, Any] = {
        "benchmark": "KD on an image folder (torchvision ResNet-34 -> ResNet-18) vs its input and network limits",
        "quick": a.quick,
        "machine": machine(),
        "device": a.device,
        "precision": a.precision,
        "torch_threads": torch.get_num_threads(),
        "batch_size": a.batch_size,
        "image_size": a.image_size,
        "num_workers": a.num_workers,
        "loadavg_start": [rounded(x, 2) for x in os.getloadavg()],
    }
    started = time.perf_counter()
    with contextlib.ExitStack() as stack:
        work = (
            Path(a.work_dir)
            if a.work_dir
            else Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="kdbench-if-")))
        )
        tree = work / "tree"
        with stdout_to_stderr():
            _log(f"writing {a.images} JPEGs to {tree}")
            doc["tree"] = write_tree(tree, a.images, a.classes, 2, (a.min_side, a.max_side), seed=0)
            per_epoch = math.ceil((a.images - a.classes) / a.batch_size)
            epochs = math.ceil(a.steps / per_epoch)
            cfg = compose(a, tree, work, [])
            teacher = save_teacher(cfg, work / "teacher_resnet34.pt", a.image_size)
            runs: dict[str, Any] = {}
            _log(f"loader_only: {a.steps} steps")
            runs["loader_only"] = loader_only(cfg, a.steps, device)
            _log(f"  {runs['loader_only']['steady_samples_per_s']} images/s steady")
            _log(f"compute_limit: {a.steps} steps")
            runs["compute_limit"] = compute_limit(cfg, teacher, a, device)
            _log(f"  {runs['compute_limit']['samples_per_s']} images/s")
            _log(f"kdlight_online: {epochs} epochs x {per_epoch} steps")
            runs["kdlight_online"] = kdlight_online(
                [
                    f"teacher_ckpt={teacher}",
                    f"trainer.max_epochs={epochs}",
                    f"+trainer.max_steps={a.steps}",
                ],
                a,
                tree,
                work,
            )
            _log(f"  {runs['kdlight_online']['steady_samples_per_s']} images/s steady")
    kd = runs["kdlight_online"]
    doc |= {
        "runs": runs,
        "ratios": {
            "kdlight_steady_over_loader_only_steady": ratio(
                kd["steady_samples_per_s"] or 0.0,
                runs["loader_only"]["steady_samples_per_s"] or 0.0,
            ),
            "kdlight_steady_over_compute_limit": ratio(
                kd["steady_samples_per_s"] or 0.0, runs["compute_limit"]["samples_per_s"]
            ),
            "loader_only_steady_over_compute_limit": ratio(
                runs["loader_only"]["steady_samples_per_s"] or 0.0,
                runs["compute_limit"]["samples_per_s"],
            ),
        },
        "notes": [
            "a synthetic tree: smooth class-tinted fields plus pixel noise as JPEG (quality 90), sides drawn "
            "uniformly in side_range; what is measured is decoding and training speed, not accuracy",
            "loader_only: the training loader kdlight builds (RandomResizedCrop + flip per image in "
            "num_workers workers), each batch moved to the device and normalised, nothing else",
            "compute_limit: teacher inference + student forward/backward/SGD on one random batch already on "
            "the device (channels-last, the run's precision), after warmup_steps untimed steps",
            "kdlight_online: python API run of +experiment=imagefolder_resnet18_kd with torchvision resnet34 -> "
            "resnet18 (random weights from teacher_ckpt), teacher online, validation off, one test batch",
            "samples_per_s: whole epochs (workers restart each epoch); steady_samples_per_s: each epoch from "
            "the end of its first batch to its end",
        ],
        "total_s": rounded(time.perf_counter() - started),
        "loadavg_end": [rounded(x, 2) for x in os.getloadavg()],
    }
    emit(doc, a.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
