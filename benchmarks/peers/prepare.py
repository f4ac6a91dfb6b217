"""The work all three tools share: a CIFAR-10 image-folder subset and one teacher state dict.

- ``subset``: ``train/<class>/*.jpg`` (``train_per_class`` a class) and ``val/<class>/*.jpg``
  (``val_per_class`` a class, from the archive's test split), the first files of each class in
  name order, extracted from ``cifar10-jpeg.tar.gz`` (32x32 JPEGs; see ../shared/data/README.md).
- ``teacher``: a torchvision ``resnet18`` with 10 classes, randomly initialised from a fixed seed
  (speed does not depend on the weights), saved as a bare ``state_dict``. timm's ``resnet18`` has
  the same parameter names, so every tool loads this one file.
"""

from __future__ import annotations

import json
import tarfile
from collections import defaultdict
from pathlib import Path

ARCHIVE_CANDIDATES = ("../shared/data/cifar10-jpeg.tar.gz", "/work/shared/data/cifar10-jpeg.tar.gz")
SPLITS = (("train", "train"), ("test", "val"))  # archive split -> folder written


def find_archive(explicit: str | None) -> Path:
    """The CIFAR-10 JPEG archive: ``explicit``, else the shared copy beside the checkout."""
    for cand in ([explicit] if explicit else []) + list(ARCHIVE_CANDIDATES):
        if cand and Path(cand).is_file():
            return Path(cand).resolve()
    raise SystemExit(
        "CIFAR-10 archive not found: pass --archive PATH (cifar10-jpeg.tar.gz, see ../shared/data/README.md)."
    )


def subset(archive: Path, root: Path, train_per_class: int, val_per_class: int) -> dict:
    """Extract the subset into ``root`` once (a ``subset.json`` marks it done); its description."""
    marker = root / "subset.json"
    want = {
        "archive": archive.name,
        "train_per_class": train_per_class,
        "val_per_class": val_per_class,
    }
    if marker.is_file():
        done = json.loads(marker.read_text())
        if {k: done.get(k) for k in want} == want:
            return done
    per = {"train": train_per_class, "test": val_per_class}
    with tarfile.open(archive) as tar:
        members = [m for m in tar.getmembers() if m.isfile() and m.name.endswith(".jpg")]
        picked: dict[tuple[str, str], list[tarfile.TarInfo]] = defaultdict(list)
        for m in sorted(members, key=lambda m: m.name):
            parts = Path(m.name).parts
            split, cls = parts[-3], parts[-2]
            if split in per and len(picked[split, cls]) < per[split]:
                picked[split, cls].append(m)
        counts = {}
        for src, dst in SPLITS:
            n = 0
            for (split, cls), items in sorted(picked.items()):
                if split != src:
                    continue
                folder = root / dst / cls
                folder.mkdir(parents=True, exist_ok=True)
                for m in items:
                    (folder / Path(m.name).name).write_bytes(tar.extractfile(m).read())
                    n += 1
            counts[dst] = n
    classes = sorted({cls for (_, cls) in picked})
    desc = {
        **want,
        "classes": len(classes),
        "train_images": counts["train"],
        "val_images": counts["val"],
    }
    marker.write_text(json.dumps(desc, indent=1))
    return desc


def teacher(
    path: Path,
    name: str = "resnet18",
    num_classes: int = 10,
    seed: int = 0,
    zero_init_residual: bool = False,
) -> Path:
    """A randomly initialised torchvision ``name`` saved as a bare state dict at ``path`` (once).

    ``zero_init_residual``: each residual block's last BatchNorm starts at zero (torchvision's
    option, timm's default for its ResNets); without it a random ResNet-152's logits reach 1e5
    on these images, beyond float16 and a softmax that is one-hot.
    """
    if path.is_file():
        return path
    import torch
    import torchvision

    torch.manual_seed(seed)
    kwargs = {"zero_init_residual": True} if zero_init_residual else {}
    net = torchvision.models.get_model(name, weights=None, num_classes=num_classes, **kwargs)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(net.state_dict(), path)
    return path


def trained_teacher(
    path: Path, data: Path, name: str = "resnet18", epochs: int = 30, seed: int = 0
) -> Path:
    """A torchvision ``name`` trained on ``data/train`` (once) and saved as a bare state dict.

    Plain PyTorch, no tool's code: CIFAR's pad-4 crop + flip, SGD 0.05 (momentum 0.9, weight
    decay 5e-4, cosine over ``epochs``), batch 128, seed ``seed``. Its accuracy on ``data/val``
    is written beside it (``<path>.json``).
    """
    if path.is_file():
        return path
    import torch
    import torchvision
    from torchvision import transforms as T

    torch.manual_seed(seed)
    from commands import MEAN, STD  # the work's normalisation (ImageNet statistics)

    norm = T.Normalize(MEAN, STD)
    train = torchvision.datasets.ImageFolder(
        data / "train", T.Compose([T.RandomCrop(32, padding=4), T.RandomHorizontalFlip(), T.ToTensor(), norm])
    )  # fmt: skip
    val = torchvision.datasets.ImageFolder(data / "val", T.Compose([T.ToTensor(), norm]))
    loader = torch.utils.data.DataLoader(train, batch_size=128, shuffle=True, num_workers=2)
    net = torchvision.models.get_model(name, weights=None, num_classes=len(train.classes))
    opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs)
    for _ in range(epochs):
        net.train()
        for x, y in loader:
            opt.zero_grad()
            torch.nn.functional.cross_entropy(net(x), y).backward()
            opt.step()
        sched.step()
    net.eval()
    correct = 0
    with torch.no_grad():
        for x, y in torch.utils.data.DataLoader(val, batch_size=256):
            correct += int((net(x).argmax(1) == y).sum())
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(net.state_dict(), path)
    info = {"name": name, "epochs": epochs, "seed": seed, "val_acc": correct / len(val)}
    Path(f"{path}.json").write_text(json.dumps(info))
    return path
