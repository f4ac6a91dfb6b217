"""Data-free KD: the statistics recorder, the reconstruction, and that no real training data reaches the student."""

from __future__ import annotations

import functools
import math

import pytest
import torch
from torch import nn

from kdlight.data.formats.arrays import ImageArrays
from kdlight.data.modules.array import ArrayDataModule
from kdlight.engine import DistillationModule
from kdlight.errors import ConfigError
from kdlight.methods.data_free import DataFree
from kdlight.methods.data_free.reconstruction import (
    default_layers,
    reconstruct,
    record_statistics,
    sample_targets,
)
from kdlight.models.mlp import MLP

pytestmark = pytest.mark.filterwarnings("ignore:.*self.trainer. reference is not registered")
SGD = functools.partial(torch.optim.SGD, lr=0.1)


def _known_teacher() -> nn.Sequential:
    """Linear(2->3) = [x0, x1, x0 + x1] -> ReLU(inplace) -> Linear(3->3) = [h0, h1, 0]."""
    net = nn.Sequential(nn.Linear(2, 3), nn.ReLU(inplace=True), nn.Linear(3, 3))
    with torch.no_grad():
        net[0].weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]))
        net[0].bias.zero_()
        net[2].weight.copy_(torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 0.0]]))
        net[2].bias.zero_()
    return net


X = torch.tensor([[1.0, 2.0], [3.0, 0.0], [-1.0, 4.0], [5.0, -2.0]])


def test_statistics_are_exact_on_a_known_input():
    # layer "0" rows: [1,2,3] [3,0,3] [-1,4,3] [5,-2,3]; logits: [1,2,0] [3,0,0] [0,4,0] [5,0,0]
    # predicted classes 1, 0, 1, 0; class 2 is never predicted.
    stats = record_statistics(_known_teacher(), [X[:2], X[2:]], num_classes=3)
    assert stats["layers"] == ["0", "logits"] and stats["count"] == 4
    assert stats["class_count"].tolist() == [2, 2, 0]
    s5 = math.sqrt(5.0)
    assert stats["mean"]["0"].tolist() == pytest.approx([2.0, 1.0, 3.0])
    assert stats["std"]["0"].tolist() == pytest.approx([s5, s5, 0.0])  # population std
    assert stats["mean"]["logits"].tolist() == pytest.approx([2.25, 1.5, 0.0])
    assert stats["std"]["logits"].tolist() == pytest.approx(
        [math.sqrt(3.6875), math.sqrt(2.75), 0.0]
    )
    # class 0: rows [3,0,3], [5,-2,3]; class 1: rows [1,2,3], [-1,4,3]
    assert stats["class_mean"]["0"][:2].tolist() == [
        pytest.approx([4.0, -1.0, 3.0]),
        pytest.approx([0.0, 3.0, 3.0]),
    ]
    assert stats["class_std"]["0"][:2].tolist() == [pytest.approx([1.0, 1.0, 0.0])] * 2
    # a class never predicted falls back to the overall statistics
    assert torch.equal(stats["class_mean"]["0"][2], stats["mean"]["0"])
    assert torch.equal(stats["class_std"]["0"][2], stats["std"]["0"])


def test_statistics_do_not_depend_on_batching_and_default_layers_are_the_hidden_linears():
    torch.manual_seed(0)
    net = MLP(8, (6, 5), num_classes=4, dropout=0.5)
    assert default_layers(net) == ["layers.1", "layers.4"]
    x = torch.randn(30, 8)
    one = record_statistics(net, [x], 4)
    many = record_statistics(net, list(x.split(7)), 4)
    for key in ("mean", "std", "class_mean", "class_std"):
        for name in one["layers"]:
            assert torch.allclose(one[key][name], many[key][name], atol=1e-6)
    assert net.training  # the recorder restores the mode it found


def test_sampled_targets_follow_the_class_statistics():
    stats = record_statistics(_known_teacher(), [X], num_classes=3)
    gen = torch.Generator().manual_seed(0)
    t = sample_targets(stats, torch.tensor([0] * 4000 + [-1] * 4000), gen)
    assert t["0"][:4000].mean(0).tolist() == pytest.approx([4.0, -1.0, 3.0], abs=0.06)
    assert t["0"][:4000].std(0).tolist() == pytest.approx([1.0, 1.0, 0.0], abs=0.06)
    assert t["0"][4000:].mean(0).tolist() == pytest.approx([2.0, 1.0, 3.0], abs=0.1)


def _small_teacher():
    torch.manual_seed(0)
    net = MLP(16, (32, 24), num_classes=5).eval()
    stats = record_statistics(net, [torch.randn(200, 1, 4, 4) * 1.5 + 0.3], 5)
    return net, stats


