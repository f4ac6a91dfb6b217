"""The reference: a KD loop as people usually write it in plain PyTorch (the baseline of bench_kd.py).

PIL images per item with per-sample torchvision transforms in a multi-worker ``DataLoader``,
the teacher run on every batch under ``torch.no_grad()``, then the student's forward,
backward and optimizer step. Only the loss math is shared with kdlight
(:func:`kdlight.methods.kd.KD`); the networks are kdlight's, so both sides train
the very same models.
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

from kdlight.data.sources import ImageArrays
from kdlight.methods.kd import soft_kl

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


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


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
