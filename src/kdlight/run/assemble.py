"""Assemble a run from its config, each part built once: method -> data -> teacher -> outputs -> system."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import lightning as L
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, open_dict

log = logging.getLogger(__name__)


@dataclass
class Assembly:
    """What a run fits: the system, the data module it fits on, and where its teacher came from."""

    system: L.LightningModule
    datamodule: Any
    metrics: dict[str, Any] = field(default_factory=dict)  # teacher/source, teacher/val_acc, ...


def memory_format(net: torch.nn.Module, datamodule) -> torch.nn.Module:
    """Convolution weights channels-last when the batches are (``data.channels_last``).

    NHWC batches into NCHW weights make every convolution convert layouts, forward and
    backward: on one core the 5-layer CNN's training step is about 1.4x faster with both
    channels-last (README, "Fast distillation"). Only 4-d tensors change, so MLPs are untouched;
    state dicts load either way.
    """
    if getattr(datamodule, "channels_last", False):
        net.to(memory_format=torch.channels_last)
    return net


#: models that take the data's channel count as ``in_chans`` (None: the data's)
EXTERNAL_MODELS = (
    "kdlight.models.external.timm_model",
    "kdlight.models.external.torchvision_model",
)


def fill_from_data(cfg: DictConfig, datamodule) -> None:
    """Put what the data module knows into the config's open slots.

    ``data.num_classes: null`` (``data=image_folder``): the counted class folders, which the
    networks' ``${data.num_classes}`` then see. ``in_chans: null`` of a torchvision/timm
    network: the data's channels (1 for grey-scale data). The run saves the filled config as
    its ``.hydra/config.yaml``, so a run opened later builds the same networks.
    """
    with open_dict(cfg):
        if "num_classes" in cfg.data and cfg.data.num_classes is None:
            cfg.data.num_classes = int(datamodule.num_classes)
        for role in ("teacher", "student"):
            node = cfg.get(role)
            if node is not None and node.get("_target_") in EXTERNAL_MODELS:
                if node.get("in_chans") is None:
                    node.in_chans = int(datamodule.channels)


def warn_unused_teacher(cfg: DictConfig) -> None:
    """One warning line when a teacher-free method's run configures a teacher anyway."""
    given = [
        f"{key}={value}"
        for key, value in (
            ("teacher_ckpt", cfg.get("teacher_ckpt")),
            ("teacher", (cfg.get("teacher") or {}).get("_target_")),
        )
        if value
    ]
    if given:
        name = str(cfg.distill._target_).rsplit(".", 1)[-1].lower()
        log.warning(
            "distill=%s learns without a teacher: %s ignored (no teacher is built, loaded, "
            "trained or stored)",
            name,
            ", ".join(given),
        )


def assemble(cfg: DictConfig, method=None) -> Assembly:
    """Build the run ``cfg`` describes; ``method`` is the ``distill`` method :func:`check_config` built.

    Order: the data module (set up for fitting), the teacher (loaded, or trained once into the
    store on its own seed), its outputs (the store, when the method may be served from it), then
    the student (seeded after the teacher, so training a teacher never shifts it) and the system.
    """
    from kdlight.engine import ClassifierModule, DistillationModule
    from kdlight.run.checks import check_outputs

    if cfg.get("seed") is not None:
        L.seed_everything(int(cfg.seed), workers=True)
    torch.set_float32_matmul_precision(cfg.get("matmul_precision", "high"))
    datamodule = instantiate(cfg.data)
    datamodule.prepare_data()
    datamodule.setup("fit")
    num_classes = datamodule.num_classes
    fill_from_data(cfg, datamodule)
    module_cfg = cfg.module
    options = {
        "compile": module_cfg.get("compile", False),
        "fused_optimizer": module_cfg.get("fused_optimizer", "auto"),
    }
    optimizer = instantiate(module_cfg.optimizer)
    scheduler = instantiate(module_cfg.scheduler) if module_cfg.get("scheduler") else None
    example = datamodule.view_batch(
        datamodule.val_idx[:2] if datamodule.val_idx.numel() else datamodule.train_idx[:2], None
    )
    if cfg.get("distill") is None:
        student = memory_format(instantiate(cfg.student), datamodule)
        check_outputs(student, example, num_classes, "student")
        system = ClassifierModule(student, num_classes, optimizer, scheduler, **options)
        return Assembly(system, datamodule)
    from kdlight.run.teacher import build_teacher
    from kdlight.teacher.outputs import open_store

    teacher, info, store = None, {}, None
    if method.needs_teacher:
        teacher, info = build_teacher(cfg, datamodule)
        teacher = memory_format(teacher, datamodule)
        store = open_store(cfg, teacher, datamodule) if method.uses_store else None
    else:
        warn_unused_teacher(cfg)
    if cfg.get("seed") is not None:  # the teacher's training must not shift the student's seed
        L.seed_everything(int(cfg.seed), workers=True, verbose=False)
    student = memory_format(instantiate(cfg.student), datamodule)
    check_outputs(student, example, num_classes, "student")
    system = DistillationModule(
        student,
        teacher,
        method,
        num_classes,
        optimizer,
        scheduler,
        teacher_store=store,
        log_agreement=module_cfg.get("log_agreement", True),
        **options,
    )
    # the method may swap the training data (data-free KD trains on a transfer set)
    fit_data = system.fit_datamodule(datamodule)
    return Assembly(system, fit_data, {f"teacher/{k}": v for k, v in info.items()})


__all__ = ["Assembly", "assemble", "memory_format"]
