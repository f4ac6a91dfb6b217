"""Data-free KD (Lopes, Fenu & Starner, 2017, "Data-Free Knowledge Distillation for Deep Neural Networks").

    L = T^2 * KL(q_teacher^T(x) || q_student^T(x)),   x from a reconstructed transfer set

The teacher's activation statistics ("all layers": per-unit mean/std, overall and per
predicted class, of every hidden Linear and the logits) are recorded once on the training set;
a class-balanced transfer set is reconstructed from Gaussian noise by matching targets sampled
from them (:mod:`kdlight.reconstruction`); the student learns on it with the KD term alone
(alpha must be 1: the set has no labels) and never sees a real training image or label.
Validation and test use the real splits. The teacher's logits for each transfer sample are
computed once with the set, so the logit store is not used. Both files are kept in the store,
keyed like the teacher::

    <store_dir>/datafree/<stats key hash>/{key.json, stats.pt, transfer-<hash>.pt, transfer-<hash>.json}
"""

from __future__ import annotations

import functools
import json
import logging
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra.utils import to_absolute_path
from torch import nn
from torch.utils.data import DataLoader

from kdlight.data.base import _Indices
from kdlight.errors import ConfigError
from kdlight.io import atomic_torch_save, atomic_write_text, file_lock, key_hash
from kdlight.methods.kd import KD
from kdlight.reconstruction import STATS_VERSION, reconstruct, record_statistics, resolve_layers

log = logging.getLogger(__name__)


