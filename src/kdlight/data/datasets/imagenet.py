"""ImageNet-1k (ILSVRC-2012) as the standard class-folder tree: ``train/<wnid>/*.JPEG``, ``val/<wnid>/*.JPEG``.

The validation images must be sorted into class folders (as torchvision's reference scripts
and timm expect; e.g. with the ``valprep.sh`` script that circulates with the dataset).
Nothing is downloaded. Everything but the name and defaults is :class:`ImageFolderDataModule`.
"""

from __future__ import annotations

from kdlight.data.modules.image_folder import ImageFolderDataModule


class ImageNetDataModule(ImageFolderDataModule):
    """ImageNet-1k: 1,000 classes, 224 px RandomResizedCrop training, 256 -> 224 evaluation."""

    name = "imagenet"
    layout = "train/<wnid>/*.JPEG and val/<wnid>/*.JPEG (val sorted into class folders)"
