"""Checks before any work: values that cannot train, misspelled keys, resume mistakes.

Each refuses in one sentence naming the bad value and what would be valid
(:class:`~kdlight.errors.ConfigError` / :class:`~kdlight.errors.CheckpointError`).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, ListConfig, OmegaConf
from torch import nn

from kdlight.errors import ConfigError, find_user_error, in_multirun
from kdlight.optim import fused_optimizer_setting
from kdlight.run.hparams import method_name
from kdlight.teacher.outputs import store_options


def check_config(cfg: DictConfig):
    """Fail early, before any work, on inconsistent settings; return the built method (or None).

    The method's constructor checks its own settings, so it is built here once and the run
    uses this instance.
    """
    check_keys(cfg)
    check_values(cfg)
    distill = cfg.get("distill")
    unlabeled = bool(cfg.data.get("unlabeled", False))
    method = None
    if distill is None and unlabeled:
        raise ConfigError(
            "data.unlabeled=true but no distillation is configured; cross-entropy training needs "
            "labels, so add distill=kd distill.alpha=1.0 or set data.unlabeled=false."
        )
    if distill is not None:
        method = instantiate_method(distill)
        if unlabeled and method.needs_labels:
            raise ConfigError(_unlabeled_advice(distill))
    options = store_options(cfg)
    if distill is not None and options is not None:
        from kdlight.teacher.store import check_store_options

        check_store_options(**options)
    strategy = str(cfg.trainer.get("strategy", "auto"))
    if strategy.startswith("ddp") and not any(s in strategy for s in ("spawn", "fork", "notebook")):
        # Lightning starts each extra rank by re-running sys.argv: the whole sweep
        if in_multirun():
            raise ConfigError(
                f"trainer.strategy={strategy} cannot run inside a Hydra multirun (each extra process "
                "would start the whole sweep again); use trainer.strategy=ddp_spawn for sweeps."
            )
    return method


#: Settings that make a method read labels, and the value that stops it (tried in this order;
#: only those that the method's own constructor confirms are needed are advised).
_LABEL_FREE = (("ce_weight", 0.0), ("gamma", 0.0), ("negatives", "any"), ("alpha", 1.0))


def _unlabeled_advice(distill: DictConfig) -> str:
    """The sentence for a method that needs labels on unlabeled data: the settings that would
    make it label-free, checked by building the method with them (advice that cannot loop)."""
    name = method_name(distill._target_)
    changes = {
        k: v for k, v in _LABEL_FREE if k in distill and distill[k] is not None and distill[k] != v
    }

    def label_free(settings: dict[str, Any]) -> bool:
        node = distill.copy()
        for k, v in settings.items():
            node[k] = v
        try:
            return not instantiate_method(node).needs_labels
        except Exception:  # noqa: BLE001 - a combination the method refuses is no advice
            return False

    if changes and label_free(changes):
        for k in list(changes):  # drop what is not needed
            rest = {j: v for j, v in changes.items() if j != k}
            if label_free(rest):
                changes = rest
        now = " ".join(f"distill.{k}={distill[k]}" for k in changes)
        fix = " ".join(f"distill.{k}={v}" for k, v in changes.items())
        return (
            f"data.unlabeled=true with distill={name} {now}, whose loss then needs labels; set "
            f"{fix} (or use a method that learns from the teacher alone)."
        )
    return (
        f"data.unlabeled=true with distill={name}, whose loss needs labels whatever its weights; "
        "use a method that learns from the teacher alone (e.g. distill=kd distill.alpha=1.0) or "
        "set data.unlabeled=false."
    )


def instantiate_method(node: DictConfig):
    """Build the ``distill`` node's method, whose constructor checks its own settings."""
    from kdlight.methods.base import Method

    try:
        method = instantiate(node, _convert_="all")
    except Exception as exc:  # Hydra wraps the method's own ConfigError: raise that one
        user = find_user_error(exc)
        if user is None:
            raise
        raise user from None
    if not isinstance(method, Method):
        raise ConfigError(
            f"distill._target_={node._target_} is not a kdlight method (a subclass of "
            "kdlight.methods.base.Method)."
        )
    return method


def check_outputs(net: nn.Module, example: torch.Tensor, num_classes: int, role: str) -> None:
    """Raise :class:`ConfigError` unless ``net`` takes ``example``'s shape and predicts ``num_classes``."""
    was = net.training
    net.eval()
    try:
        with torch.no_grad():
            out = net(example)
    except RuntimeError as exc:
        raise ConfigError(
            f"the {role} {type(net).__name__} cannot take this dataset's inputs of shape "
            f"{tuple(example.shape[1:])}: {str(exc).splitlines()[0]}"
        ) from None
    finally:
        net.train(was)
    if out.shape[1] != num_classes:
        raise ConfigError(
            f"the {role} {type(net).__name__} predicts {out.shape[1]} classes but the data has "
            f"{num_classes}; set {role}.num_classes={num_classes}."
        )


