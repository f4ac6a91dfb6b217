"""What to export: the student (and teacher) networks, their input shape and the output folder.

Two ways to name the network:

- a kdlight run (a run folder or ``<run>/checkpoints/X.ckpt``), opened by :mod:`kdlight.run.read`:
  the student (and, for a distillation run, the teacher) is built from the run's
  ``.hydra/config.yaml``; the student's weights come from the validation-best checkpoint
  (``which="last"``: ``last.ckpt``), the teacher's from ``teacher_ckpt`` or the
  ``teacher/source`` the run recorded. The input shape follows the data config;
- a model config in ``conf/model/`` and a weights file in any format
  :func:`kdlight.checkpoints.load_weights` reads (or random weights, for size and speed only).
"""

from __future__ import annotations

import argparse
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra.utils import instantiate
from omegaconf import DictConfig
from torch import nn

from kdlight.checkpoints import load_weights
from kdlight.config import CONFIG_DIR
from kdlight.errors import CheckpointError, ConfigError
from kdlight.run.read import Run, build_method, deployed_network, find_run
from kdlight.run.record import METRICS_FILE

log = logging.getLogger(__name__)

# Input shape (C, H, W) per dataset, matched against the data config's ``_target_``.
_DATA_SHAPES = (("mnist", (1, 28, 28)), ("cifar", (3, 32, 32)))


@dataclass
class Network:
    """A network to export: its role (``student``/``teacher``), a display name and where its weights came from."""

    role: str
    name: str
    net: nn.Module
    source: dict[str, Any] = field(default_factory=dict)


@dataclass
class Plan:
    """Everything :func:`export` needs: the networks, their input shape and the output folder."""

    student: Network
    teacher: Network | None
    input_shape: tuple[int, ...]
    out: Path
    run_dir: Path | None = None
    notes: list[str] = field(default_factory=list)
    accuracy: dict[str, float] = field(default_factory=dict)


# ---- building the networks ----------------------------------------------------------------


def model_names() -> list[str]:
    """The model configs in ``conf/model/`` (the names ``--model`` accepts)."""
    return sorted(p.stem for p in Path(CONFIG_DIR, "model").glob("*.yaml"))


def parse_input_shape(text: str) -> tuple[int, ...]:
    """Parse ``"3,32,32"`` into ``(3, 32, 32)``: positive integers, no batch dimension."""
    try:
        shape = tuple(int(p) for p in str(text).replace(" ", "").split(","))
    except ValueError:
        shape = ()
    if not shape or any(d <= 0 for d in shape):
        raise ConfigError(
            f"--input-shape {text!r} is invalid; give the per-image shape as positive integers "
            "separated by commas, without the batch dimension, e.g. 3,32,32 or 1,28,28."
        )
    return shape


def data_input_shape(data_cfg: DictConfig | dict | None) -> tuple[int, ...] | None:
    """The per-image input shape of a data config (MNIST family (1, 28, 28), CIFAR (3, 32, 32)), or None."""
    target = str((data_cfg or {}).get("_target_", "")).lower()
    for key, shape in _DATA_SHAPES:
        if key in target:
            return shape
    return None


def model_input_shape(model_cfg: DictConfig) -> tuple[int, ...]:
    """A zoo model's natural input: an MLP on 784 features takes MNIST images, conv nets CIFAR ones."""
    if "in_features" in model_cfg:
        n = int(model_cfg.in_features)
        return (1, 28, 28) if n == 784 else (n,)
    return (3, 32, 32)


def display_name(model_cfg: DictConfig | dict) -> str:
    """A short architecture name from a model config, e.g. ``MLP-800-800``, ``ResNet-20``."""
    name = str(model_cfg["_target_"]).rsplit(".", 1)[-1]
    if "depth" in model_cfg:
        name += f"-{model_cfg['depth']}"
    if "hidden" in model_cfg:
        name += "-" + "-".join(str(h) for h in model_cfg["hidden"])
    return name


def compose_model(name: str, num_classes: int) -> DictConfig:
    """Compose ``conf/model/<name>.yaml`` with ``data.num_classes=num_classes``; return the model node."""
    names = model_names()
    if name not in names:
        raise ConfigError(f"unknown model {name!r}; valid names are: {', '.join(names)}.")
    if num_classes < 1:
        raise ConfigError(f"--num-classes {num_classes} is invalid; it must be >= 1.")
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose(overrides=[f"+model={name}", f"+data.num_classes={num_classes}"])
    return cfg.model


def build_named(
    role: str, name: str, weights: str | os.PathLike | None, num_classes: int
) -> tuple[Network, DictConfig]:
    """Build zoo model ``name`` and load ``weights`` (any checkpoint format); ``None`` keeps the random initialisation."""
    model_cfg = compose_model(name, num_classes)
    net = instantiate(model_cfg)
    if weights is None:
        source: dict[str, Any] = {"config": name, "weights": "random initialisation"}
    else:
        meta = load_weights(net, weights)
        source = {
            "config": name,
            "weights": str(Path(weights).resolve()),
            "format": meta.get("format"),
        }
        source.update({k: meta[k] for k in ("epoch", "best_acc") if k in meta})
    return Network(role, display_name(model_cfg), net.eval(), source), model_cfg


