"""The hand-written loops kdlight is measured against; only the loss math and the networks are kdlight's.

- **Bare loop, the limit** (:func:`train_bare` without a teacher): the student alone. The
  training images are one normalised float tensor in memory (channels-last for CNNs), each
  batch an index gather from it (a fresh ``randperm`` per epoch), augmentation (random crop +
  flip) as a few whole-batch tensor operations, cross-entropy, backward, optimizer step. No
  ``DataLoader``, no Lightning, no logging, no checks: nothing a step could skip.
- **Expert KD loop** (:func:`train_bare` with a teacher): the same, with the teacher run on
  every batch under ``torch.inference_mode()`` and Hinton's loss
  (:func:`kdlight.methods.kd.soft_kl`): an expert's hand-written online KD loop.
- **Plain loop** (:func:`train_kd`): a KD loop as people usually write it in plain PyTorch. PIL
  images per item with per-sample torchvision transforms in a multi-worker ``DataLoader``, the
  teacher run on every batch under ``torch.no_grad()``, then the student's forward, backward
  and optimizer step.

Both sides train the very same models.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset
from torchvision import transforms

from kd.harness import step_intervals
from kdlight.data.formats.arrays import ImageArrays
from kdlight.methods.kd import soft_kl

# ---- the bare and expert loops --------------------------------------------------------------


def normalised(
    images: torch.Tensor,
    mean: Sequence[float],
    std: Sequence[float],
    pad: int = 0,
    channels_last: bool = False,
) -> torch.Tensor:
    """uint8 (N, C, H, W) -> float ``(x / 255 - mean) / std``, zero-padded by ``pad`` (in the normalised space)."""
    m = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
    x = images.float().div_(255.0).sub_(m).div_(s)
    if pad:
        x = F.pad(x, (pad, pad, pad, pad))
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return x


def crop_flip(xp: torch.Tensor, pad: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Random H x W crops of a batch padded by ``pad`` and random horizontal flips, in one gather."""
    b, c, hp, wp = xp.shape
    h, w = hp - 2 * pad, wp - 2 * pad
    dy = torch.randint(0, 2 * pad + 1, (b, 1), generator=generator)
    dx = torch.randint(0, 2 * pad + 1, (b, 1), generator=generator)
    rows = dy + torch.arange(h)
    cols = dx + torch.arange(w)
    flip = torch.rand(b, 1, generator=generator) < 0.5
    cols = torch.where(flip, cols.flip(1), cols)
    bi = torch.arange(b).view(b, 1, 1, 1)
    ci = torch.arange(c).view(1, c, 1, 1)
    return xp[bi, ci, rows.view(b, 1, h, 1), cols.view(b, 1, 1, w)]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def train_bare(
    student: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    optimizer: torch.optim.Optimizer,
    batch_size: int = 128,
    epochs: int = 1,
    device: str = "cpu",
    seed: int = 0,
    pad: int = 0,
    channels_last: bool = False,
    teacher: nn.Module | None = None,
    alpha: float = 0.9,
    temperature: float = 4.0,
) -> dict[str, Any]:
    """Train ``student`` on ``(x, y)`` (``x`` already normalised, padded by ``pad`` when augmenting).

    Without ``teacher``: cross-entropy (the bare loop). With it: Hinton KD with the teacher
    online every batch (the expert loop). Returns per-epoch seconds, samples, steps and step
    intervals (start to next start; a CUDA step is not synchronised, so on a GPU they time the
    launches); an epoch's clock runs from drawing its permutation to its last optimizer step.
    """
    dev = torch.device(device)
    torch.manual_seed(seed)
    x, y = x.to(dev), y.to(dev)
    student.to(dev).train()
    if teacher is not None:
        teacher.to(dev).eval()
    if channels_last:
        student.to(memory_format=torch.channels_last)
        if teacher is not None:
            teacher.to(memory_format=torch.channels_last)
    n = y.numel()
    epochs_out: list[dict[str, Any]] = []
    loss = torch.zeros(())
    for epoch in range(epochs):
        _sync(dev)
        start = time.perf_counter()
        perm = torch.randperm(n, device=dev)
        steps = 0
        starts = []  # each step's start: the median interval is robust to the host's bursts
        for i in range(0, n, batch_size):
            starts.append(time.perf_counter())
            idx = perm[i : i + batch_size]
            # index_select: on a CPU, x[idx] on an N-d tensor is 5-15x slower (benchmarks/README.md)
            xb, yb = x.index_select(0, idx), y.index_select(0, idx)
            if pad:
                xb = crop_flip(xb, pad)
                if channels_last:
                    xb = xb.contiguous(memory_format=torch.channels_last)
            logits = student(xb)
            if teacher is None:
                loss = F.cross_entropy(logits, yb)
            else:
                with torch.inference_mode():
                    t_logits = teacher(xb)
                loss = alpha * soft_kl(logits, t_logits.clone(), temperature) + (
                    1.0 - alpha
                ) * F.cross_entropy(logits, yb)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            steps += 1
        _sync(dev)
        end = time.perf_counter()
        seconds = end - start
        epochs_out.append(
            {
                "epoch": epoch,
                "seconds": seconds,
                "samples": n,
                "steps": steps,
                "step_intervals": step_intervals(starts, end),
            }
        )
    if not torch.isfinite(loss.detach()):
        raise RuntimeError(f"the bare loop diverged (loss {float(loss)})")
    return {"epochs": epochs_out}


