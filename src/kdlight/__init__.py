"""kdlight: knowledge distillation on Lightning + Hydra.

The public API, imported on first use (``import kdlight`` stays cheap for Hydra's callbacks):

- :class:`DistillationModule` / :class:`ClassifierModule`: the Lightning systems
  (:mod:`kdlight.engine`);
- :func:`compose` / ``CONFIG_DIR``: the shipped configs (:mod:`kdlight.config`);
- :func:`read_record` / :class:`RunRecord`: a run folder's record
  (:mod:`kdlight.run.record`); one experiment from a composed config runs with
  :func:`kdlight.run.train.run`, as ``python -m kdlight.train`` runs it.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "DistillationModule": "kdlight.engine",
    "ClassifierModule": "kdlight.engine",
    "CONFIG_DIR": "kdlight.config",
    "compose": "kdlight.config",
    "RunRecord": "kdlight.run.record",
    "read_record": "kdlight.run.record",
}


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'kdlight' has no attribute {name!r}")


__all__ = ["__version__", *_EXPORTS]
