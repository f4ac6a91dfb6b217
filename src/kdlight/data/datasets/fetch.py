"""Downloads through torchvision, imported only when a dataset is not found locally (it is slow to import)."""

from __future__ import annotations

from pathlib import Path


def torchvision_dataset(name: str):
    """``torchvision.datasets.<name>``, imported only when needed (it is slow to import)."""
    import torchvision.datasets

    return getattr(torchvision.datasets, name)


def download_archive(url: str, root: Path, filename: str, md5: str) -> None:
    """Download and extract with torchvision's utility (its checksum check included)."""
    from torchvision.datasets.utils import download_and_extract_archive

    download_and_extract_archive(url, str(root), filename=filename, md5=md5)
