"""The data module of data-free KD: training batches from a reconstructed transfer set.

Validation and test come from the real data module; the statistics and the transfer set are
kept in the store (see :mod:`kdlight.methods.data_free`).
"""

from __future__ import annotations

import functools
import logging
from dataclasses import asdict
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra.utils import to_absolute_path
from torch import nn
from torch.utils.data import DataLoader

from kdlight.data.modules.array import _Indices
from kdlight.io import cached, key_hash
from kdlight.methods.data_free.reconstruction import (
    STATS_VERSION,
    Reconstruction,
    reconstruct,
    record_statistics,
    resolve_layers,
)

log = logging.getLogger(__name__)


class TransferSetDataModule(L.LightningDataModule):
    """Training batches from a reconstructed transfer set; validation and test from ``real``.

    At ``setup("fit")`` it loads (or records) the teacher's activation statistics on
    ``real``'s training split and loads (or reconstructs) the transfer set, on the Trainer's
    device. Training batches are ``{"idx", "x", "teacher_logits", "split": "transfer"}``: no
    real image and no label ever reaches them; ``real.train_dataloader`` is never called.
    Under ``fast_dev_run`` only one student batch is reconstructed, with at most 2 steps, and
    it is not stored. ``settings``: how the set is reconstructed (:class:`Reconstruction`).
    """

    def __init__(
        self,
        real: L.LightningDataModule,
        teacher: nn.Module,
        store_dir: str | Path,
        layers: list[str] | None = None,
        settings: Reconstruction | None = None,
    ) -> None:
        super().__init__()
        self.real = real
        self.teacher = teacher
        self.store_dir = Path(to_absolute_path(str(store_dir)))  # as the teacher store does
        self.layers = resolve_layers(teacher, None if layers is None else list(layers))
        self.recon = asdict(settings if settings is not None else Reconstruction())
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
        bs = real.eval_batch_size
        idx = real.train_idx

        def record(entry: Path) -> dict:
            chunks = (
                real.view_batch(idx[i : i + bs], None, device=device)
                for i in range(0, idx.numel(), bs)
            )
            log.info("data-free: recording activation statistics of %s into %s", self.layers, entry)
            return record_statistics(self.teacher, chunks, real.num_classes, self.layers)

        self.stats_path, self.stats, recorded = cached(
            self.store_dir / "datafree", key, record, name="stats.pt", what="data-free statistics"
        )
        if not recorded:
            log.info("data-free: reusing activation statistics %s", self.stats_path)
        folder = self.stats_path.parent
        recon = dict(self.recon)
        cache = not self._fast_dev_run()
        if not cache:
            recon["num_samples"] = min(recon["num_samples"], int(real.batch_size))
            recon["steps"] = min(recon["steps"], 2)
        input_shape = tuple(real.input_shape)
        tkey = {"stats": key_hash(key), "input_shape": list(input_shape), **recon}

        def reconstruct_set(entry: Path | None = None) -> dict:
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

            return reconstruct(
                self.teacher, self.stats, input_shape, recon["num_samples"], recon["batch_size"],
                recon["steps"], recon["lr"], recon["class_balanced"], recon["init_std"], bounds,
                recon["seed"], device, progress,
            )  # fmt: skip

        if not cache:  # a fast_dev_run's tiny set is never stored
            self.transfer_path, self.transfer = None, reconstruct_set()
        else:
            self.transfer_path, self.transfer, made = cached(
                folder, tkey, reconstruct_set, name="transfer.pt", what="data-free transfer set"
            )
            if not made:
                log.info("data-free: reusing transfer set %s", self.transfer_path)
        log.info("data-free: %s", self.summary())

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
