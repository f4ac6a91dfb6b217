"""The hyper-parameters that tell runs apart, flat: for the run record, reports and TensorBoard."""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig


def hparams_of(cfg: DictConfig) -> dict[str, Any]:
    """The hyper-parameters that tell runs apart, flat (for the run record, reports, TensorBoard).

    Every scalar of the ``distill`` node is one (``alpha``, ``beta``, ``temperature``, ...),
    under its own name unless a general key already has it (``distill.lr``, ``distill.seed``).
    """
    distill = cfg.get("distill")
    opt = cfg.module.optimizer
    hp: dict[str, Any] = {
        "experiment": cfg.get("name"),
        "seed": cfg.get("seed"),
        "data": cfg.data.get("name", cfg.data._target_.rsplit(".", 1)[-1]),
        "labeled_fraction": cfg.data.get("labeled_fraction", 1.0),
        "unlabeled": cfg.data.get("unlabeled", False),
        "augment": cfg.data.get("augment", False),
        "batch_size": cfg.data.get("batch_size"),
        "student": model_name(cfg.student),
        "optimizer": opt._target_.rsplit(".", 1)[-1],
        "lr": opt.get("lr"),
        "max_epochs": cfg.trainer.get("max_epochs"),
        "method": "none" if distill is None else method_name(distill._target_),
    }
    if distill is not None:
        from kdlight.teacher.ensemble import ensemble_name

        hp["teacher"] = (
            "none"
            if teacher_free(distill)
            else ensemble_name(cfg, model_name) or model_name(cfg.teacher)
        )
        store = cfg.get("teacher_store")
        # served from the store or run online: same results, different wall time
        hp["teacher_store"] = bool(store is not None and store.get("enabled", True))
        general = set(hp)
        for k, v in distill.items():
            if not k.startswith("_") and isinstance(v, int | float | str | bool):
                hp[f"distill.{k}" if k in general else k] = v
    return hp


def teacher_free(distill: DictConfig) -> bool:
    """Whether the ``distill`` node's method learns without a teacher (``needs_teacher`` False)."""
    from kdlight.run.checks import instantiate_method

    try:
        return not instantiate_method(distill).needs_teacher
    except Exception:  # noqa: BLE001 - a method that cannot be built is reported elsewhere
        return False


def method_name(target: str) -> str:
    """``kdlight.methods.dkd.DKD`` -> ``dkd`` (the file, as users type it); else the class name."""
    parts = target.split(".")
    if len(parts) == 4 and parts[:2] == ["kdlight", "methods"]:
        return parts[2]
    return parts[-1]


def model_name(node: DictConfig) -> str:
    """A network config's readable name: ``MLP-1200-1200``, ``resnet-20``, ``torchvision:resnet34``."""
    if "name" in node:  # a library network (kdlight.models.external): torchvision:resnet34
        return f"{node._target_.rsplit('.', 1)[-1].removesuffix('_model')}:{node.name}"
    name = node._target_.rsplit(".", 1)[-1]
    if "depth" in node:
        name += f"-{node.depth}"
    if "hidden" in node:
        name += "-" + "-".join(str(h) for h in node.hidden)
    return name


__all__ = ["hparams_of", "method_name", "model_name"]