def test_reconstruction_reduces_the_matching_loss_and_balances_classes():
    net, stats = _small_teacher()
    out = reconstruct(
        net, stats, (1, 4, 4), num_samples=40, batch_size=20, steps=40, lr=0.1, seed=1
    )
    assert out["x"].shape == (40, 1, 4, 4) and out["teacher_logits"].shape == (40, 5)
    assert torch.all(out["loss_end"] < 0.5 * out["loss_start"])
    seen = stats["class_count"] > 0
    counts = torch.bincount(out["classes"], minlength=5)[seen]
    assert counts.max() - counts.min() <= 1
    with torch.no_grad():
        assert torch.allclose(out["teacher_logits"], net(out["x"]))
    again = reconstruct(
        net, stats, (1, 4, 4), num_samples=40, batch_size=20, steps=40, lr=0.1, seed=1
    )
    assert torch.equal(again["x"], out["x"])  # deterministic for a seed


def test_reconstruction_respects_the_input_bounds():
    net, stats = _small_teacher()
    lo, hi = torch.tensor(-0.5), torch.tensor(0.7)
    out = reconstruct(net, stats, (1, 4, 4), num_samples=8, batch_size=8, steps=5, bounds=(lo, hi))
    assert out["x"].min() >= -0.5 and out["x"].max() <= 0.7


class _TinyData(ArrayDataModule):
    """An in-memory 4x4 dataset that counts the real training batches it hands out."""

    name = "tiny"

    def __init__(self, **kw):
        super().__init__(val_size=10, batch_size=16, eval_batch_size=32, **kw)
        self.train_batches = 0

    def load_arrays(self):
        g = torch.Generator().manual_seed(0)
        x = torch.randint(0, 256, (80, 1, 4, 4), generator=g, dtype=torch.uint8)
        y = torch.arange(80) % 5
        return ImageArrays(x, y, x[:20].clone(), y[:20].clone(), [str(i) for i in range(5)])

    def collate(self, indices, split):
        self.train_batches += split == "train"
        return super().collate(indices, split)


def test_the_student_never_sees_real_training_images_or_labels(tmp_path):
    torch.manual_seed(0)
    teacher, student = MLP(16, (32,), num_classes=5).eval(), MLP(16, (8,), num_classes=5)
    method = DataFree(temperature=4.0, store_dir=tmp_path, num_samples=24, batch_size=12, steps=3)
    module = DistillationModule(student, teacher, method, 5, SGD)
    real = _TinyData()
    data = module.fit_datamodule(real)
    data.build("cpu")
    seen: list[torch.Tensor] = []
    student.register_forward_pre_hook(lambda m, args: seen.append(args[0].detach().clone()))
    for batch in data.train_dataloader():
        batch = data.on_after_batch_transfer(batch, 0)
        assert "y" not in batch
        module.training_step(batch, 0).backward()
    assert real.train_batches == 0
    inputs = torch.cat(seen).flatten(1)
    transfer = data.transfer["x"].flatten(1)
    assert inputs.shape[0] == transfer.shape[0]
    assert all((transfer == row).all(1).any() for row in inputs)  # every input is a transfer sample
    real_x = real.view_batch(real.train_idx, None).flatten(1)
    assert not any((real_x == row).all(1).any() for row in inputs)
    with pytest.raises(RuntimeError, match="real training batch"):
        module.training_step(real.collate(real.train_idx[:4].tolist(), "train"), 0)


def test_statistics_and_transfer_set_are_stored_and_reused(tmp_path):
    torch.manual_seed(0)
    teacher = MLP(16, (32,), num_classes=5).eval()
    args = {"store_dir": tmp_path, "num_samples": 12, "batch_size": 12, "steps": 2}
    method = DataFree(**args)
    first = DistillationModule(MLP(16, (8,), num_classes=5), teacher, method, 5, SGD)
    data = first.fit_datamodule(_TinyData())
    data.build("cpu")
    assert data.stats_path.is_file() and data.transfer_path.is_file()
    assert data.stats_path.parent.parent == tmp_path / "datafree"
    again = first.fit_datamodule(_TinyData())
    again.build("cpu")
    assert again.transfer_path == data.transfer_path
    assert torch.equal(again.transfer["x"], data.transfer["x"])
    assert again.summary()["samples"] == 12


def test_alpha_below_one_is_rejected():
    with pytest.raises(ConfigError, match="alpha=0.9"):
        DataFree(alpha=0.9)
    module = DistillationModule(MLP(16, (8,)), MLP(16, (8,)), DataFree(layers=["nope"]), 10, SGD)
    with pytest.raises(ConfigError, match="nope"):
        module.fit_datamodule(_TinyData())
