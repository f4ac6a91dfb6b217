"""Test accuracy of a checkpoint (into the experiment's network), or of a finished run.

``weights`` is any file :func:`kdlight.checkpoints.load_weights` reads (kdlight, the original KD
project, bearpaw); it is loaded into the experiment's ``student`` model (``eval_teacher``: into
its ``teacher`` model) and evaluated on the data module's test set (and validation split).
With ``run``, the network and the data come from the run's saved config, opened by
:mod:`kdlight.run.read` (only allowed networks are built; checkpoints are read weights-only
from inside the run folder), and the weights default to its validation-best checkpoint.
"""

from __future__ import annotations

import json

import lightning as L
from hydra.utils import to_absolute_path
from omegaconf import DictConfig

from kdlight.checkpoints import load_weights
from kdlight.errors import ConfigError
from kdlight.run.read import (
    DATA_TARGETS,
    NETWORK_TARGETS,
    build_method,
    deployed_network,
    open_run,
    safe_instantiate,
)


def evaluate(cfg: DictConfig) -> dict[str, float]:
    """Load ``cfg.weights`` into the configured network and return ``{"val/acc", "test/acc"}``."""
    from kdlight.engine import ClassifierModule

    role = "teacher" if cfg.get("eval_teacher") else "student"
    if cfg.get("run"):
        run, ckpt = open_run(to_absolute_path(str(cfg.run)), str(cfg.get("which", "best")))
        weights = to_absolute_path(str(cfg.weights)) if cfg.get("weights") else ckpt
        net = run.build(role)
        datamodule = run.build_data()
    else:
        if not cfg.get("weights"):
            raise ConfigError(
                "no weights given; add +weights=PATH naming the checkpoint to evaluate, or +run=DIR."
            )
        weights = to_absolute_path(str(cfg.weights))
        net = safe_instantiate(cfg[role], NETWORK_TARGETS, where=role)
        datamodule = safe_instantiate(cfg.data, DATA_TARGETS, where="data")
    datamodule.setup("test")
    load_weights(net, weights)
    if role == "student":  # a method may predict through more than the student (SimKD)
        source = str(run.config_path) if cfg.get("run") else "the config"
        method = build_method((run.cfg if cfg.get("run") else cfg).get("distill"), source)
        net = deployed_network(method, net, weights)
    module = ClassifierModule(net, datamodule.num_classes, optimizer=lambda params: None)
    trainer = L.Trainer(
        accelerator=cfg.trainer.get("accelerator", "auto"),
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
    )
    out = {
        "val/acc": float(
            trainer.validate(module, datamodule=datamodule, verbose=False)[0]["val/acc"]
        ),
        "test/acc": float(
            trainer.test(module, datamodule=datamodule, verbose=False)[0]["test/acc"]
        ),
    }
    print(json.dumps({"weights": str(weights), **out}))
    return out


__all__ = ["evaluate"]