class DataFree(KD):
    """Data-free KD; see the module docstring. ``temperature``/``reduction`` are the KD term's.

    The remaining arguments configure the transfer set (see
    :func:`kdlight.reconstruction.reconstruct`): ``layers`` to record (``named_modules()``
    names; None: every Linear but the last), ``class_balanced``, ``num_samples``,
    ``batch_size`` (samples reconstructed at once), Adam ``steps`` and ``lr`` on the inputs,
    ``init_std`` of the initial noise, ``clamp`` to the image of pixel values [0, 1], ``seed``.
    """

    uses_store = False

    def __init__(
        self,
        alpha: float = 1.0,
        temperature: float = 20.0,
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
    ) -> None:
        if float(alpha) != 1.0:
            raise ConfigError(
                f"distill=data_free with distill.alpha={alpha}: the reconstructed transfer set has "
                "no labels, so the loss is the KD term alone; set distill.alpha=1.0."
            )
        super().__init__(1.0, temperature, reduction, logit_standardization)
        self.transfer_args = {
            "store_dir": store_dir,
            "layers": None if layers is None else [str(n) for n in layers],
            "class_balanced": class_balanced,
            "num_samples": num_samples,
            "batch_size": batch_size,
            "steps": steps,
            "lr": lr,
            "init_std": init_std,
            "clamp": clamp,
            "seed": seed,
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


class TransferSetDataModule(L.LightningDataModule):
    """Training batches from a reconstructed transfer set; validation and test from ``real``.

    At ``setup("fit")`` it loads (or records) the teacher's activation statistics on
    ``real``'s training split and loads (or reconstructs) the transfer set, on the Trainer's
    device. Training batches are ``{"idx", "x", "teacher_logits", "split": "transfer"}``: no
    real image and no label ever reaches them; ``real.train_dataloader`` is never called.
    Under ``fast_dev_run`` only one student batch is reconstructed, with at most 2 steps, and
    it is not stored.
    """

    def __init__(
        self,
        real: L.LightningDataModule,
        teacher: nn.Module,
        store_dir: str | Path,
        layers: list[str] | None = None,
        class_balanced: bool = True,
        num_samples: int = 20000,
        batch_size: int = 1000,
        steps: int = 50,
        lr: float = 0.1,
        init_std: float = 1.0,
        clamp: bool = True,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.real = real
        self.teacher = teacher
        self.store_dir = Path(to_absolute_path(str(store_dir)))  # as the teacher store does
        self.layers = resolve_layers(teacher, None if layers is None else list(layers))
        self.recon = {
            "num_samples": int(num_samples),
            "batch_size": int(batch_size),
            "steps": int(steps),
            "lr": float(lr),
            "class_balanced": bool(class_balanced),
            "init_std": float(init_std),
            "clamp": bool(clamp),
            "seed": int(seed),
        }
        if (
            self.recon["num_samples"] <= 0
            or self.recon["batch_size"] <= 0
            or self.recon["steps"] < 0
        ):
            raise ConfigError(
                f"distill: num_samples={num_samples}, batch_size={batch_size}, steps={steps} "
                "are invalid; num_samples and batch_size must be > 0 and steps >= 0."
            )
        self.stats: dict[str, Any] | None = None
        self.transfer: dict[str, torch.Tensor] | None = None
        self.stats_path: Path | None = None
        self.transfer_path: Path | None = None

    # ---- delegated identity ---------------------------------------------------------------
    @property
    def num_classes(self) -> int:
        return self.real.num_classes

    @property
    def name(self) -> str:
        return f"{self.real.name}-transfer"

    # ---- building -----------------------------------------------------------------------
    def _device(self) -> torch.device:
        trainer = self.trainer
        return trainer.strategy.root_device if trainer is not None else torch.device("cpu")

    def _fast_dev_run(self) -> bool:
        return bool(self.trainer is not None and self.trainer.fast_dev_run)

    def stats_key(self) -> dict[str, Any]:
        """Everything that decides the recorded statistics."""
        from kdlight.checkpoints import weights_hash

        real = self.real
        return {
            "version": STATS_VERSION,
            "teacher": weights_hash(self.teacher),
            "data": real.name,
            "fingerprint": real.fingerprint(),
            "indices": key_hash({"idx": real.train_idx.tolist()}),
            "normalisation": {
                k: v for k, v in real.transform_key().items() if k in ("mean", "std")
            },
            "layers": self.layers,
        }

    def build(self, device: torch.device | str | None = None) -> None:
        """Load or compute the statistics and the transfer set (idempotent)."""

        if self.transfer is not None:
            return
        device = torch.device(device) if device is not None else self._device()
        real = self.real
        real.setup("fit")
        self.teacher.to(device)
        key = self.stats_key()
        folder = self.store_dir / "datafree" / key_hash(key)
        self.stats_path = folder / "stats.pt"
        with file_lock(folder / "stats.lock"):
            if self.stats_path.is_file():
                self.stats = torch.load(self.stats_path, map_location="cpu", weights_only=True)
                log.info("data-free: reusing activation statistics %s", self.stats_path)
            else:
                bs = real.eval_batch_size
                idx = real.train_idx
                chunks = (
                    real.view_batch(idx[i : i + bs], None, device=device)
                    for i in range(0, idx.numel(), bs)
                )
                self.stats = record_statistics(self.teacher, chunks, real.num_classes, self.layers)
                atomic_torch_save(self.stats, self.stats_path)
                atomic_write_text(
                    folder / "key.json", json.dumps(key, indent=2, sort_keys=True) + "\n"
                )
                log.info(
                    "data-free: recorded activation statistics of %s into %s",
                    self.layers,
                    self.stats_path,
                )
        recon = dict(self.recon)
        cache = not self._fast_dev_run()
        if not cache:
            recon["num_samples"] = min(recon["num_samples"], int(real.batch_size))
            recon["steps"] = min(recon["steps"], 2)
        input_shape = tuple(real.input_shape)
        tkey = {"stats": key_hash(key), "input_shape": list(input_shape), **recon}
        self.transfer_path = folder / f"transfer-{key_hash(tkey)}.pt"
        with file_lock(folder / "transfer.lock"):
            if cache and self.transfer_path.is_file():
                self.transfer = torch.load(
                    self.transfer_path, map_location="cpu", weights_only=True
                )
                log.info("data-free: reusing transfer set %s", self.transfer_path)
                log.info("data-free: %s", self.summary())
                return
            bounds = None
            if recon["clamp"]:
                mean, std = real.mean.view(1, -1, 1, 1), real.std.view(1, -1, 1, 1)
                bounds = ((0.0 - mean) / std, (1.0 - mean) / std)

            def progress(b: int, total: int, first: float, last: float) -> None:
                if b == total or b % 5 == 0:
                    log.info(
                        "data-free: reconstructed batch %d/%d (matching loss %.4g -> %.4g)",
                        b,
                        total,
                        first,
                        last,
                    )

            self.transfer = reconstruct(
                self.teacher, self.stats, input_shape, recon["num_samples"], recon["batch_size"],
                recon["steps"], recon["lr"], recon["class_balanced"], recon["init_std"], bounds,
                recon["seed"], device, progress,
            )  # fmt: skip
            log.info("data-free: %s", self.summary())
            if cache:
                atomic_torch_save(self.transfer, self.transfer_path)
                atomic_write_text(
                    self.transfer_path.with_suffix(".json"),
                    json.dumps(tkey, indent=2, sort_keys=True) + "\n",
                )

    def summary(self) -> dict[str, float]:
        """Size, mean matching loss before/after, and how often the teacher predicts the sampled class."""
        t = self.transfer
        out = {
            "samples": int(t["x"].shape[0]),
            "loss_start": float(t["loss_start"].mean()),
            "loss_end": float(t["loss_end"].mean()),
        }
        if bool((t["classes"] >= 0).all()):
            hit = t["teacher_logits"].argmax(1) == t["classes"]
            out["teacher_agrees_with_class"] = float(hit.float().mean())
        return out

    # ---- Lightning hooks ----------------------------------------------------------------
    def prepare_data(self) -> None:
        self.real.prepare_data()

    def setup(self, stage: str | None = None) -> None:
        self.real.setup(stage)
        if stage in ("fit", None):
            self.build()

    def train_dataloader(self) -> DataLoader:
        if self.transfer is None:
            raise RuntimeError("the transfer set is not built; call setup('fit') first.")
        return DataLoader(
            _Indices(torch.arange(self.transfer["x"].shape[0])),
            batch_size=int(self.real.batch_size),
            shuffle=True,
            num_workers=0,
            collate_fn=functools.partial(_collate, self.transfer),
        )

    def val_dataloader(self) -> DataLoader:
        return self.real.val_dataloader()

    def test_dataloader(self) -> DataLoader:
        return self.real.test_dataloader()

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        if isinstance(batch, dict) and batch.get("split") in ("val", "test"):
            return self.real.on_after_batch_transfer(batch, dataloader_idx)
        return batch


def _collate(transfer: dict[str, torch.Tensor], indices: list[int]) -> dict[str, Any]:
    idx = torch.as_tensor(indices, dtype=torch.long)
    return {
        "idx": idx,
        "x": transfer["x"].index_select(0, idx),
        "teacher_logits": transfer["teacher_logits"].index_select(0, idx),
        "split": "transfer",
    }
