"""The Lightning systems: one engine runs every distillation method; a classifier trains alone.

- :class:`~kdlight.engine.base.EvalModule`: validation/test loops, the NaN guard and the
  optimizer wiring (:mod:`kdlight.engine.base`).
- :class:`ClassifierModule`: cross-entropy training of one network (teachers, baselines).
- :class:`DistillationModule`: a student learning from a frozen teacher through any
  :class:`kdlight.methods.base.Method`.
"""

from kdlight.engine.base import DEFAULT_OPTIMIZER, STEP_ATTRIBUTES, EvalModule
from kdlight.engine.classifier import ClassifierModule
from kdlight.engine.distill import DistillationModule

__all__ = [
    "DEFAULT_OPTIMIZER",
    "STEP_ATTRIBUTES",
    "ClassifierModule",
    "DistillationModule",
    "EvalModule",
]
