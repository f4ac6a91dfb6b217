"""Every experiment config composes and runs one fast_dev_run step on tiny CPU data."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kdlight.run.train import run
from tests.helpers.overrides import EXPERIMENTS

# An untrained ResNet-110 gives logits ~1e8 in eval mode (its depth and He init; RepDistiller's
# too), and ~1e6 after the one batch of training a smoke run gives it: beyond float16, which the
# store rightly refuses. Trained, its logits are small. The same for an untrained torchvision ResNet-50.
# The ImageNet-recipe experiments crop 224 px: on the tiny trees 64 px exercises the same code
# about 12x faster (and the 224-px teacher input adapter still resizes). The tiny trees hold 5
# class folders: ImageNet's 1000 and Tiny-ImageNet's 200 are checked against the folder count.
SMALL = ["data.image_size=64", "data.eval_resize=64", "data.num_classes=5"]
EXTRA = {
    "cifar100_resnet110_resnet32": ["teacher_store.dtype=float32"],
    "imagenet_vanilla": SMALL,
    "imagenet_resnet34_resnet18": SMALL,
    "imagenet_resnet50_mobilenetv2": SMALL,
    "imagenet_resnet34_resnet18_dkd": SMALL,
    "imagenet_resnet34_resnet18_dist": SMALL,
    "imagenet_resnet50_mobilenetv2_dkd": SMALL,
    "imagenet_resnet50_mobilenetv2_dist": SMALL,
    # DeiT-Ti at the tiny trees' 64 px; a RegNetY-200MF teacher instead of the 16GF one (speed)
    "imagenet_deit_kd": [*SMALL, "+student.img_size=64", "teacher.name=regnety_002"],
    # the GPU-scale ViTs (21M and 5M parameters) at width 48, depth 2: the same code, ~10x faster
    "cifar100_vit_kd": [
        f"+{net}.{k}" for net in ("teacher", "student") for k in ("embed_dim=48", "depth=2")
    ],
    "imagefolder_resnet18_kd": ["data.image_size=64", "data.eval_resize=64"],  # 5: counted
    "tiny_imagenet_resnet18": ["data.num_classes=5"],
    "tiny_imagenet_resnet18_kd": [
        "teacher.input_size=64",
        "teacher_store.dtype=float32",
        "data.num_classes=5",
    ],
}


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_experiment_runs(experiment, make_cfg):
    cfg = make_cfg(
        f"+experiment={experiment}",
        "+trainer.fast_dev_run=true",
        "+teacher_train.trainer.fast_dev_run=true",  # a teacher trained here: one step too
        *EXTRA.get(experiment, []),
    )
    metrics = run(cfg)
    assert metrics["status"] == "finished"
    assert 0.0 <= metrics["test/acc_last"] <= 1.0
    written = json.loads((Path(cfg.paths.output_dir) / "metrics.json").read_text())
    assert written["test/acc_best"] == metrics["test/acc_best"]
    assert written["hparams"]["experiment"] == cfg.name