def _value(cfg: DictConfig, key: str) -> Any:
    return OmegaConf.select(cfg, key, default=None)


def _check_int(cfg: DictConfig, key: str, low: int, what: str, allow_none: bool = False) -> None:
    v = _value(cfg, key)
    if v is None and allow_none:
        return
    if isinstance(v, bool) or not isinstance(v, int) or v < low:
        raise ConfigError(f"{key}={v} is invalid; it must be {what}.")


def _check_lr(cfg: DictConfig, key: str) -> None:
    v = _value(cfg, key)
    if v is None:
        return
    if isinstance(v, bool) or not isinstance(v, int | float) or not 0 < v < math.inf:
        raise ConfigError(f"{key}={v} is invalid; the learning rate must be a number > 0.")


def _check_max_epochs(cfg: DictConfig, key: str) -> None:
    v = _value(cfg, key)
    if v is None:
        return
    if isinstance(v, bool) or not isinstance(v, int) or v == 0 or v < -1:
        raise ConfigError(
            f"{key}={v} is invalid; it must be an integer >= 1 (or -1: no limit), since 0 epochs "
            "would store an untrained network."
        )


def _trains_teacher(cfg: DictConfig) -> bool:
    return (
        cfg.get("distill") is not None
        and not cfg.get("teacher_ckpt")
        and cfg.get("teacher_train") is not None
    )


#: Nodes whose numbers must be finite (a temperature or loss weight of inf/nan trains nothing,
#: and the NaN guard would blame the learning rate).
_FINITE_NODES = ("distill", "module.optimizer", "module.scheduler", "teacher_train.optimizer")


def check_finite(cfg: DictConfig) -> None:
    """Refuse ``inf`` / ``nan`` anywhere under :data:`_FINITE_NODES`, naming the key."""

    def walk(node: Any, where: str) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                walk(v, f"{where}.{k}")
        elif isinstance(node, list):
            for i, v in enumerate(node):
                walk(v, f"{where}[{i}]")
        elif isinstance(node, float) and not math.isfinite(node):
            raise ConfigError(f"{where}={node} is invalid; it must be a finite number.")

    for path in _FINITE_NODES:
        node = _value(cfg, path)
        if isinstance(node, DictConfig):
            walk(OmegaConf.to_container(node, resolve=False), path)


def check_teacher_ckpt(cfg: DictConfig) -> None:
    """``teacher_ckpt`` is null, a path, or a non-empty list of paths."""
    ckpt = cfg.get("teacher_ckpt")
    if not isinstance(ckpt, ListConfig):
        return
    if len(ckpt) == 0:
        raise ConfigError(
            "teacher_ckpt=[] names no checkpoint; give a file, a list of files "
            "(teacher_ckpt=[a.pt,b.pt]), or null to train the teacher."
        )
    for i, item in enumerate(ckpt):
        if not isinstance(item, str) or not item:
            raise ConfigError(
                f"teacher_ckpt[{i}]={item!r} is invalid; each entry must be a checkpoint file's path."
            )


def check_values(cfg: DictConfig) -> None:
    """Refuse values that cannot train (wrong types too), in one sentence, before any work."""
    check_finite(cfg)
    check_teacher_ckpt(cfg)
    _check_int(cfg, "seed", 0, "an integer >= 0 (or null)", allow_none=True)
    _check_int(cfg, "data.batch_size", 1, "a positive integer")
    _check_int(cfg, "data.eval_batch_size", 1, "a positive integer", allow_none=True)
    _check_int(cfg, "data.val_size", 0, "an integer >= 0", allow_none=True)
    _check_int(cfg, "data.views", 1, "null (a fresh view per epoch) or an integer K >= 1", True)
    fraction = _value(cfg, "data.labeled_fraction")
    if fraction is not None and (
        isinstance(fraction, bool) or not isinstance(fraction, int | float)
    ):
        raise ConfigError(
            f"data.labeled_fraction={fraction} is invalid; it must be in (0, 1] (e.g. 0.05 for 5%)."
        )
    _check_lr(cfg, "module.optimizer.lr")
    fused_optimizer_setting(_value(cfg, "module.fused_optimizer"))
    _check_max_epochs(cfg, "trainer.max_epochs")
    if _trains_teacher(cfg):
        _check_max_epochs(cfg, "teacher_train.max_epochs")
        _check_lr(cfg, "teacher_train.optimizer.lr")
        _check_int(cfg, "teacher_train.seed", 0, "an integer >= 0")
        fused_optimizer_setting(_value(cfg, "teacher_train.fused_optimizer"))
        check_teacher_trainer(cfg)
    store_dir = _value(cfg, "paths.store_dir")
    if cfg.get("distill") is not None and store_dir:
        from hydra.utils import to_absolute_path

        folder = Path(to_absolute_path(str(store_dir)))
        blocker = next((p for p in (folder, *folder.parents) if p.exists()), None)
        if blocker is not None and not blocker.is_dir():
            raise ConfigError(
                f"paths.store_dir={store_dir} cannot hold the teacher store: {blocker} is a file, "
                "not a folder; set paths.store_dir (or KDLIGHT_STORE) to a folder."
            )
    if _value(cfg, "data.val_size") == 0:
        monitor = _value(cfg, "callbacks.model_checkpoint.monitor")
        if monitor and str(monitor).startswith("val/"):
            raise ConfigError(
                f"data.val_size=0 leaves no validation split, but the best checkpoint is chosen on "
                f"{monitor}; set data.val_size > 0 or callbacks.model_checkpoint.monitor=null."
            )
        if _trains_teacher(cfg):
            raise ConfigError(
                "data.val_size=0 leaves no validation split to choose the teacher's best epoch on; "
                "set data.val_size > 0 or give a trained teacher with teacher_ckpt."
            )


