"""Data-free KD (Lopes, Fenu & Starner, 2017, "Data-Free Knowledge Distillation for Deep Neural Networks").

    L = T^2 * KL(q_teacher^T(x) || q_student^T(x)),   x from a reconstructed transfer set

The teacher's activation statistics ("all layers": per-unit mean/std, overall and per
predicted class, of every hidden Linear and the logits) are recorded once on the training set;
a class-balanced transfer set is reconstructed from Gaussian noise by matching targets sampled
from them (:mod:`.reconstruction`); the student learns on it with the KD term alone
(alpha must be 1: the set has no labels) and never sees a real training image or label.
Validation and test use the real splits. The teacher's logits for each transfer sample are
computed once with the set, so the logit store is not used. Both files are kept in the store,
keyed like the teacher::

    <store_dir>/datafree/<stats key hash>/{key.json, stats.pt, <transfer key hash>/{key.json, transfer.pt}}

The package: this file (the method), :mod:`.transfer` (the data module that serves the
transfer set), :mod:`.reconstruction` (statistics and reconstruction, pure functions).
"""

from __future__ import annotations

from typing import Any

from torch import nn

from kdlight.errors import ConfigError
from kdlight.methods.data_free.reconstruction import Reconstruction
from kdlight.methods.data_free.transfer import TransferSetDataModule
from kdlight.methods.kd import DEFAULT_TEMPERATURE, KD

__all__ = ["DataFree", "Reconstruction", "TransferSetDataModule"]


class DataFree(KD):
    """Data-free KD; see the module docstring. ``temperature``/``reduction`` are the KD term's.

    ``layers``: the teacher layers whose statistics are recorded (``named_modules()`` names;
    None: every Linear but the last); the remaining arguments are the transfer set's
    :class:`~kdlight.methods.data_free.reconstruction.Reconstruction` settings.
    """

    uses_store = False

    def __init__(
        self,
        alpha: float | None = 1.0,
        temperature: float = DEFAULT_TEMPERATURE,
        reduction: str = "batchmean",
        store_dir: str = "store",
        layers: list[str] | None = None,
        class_balanced: bool = True,
        num_samples: int = 20000,
        batch_size: int = 1000,
        steps: int = 50,
        lr: float = 0.1,
        init_std: float = 1.0,
        clamp: bool = True,
        seed: int = 0,
        logit_standardization: bool = False,
        ce_weight: float | None = None,
        kd_weight: float | None = None,
    ) -> None:
        if alpha is not None and float(alpha) != 1.0:
            raise ConfigError(
                f"distill=data_free with distill.alpha={alpha}: the reconstructed transfer set has "
                "no labels, so the loss is the KD term alone; set distill.alpha=1.0."
            )
        super().__init__(alpha, temperature, reduction, logit_standardization, ce_weight, kd_weight)
        if self.ce_weight != 0.0:
            raise ConfigError(
                f"distill=data_free with distill.ce_weight={ce_weight}: the reconstructed transfer "
                "set has no labels; set distill.ce_weight=0 (or distill.alpha=1.0)."
            )
        self.transfer_args = {
            "store_dir": store_dir,
            "layers": None if layers is None else [str(n) for n in layers],
            "settings": Reconstruction(
                num_samples, batch_size, steps, lr, class_balanced, init_std, clamp, seed
            ),
        }

    def fit_datamodule(self, datamodule, teacher: nn.Module) -> TransferSetDataModule:
        """The transfer set for training, ``datamodule`` for validation and test."""
        return TransferSetDataModule(datamodule, teacher, **self.transfer_args)

    def check_batch(self, batch: dict[str, Any]) -> None:
        if batch.get("split") != "transfer" or "y" in batch:
            raise RuntimeError(
                "data-free distillation received a real training batch; fit on the engine's "
                "fit_datamodule(datamodule), whose training data is the transfer set."
            )
