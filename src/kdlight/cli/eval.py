"""``kdlight-eval`` / ``python -m kdlight.eval``: test accuracy of a checkpoint or a finished run.

``python -m kdlight.eval +experiment=NAME +weights=PATH [+eval_teacher=true]`` or
``python -m kdlight.eval +run=<run dir> [+which=last]``; see :mod:`kdlight.run.evaluate`.
A user error is ``error: <sentence>`` and exit 2.
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from kdlight.config import CONFIG_DIR
from kdlight.errors import user_errors_exit


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="train")
@user_errors_exit
def main(cfg: DictConfig) -> None:
    """Hydra entry point: print and return the checkpoint's validation and test accuracy."""
    from kdlight.run.evaluate import evaluate

    evaluate(cfg)


__all__ = ["main"]
