"""The CIFAR-10 cases (one body): ``cifar_resnet18_cnn`` and, on a GPU, ``cifar_resnext29_resnet18``."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from kd.harness import (
    STEP_MEDIAN_NOTE,
    Options,
    case_header,
    judge_targets,
    log,
    ratio,
    repeated,
    to_limit,
)
from kd.runs import bare, compose, kdlight, normalised_train, plain, save_teacher, subset

CIFAR_TARGETS = {"kdlight_warm_over_bare": ("kdlight_store_warm", "bare_limit", 0.9)}
#: the CIFAR-10 cases (one body, case_cifar): experiment, teacher, what is measured, targets
CIFAR_CASES: dict[str, tuple[str, str, str, dict[str, tuple[str, str, float]]]] = {
    "cifar_resnet18_cnn": (
        "cifar_cnn_kd",
        "ResNet-18",
        "ResNet-18 teacher -> 5-layer CNN student (dropout 0.5), Hinton KD, Adam, RandomCrop(32, 4) + flip",
        CIFAR_TARGETS,
    ),
    "cifar_resnext29_resnet18": (
        "cifar_resnet18_kd_resnext",
        "ResNeXt-29 8x64d",
        "ResNeXt-29 8x64d teacher -> ResNet-18 student, Hinton KD (alpha 0.95, T 6), SGD, "
        "RandomCrop(32, 4) + flip",
        {},
    ),
}


def case_cifar(o: Options, work: Path, name: str = "cifar_resnet18_cnn") -> dict[str, Any]:
    """A CIFAR-10 case of :data:`CIFAR_CASES` (ResNet-18 -> 5-layer CNN, ...) with crop+flip, a fixed number of steps."""
    from kd.loops import cifar10_dataset
    from kdlight.data.datasets.cifar10 import load_cifar10

    arrays = load_cifar10(o.data_dir)
    idx, fraction = subset(arrays.train_y, o, o.cifar_steps * o.batch_size)
    common = [f"data.labeled_fraction={fraction}", "trainer.max_epochs=1"]
    experiment, teacher_name, what, targets = CIFAR_CASES[name]
    cfg = compose(experiment, common, work / "runs" / "compose", work / "unused", o)
    # --quick: BatchNorm statistics from one small batch (a ResNeXt-29 pass over 64 images takes a CPU long)
    teacher = save_teacher(cfg, work / f"teacher_{name}.pt", o.batch_size if o.quick else 64)
    kd = [*common, f"teacher_ckpt={teacher}"]
    store = work / "store_cifar"

    log(f"{name}: {idx.numel()} training samples = {math.ceil(idx.numel() / o.batch_size)} steps")
    pad = int(cfg.data.pad)
    x, y = normalised_train(arrays, idx, cfg, pad=pad, channels_last=True)
    bare_args = {"pad": pad, "channels_last": True}
    runs = {
        "expert_kd_online": bare(cfg, x, y, o, 1, teacher_file=teacher, tag="expert", **bare_args),
        "plain_loop": plain(cfg, teacher, cifar10_dataset(arrays, idx), o, 1),
        "kdlight_online": kdlight(
            "cifar_online", experiment, [*kd, "teacher_store.enabled=false"], work, store, o
        ),
        "kdlight_store_cold": kdlight("cifar_cold", experiment, kd, work, store, o),
    }
    # the target's two runs (fast with the store warm), --repeat times in rotating rounds
    runs = {
        **repeated(
            {
                "bare_limit": lambda: bare(cfg, x, y, o, 1, tag="bare", **bare_args),
                "kdlight_store_warm": lambda: kdlight("cifar_warm", experiment, kd, work, store, o),
            },
            o.repeat,
        ),
        **runs,
    }
    plain_speed = runs["plain_loop"]["samples_per_s"]
    return {
        "what": what,
        **case_header(o),
        "train_samples": int(idx.numel()),
        "steps": math.ceil(idx.numel() / o.batch_size),
        "runs": runs,
        "to_limit": to_limit(runs),
        "targets": judge_targets(runs, targets),
        "ratios": {
            "kdlight_warm_over_plain": ratio(
                runs["kdlight_store_warm"]["samples_per_s"], plain_speed
            ),
            "kdlight_online_over_plain": ratio(
                runs["kdlight_online"]["samples_per_s"], plain_speed
            ),
            "kdlight_cold_incl_fill_over_plain": ratio(
                runs["kdlight_store_cold"]["samples_per_s"], plain_speed
            ),
            "kdlight_cold_excl_fill_over_plain": ratio(
                runs["kdlight_store_cold"]["samples_per_s_excl_store"], plain_speed
            ),
            "kdlight_online_over_expert": ratio(
                runs["kdlight_online"]["samples_per_s"], runs["expert_kd_online"]["samples_per_s"]
            ),
        },
        "notes": [
            "bare_limit: the student alone over one normalised, zero-padded, channels-last tensor in memory; "
            "each batch an index gather, then random crop + flip as one gather (benchmarks/kd/loops.py); "
            f"expert_kd_online: the same with the {teacher_name} teacher run every batch",
            f"the fixed step count is one epoch over a stratified subset of steps x batch = {idx.numel()} training "
            f"images (data.labeled_fraction={fraction:.6g}); the plain loop trains on the same images",
            "augmentation makes each epoch its own view: the cold run's store fill (store_s) runs the teacher "
            "once over every image of the subset for epoch 0's view, in inference batches of teacher_store.batch_size "
            "(default 256); the warm run repeats the same run with the same store directory, so the view is already there",
            "kdlight's CIFAR-10 batches are channels-last (data.channels_last, default true); the plain loop's are NCHW, "
            "as torchvision's transforms make them",
            "a warm store is what every run after the first of a sweep over alpha, T or lr sees (case sweep10)",
            STEP_MEDIAN_NOTE,
        ],
    }