#: Nodes whose keys are the arguments of their ``_target_`` (misspellings are caught here).
_TARGET_NODES = (
    "data",
    "student",
    "teacher",
    "distill",
    "module.optimizer",
    "module.scheduler",
    "teacher_train.optimizer",
    "teacher_train.scheduler",
    "trainer",
)


def check_keys(cfg: DictConfig) -> None:
    """Refuse a key its node's ``_target_`` does not take (e.g. ``+data.bach_size=64``), naming the nearest valid one."""
    import difflib

    from hydra.utils import get_object

    for path in _TARGET_NODES:
        node = _value(cfg, path)
        if not isinstance(node, DictConfig) or not isinstance(node.get("_target_"), str):
            continue
        try:
            params = _accepted_arguments(get_object(node._target_))
        except Exception:  # noqa: BLE001 - an unknown target is reported where it is built
            continue
        if params is None:  # takes any **kwargs: nothing to check against
            continue
        valid = [n for n in params if n not in ("self", "args", "kwargs")]
        for key in node:
            if str(key).startswith("_") or key in params:
                continue
            near = difflib.get_close_matches(str(key), valid, n=1)
            hint = f"did you mean {path}.{near[0]}" if near else f"valid keys: {', '.join(valid)}"
            raise ConfigError(
                f"{path}.{key} is not a setting of {node._target_.rsplit('.', 1)[-1]} ({hint}?); "
                "remove it or fix its spelling."
            )


def _accepted_arguments(target) -> dict[str, Any] | None:
    """The keyword arguments ``target`` takes, following ``**kwargs`` up a class's bases; None
    when it takes any."""
    import inspect

    if not inspect.isclass(target):
        params = inspect.signature(target).parameters
        kinds = {p.kind for p in params.values()}
        return None if inspect.Parameter.VAR_KEYWORD in kinds else dict(params)
    found: dict[str, Any] = {}
    for cls in target.__mro__:
        init = cls.__dict__.get("__init__")
        if init is None:
            continue
        if cls is object:
            return None
        params = inspect.signature(init).parameters
        found.update({k: v for k, v in params.items() if v.kind is not v.VAR_KEYWORD})
        if not any(p.kind is p.VAR_KEYWORD for p in params.values()):
            return found
    return None


#: Trainer settings of the teacher's own training that kdlight sets itself: it trains in one
#: process (under the store's lock), for ``teacher_train.max_epochs``, with its own checkpoint.
TEACHER_TRAINER_RESERVED = (
    "max_epochs",
    "callbacks",
    "logger",
    "strategy",
    "devices",
    "num_nodes",
    "enable_checkpointing",
    "default_root_dir",
)


def check_teacher_trainer(cfg: DictConfig) -> None:
    """``teacher_train.trainer`` holds only ``lightning.Trainer`` settings that kdlight leaves to it."""
    import difflib
    import inspect

    node = _value(cfg, "teacher_train.trainer")
    if node is None:
        return
    if not isinstance(node, DictConfig):
        raise ConfigError(
            f"teacher_train.trainer={node} is invalid; it must be a mapping of Trainer settings "
            "(e.g. teacher_train.trainer.limit_train_batches=10)."
        )
    valid = [n for n in inspect.signature(L.Trainer.__init__).parameters if n != "self"]
    for key in node:
        if key == "max_epochs":
            raise ConfigError(
                "teacher_train.trainer.max_epochs is not used; set teacher_train.max_epochs."
            )
        if key in TEACHER_TRAINER_RESERVED:
            raise ConfigError(
                f"teacher_train.trainer.{key} is set by kdlight (the teacher trains in one process "
                "into the store); remove it."
            )
        if key not in valid:
            near = difflib.get_close_matches(str(key), valid, n=1)
            hint = (
                f"did you mean teacher_train.trainer.{near[0]}?"
                if near
                else "see lightning.Trainer"
            )
            raise ConfigError(
                f"teacher_train.trainer.{key} is not a Trainer setting ({hint}); remove it or "
                "fix its spelling."
            )