@torch.inference_mode()
def inference_seconds(
    net: nn.Module,
    x: torch.Tensor,
    batch_size: int = 256,
    device: str = "cpu",
    channels_last: bool = False,
) -> float:
    """Seconds ``net`` takes to infer over ``x`` in batches (eval mode): a teacher pass at its best."""
    dev = torch.device(device)
    net.to(dev).eval()
    if channels_last:
        net.to(memory_format=torch.channels_last)
    x = x.to(dev)
    _sync(dev)
    start = time.perf_counter()
    for i in range(0, x.shape[0], batch_size):
        net(x[i : i + batch_size])
    _sync(dev)
    return time.perf_counter() - start


# ---- the plain loop ------------------------------------------------------------------------

FMNIST_MEAN, FMNIST_STD = (0.2860,), (0.3530,)
CIFAR10_MEAN, CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)


class PILImageDataset(Dataset):
    """uint8 images (N, H, W) or (N, H, W, C) returned as PIL images, like torchvision's FashionMNIST/CIFAR10."""

    def __init__(
        self, data: np.ndarray, targets: Sequence[int], transform: Callable | None = None
    ) -> None:
        self.data = data
        self.targets = list(targets)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        img, target = Image.fromarray(self.data[index]), int(self.targets[index])
        if self.transform is not None:
            img = self.transform(img)
        return img, target


def fashion_mnist_dataset(arrays: ImageArrays, indices: torch.Tensor) -> Dataset:
    """Fashion-MNIST training images ``indices`` with ToTensor + Normalize, per sample."""
    tf = transforms.Compose([transforms.ToTensor(), transforms.Normalize(FMNIST_MEAN, FMNIST_STD)])
    full = PILImageDataset(arrays.train_x[:, 0].numpy(), arrays.train_y.tolist(), tf)
    return Subset(full, indices.tolist())


def cifar10_dataset(arrays: ImageArrays, indices: torch.Tensor) -> Dataset:
    """CIFAR-10 training images ``indices`` with RandomCrop(32, 4) + flip + ToTensor + Normalize, per sample."""
    tf = transforms.Compose(
        [
            transforms.RandomCrop(32, padding=4),
            transforms.RandomHorizontalFlip(),
            transforms.ToTensor(),
            transforms.Normalize(CIFAR10_MEAN, CIFAR10_STD),
        ]
    )
    hwc = np.ascontiguousarray(
        arrays.train_x.permute(0, 2, 3, 1).numpy()
    )  # torchvision keeps CIFAR as HWC
    full = PILImageDataset(hwc, arrays.train_y.tolist(), tf)
    return Subset(full, indices.tolist())


def train_kd(
    teacher: nn.Module,
    student: nn.Module,
    dataset: Dataset,
    optimizer: torch.optim.Optimizer,
    alpha: float,
    temperature: float,
    batch_size: int = 128,
    epochs: int = 1,
    max_steps: int | None = None,
    num_workers: int = 2,
    device: str = "cpu",
    seed: int = 0,
) -> dict[str, Any]:
    """Distill ``student`` from ``teacher`` on ``dataset``; return per-epoch wall time, samples and steps.

    Each epoch's clock runs from creating the loader iterator (worker start-up included, as a
    user would pay it) to the last optimizer step.
    """
    dev = torch.device(device)
    torch.manual_seed(seed)
    teacher.to(dev).eval()
    student.to(dev).train()
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=True,
        num_workers=num_workers,
        pin_memory=dev.type == "cuda",
    )
    epochs_out: list[dict[str, Any]] = []
    steps_done = 0
    for epoch in range(epochs):
        samples = steps = 0
        _sync(dev)
        start = time.perf_counter()
        for x, y in loader:
            x, y = x.to(dev, non_blocking=True), y.to(dev, non_blocking=True)
            with torch.no_grad():
                teacher_logits = teacher(x)
            student_logits = student(x)
            loss = alpha * soft_kl(student_logits, teacher_logits, temperature) + (
                1.0 - alpha
            ) * F.cross_entropy(student_logits, y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            samples += int(y.numel())
            steps += 1
            steps_done += 1
            if max_steps is not None and steps_done >= max_steps:
                break
        _sync(dev)
        seconds = time.perf_counter() - start
        epochs_out.append({"epoch": epoch, "seconds": seconds, "samples": samples, "steps": steps})
        if max_steps is not None and steps_done >= max_steps:
            break
    if not torch.isfinite(loss.detach()):
        raise RuntimeError(f"the plain KD loop diverged (loss {float(loss)})")
    return {"epochs": epochs_out}