def plan_from_run(
    run: Run,
    ckpt: Path,
    *,
    out: Path | None = None,
    input_shape: tuple[int, ...] | None = None,
    with_teacher: bool = True,
) -> Plan:
    """Build the student of an opened run (:func:`kdlight.run.read.open_run`) with ``ckpt``'s weights, and its teacher.

    Only allowed networks are built from the run's config, and every checkpoint is read weights-only.
    """
    cfg = run.cfg
    shape = input_shape or data_input_shape(cfg.get("data"))
    if shape is None:
        raise ConfigError(
            f"cannot tell the input shape of data {cfg.data.get('_target_')!r}; pass --input-shape, "
            "e.g. --input-shape 3,32,32."
        )
    net = run.build("student")
    meta = load_weights(net, ckpt)
    method = build_method(cfg.get("distill"), str(run.config_path))
    net = deployed_network(method, net, ckpt)  # the student as its method predicts
    source = {"weights": str(ckpt.resolve()), "format": meta.get("format")}
    source.update({k: meta[k] for k in ("epoch", "global_step") if k in meta})
    student = Network("student", display_name(cfg.student), net.eval(), source)
    metrics = run.metrics
    plan = Plan(student, None, shape, out or run.dir / "export", run_dir=run.dir)
    best = metrics.get("best_checkpoint")
    if ckpt.name == "last.ckpt" and "test/acc_last" in metrics:
        plan.accuracy["student"] = float(metrics["test/acc_last"])
    elif best and Path(best).name == ckpt.name and "test/acc_best" in metrics:
        plan.accuracy["student"] = float(metrics["test/acc_best"])
    if with_teacher and run.is_distillation and getattr(method, "needs_teacher", True):
        plan.teacher = _run_teacher(run, plan.notes)
        if plan.teacher is not None and "teacher/test_acc" in metrics:
            plan.accuracy["teacher"] = float(metrics["teacher/test_acc"])
    return plan


def _run_teacher(run: Run, notes: list[str]) -> Network | None:
    """The run's teacher from ``teacher_ckpt`` or its recorded ``teacher/source``; None (with a note) if absent."""
    candidates = run.teacher_sources()
    for origin, path in candidates:
        if path.is_file():
            net = run.build("teacher")
            meta = load_weights(net, path)
            source = {"weights": str(path.resolve()), "format": meta.get("format"), "from": origin}
            return Network("teacher", display_name(run.cfg.teacher), net.eval(), source)
    what = (
        ", ".join(f"{o} = {p}" for o, p in candidates)
        or f"no teacher_ckpt and no teacher/source in {METRICS_FILE}"
    )
    note = f"teacher not reported: its weights were not found ({what})."
    log.warning(note)
    notes.append(note)
    return None


def plan_from_args(args: argparse.Namespace) -> Plan:
    """Turn ``kdlight-export``'s parsed arguments into a :class:`Plan`; a bad combination raises ConfigError."""
    shape = parse_input_shape(args.input_shape) if args.input_shape else None
    if args.model is None:
        if args.teacher_model or args.teacher_weights:
            raise ConfigError(
                "--teacher-model/--teacher-weights need --model; a run's teacher comes from its config."
            )
        if args.source is None:
            raise ConfigError(
                "nothing to export; name a run directory or checkpoint, or pass --model NAME --weights FILE."
            )
        run, ckpt = find_run(args.source, args.which)
        if run is None:
            raise ConfigError(
                f"{args.source} is not inside a kdlight run (no .hydra/config.yaml found next to "
                "it); pass --model NAME to say which architecture the weights are for."
            )
        out = Path(args.out) if args.out else None
        return plan_from_run(
            run, ckpt, out=out, input_shape=shape, with_teacher=not args.no_teacher
        )
    weights = args.weights or args.source
    if weights is None and not args.random_init:
        raise ConfigError(
            f"--model {args.model} needs --weights FILE (or --random-init to measure random weights)."
        )
    if weights is not None and not Path(weights).is_file():
        raise CheckpointError(f"checkpoint {weights} does not exist.")
    student, student_cfg = build_named("student", args.model, weights, args.num_classes)
    shape = shape or model_input_shape(student_cfg)
    teacher = None
    if args.teacher_model:
        tw = args.teacher_weights
        if tw is None and not args.random_init:
            raise ConfigError(
                f"--teacher-model {args.teacher_model} needs --teacher-weights FILE (or --random-init)."
            )
        teacher, _ = build_named("teacher", args.teacher_model, tw, args.num_classes)
    out = (
        Path(args.out)
        if args.out
        else (Path(weights).resolve().parent / "export" if weights else Path("export"))
    )
    notes = (
        []
        if weights
        else ["randomly initialised weights: sizes, MACs and latency only, no accuracy."]
    )
    return Plan(student, teacher, shape, out, notes=notes)
