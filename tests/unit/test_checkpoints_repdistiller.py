"""RepDistiller / mdistiller teacher checkpoints (``{'epoch', 'model', 'accuracy', 'optimizer'}``)."""

from __future__ import annotations

import pytest
import torch

from kdlight import models
from kdlight.checkpoints import load_weights, read_checkpoint
from kdlight.errors import CheckpointError


def _trained_looking(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Random weights and BN statistics, so eval-mode logits depend on every tensor."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for key, t in model.state_dict().items():
            if not t.dtype.is_floating_point:
                continue
            if key.endswith("running_var"):
                t.copy_(torch.rand(t.shape, generator=g) + 0.5)
            else:
                t.copy_(torch.randn(t.shape, generator=g) * (0.1 if t.dim() > 1 else 0.5))
    return model.eval()


def _write_repdistiller(path, model, legacy: bool = False, drop_counters: bool = False):
    """What RepDistiller's train_teacher.py saves as save/models/<name>_vanilla/ckpt_epoch_240.pth."""
    state = model.state_dict()
    if drop_counters:  # files written by PyTorch < 0.4.1 have no num_batches_tracked
        state = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    ckpt = {"epoch": 240, "model": state, "accuracy": 79.42, "optimizer": opt.state_dict()}
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(ckpt, path, _use_new_zipfile_serialization=not legacy)
    return path


@pytest.mark.parametrize(
    ("factory", "legacy"),
    [
        (models.resnet8x4, False),
        (models.vgg8, True),
        (models.mobile_half, False),
        (models.shufflev2, False),
        (models.wrn_16_2, True),
    ],
)
def test_a_repdistiller_checkpoint_loads_and_gives_the_same_logits(tmp_path, factory, legacy):
    torch.manual_seed(0)
    source = _trained_looking(factory(num_classes=100), seed=1)
    path = _write_repdistiller(
        tmp_path / "save/models/x_vanilla/ckpt_epoch_240.pth", source, legacy, drop_counters=legacy
    )
    fresh = factory(num_classes=100).eval()
    meta = load_weights(fresh, path)
    assert meta["format"] == "repdistiller"
    assert meta["epoch"] == 240 and meta["accuracy"] == pytest.approx(79.42)
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(fresh(x), source(x))


def test_the_model_key_wins_only_when_there_is_no_state_dict(tmp_path):
    net = models.resnet8(num_classes=100)
    path = tmp_path / "bearpaw.pth.tar"
    torch.save({"state_dict": net.state_dict(), "model": {}, "best_acc": 1.0}, path)
    assert read_checkpoint(path)[1]["format"] == "bearpaw"


def test_a_checkpoint_of_another_architecture_names_the_expected_one(tmp_path):
    path = _write_repdistiller(
        tmp_path / "resnet110_vanilla/ckpt_epoch_240.pth", models.resnet110(100)
    )
    with pytest.raises(CheckpointError) as err:
        load_weights(models.resnet32x4(num_classes=100), path)
    msg = str(err.value)
    assert msg.startswith(f"checkpoint {path} does not fit ResNet: ")
    assert msg.endswith("; the model is the resnet32x4 architecture.")
    assert "shape mismatch" in msg and "missing key" in msg
    with pytest.raises(CheckpointError, match="does not fit VGG: .* the vgg13 architecture"):
        load_weights(models.vgg13(num_classes=100), path)


def test_a_teacher_for_another_number_of_classes_is_refused(tmp_path):
    path = _write_repdistiller(tmp_path / "ckpt_epoch_240.pth", models.resnet8x4(num_classes=100))
    with pytest.raises(
        CheckpointError, match=r"fc.weight is \[100, 256\] in the checkpoint but \[10, 256\]"
    ):
        load_weights(models.resnet8x4(num_classes=10), path)
