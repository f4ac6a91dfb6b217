"""last.ckpt is written after every epoch, also when the validation-best does not change."""

from pathlib import Path

import lightning as L
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from torch.utils.data import DataLoader, TensorDataset

CONF = (
    Path(__file__).resolve().parents[2] / "src" / "kdlight" / "conf" / "callbacks" / "default.yaml"
)


class _Worsening(L.LightningModule):
    """val/acc falls every epoch: only epoch 0 is ever the best."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = torch.nn.Linear(2, 1)

    def training_step(self, batch, batch_idx):
        return self.lin(batch[0]).pow(2).mean()

    def validation_step(self, batch, batch_idx):
        self.log("val/acc", 1.0 - 0.1 * self.current_epoch)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_last_checkpoint_follows_every_epoch_and_best_stays(tmp_path):
    cfg = OmegaConf.load(CONF)
    cfg = OmegaConf.merge({"paths": {"output_dir": str(tmp_path)}}, {"cb": cfg})
    callbacks = [instantiate(cfg.cb[name]) for name in ("model_checkpoint", "last_checkpoint")]
    data = DataLoader(TensorDataset(torch.randn(8, 2)), batch_size=4)
    trainer = L.Trainer(
        max_epochs=3,
        callbacks=callbacks,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(_Worsening(), train_dataloaders=data, val_dataloaders=data)
    folder = tmp_path / "checkpoints"
    assert sorted(p.name for p in folder.iterdir()) == ["best-epoch000.ckpt", "last.ckpt"]
    last = torch.load(folder / "last.ckpt", map_location="cpu", weights_only=True)
    assert last["epoch"] == 2 and last["global_step"] == 6  # the end of training, not the best
    best = torch.load(folder / "best-epoch000.ckpt", map_location="cpu", weights_only=True)
    assert best["epoch"] == 0


def test_resume_looks_for_last_ckpt_where_last_checkpoint_writes_it(tmp_path):
    import pytest

    from kdlight.errors import CheckpointError
    from kdlight.run.resume import check_resume

    cfg = OmegaConf.create(
        {
            "ckpt_path": "last",
            "callbacks": {
                "model_checkpoint": {"dirpath": str(tmp_path / "best")},
                "last_checkpoint": {"dirpath": str(tmp_path / "last")},
            },
        }
    )
    with pytest.raises(CheckpointError, match=str(tmp_path / "last" / "last.ckpt")):
        check_resume(cfg, tmp_path)
