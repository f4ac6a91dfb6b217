"""Test accuracy of a checkpoint: ``python -m kdlight.eval +experiment=NAME +weights=PATH``.

``weights`` is any file :func:`kdlight.checkpoints.load_weights` reads (kdlight, the original KD
project, bearpaw); it is loaded into the experiment's ``student`` model (``+eval_teacher=true``:
into its ``teacher`` model) and evaluated on the data module's test set (and validation split).
"""

from __future__ import annotations

import json
import logging

import hydra
import lightning as L
from hydra.utils import instantiate, to_absolute_path
from omegaconf import DictConfig

from kdlight.checkpoints import load_weights
from kdlight.errors import ConfigError, user_errors_exit
from kdlight.engine import ClassifierModule
from kdlight.train import CONFIG_DIR

log = logging.getLogger(__name__)


def evaluate(cfg: DictConfig) -> dict[str, float]:
    """Load ``cfg.weights`` into the configured network and return ``{"val/acc", "test/acc"}``."""
    if not cfg.get("weights"):
        raise ConfigError("no weights given; add +weights=PATH naming the checkpoint to evaluate.")
    datamodule = instantiate(cfg.data)
    datamodule.setup("test")
    net = instantiate(cfg.teacher if cfg.get("eval_teacher") else cfg.student)
    load_weights(net, to_absolute_path(str(cfg.weights)))
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
    print(json.dumps({"weights": str(cfg.weights), **out}))
    return out


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="train")
@user_errors_exit
def main(cfg: DictConfig) -> None:
    evaluate(cfg)


if __name__ == "__main__":
    main()
