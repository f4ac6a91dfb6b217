"""Teacher checkpoints: each format users hold loads to identical logits; bad files fail clearly."""

from __future__ import annotations

import os
import pickle

import lightning as L
import pytest
import torch
from torch import nn

from kdlight import models
from kdlight.checkpoints import load_state_dict_file, load_weights, read_checkpoint, weights_hash
from kdlight.errors import CheckpointError
from tests.helpers.hostile import RunsCode

X = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
Y = torch.tensor([3, 7])


def trained(model: nn.Module, optimizer_cls=torch.optim.SGD, **opt_kw) -> tuple[nn.Module, dict]:
    """One optimizer step on random gradients, then random BN statistics.

    Weights, buffers and optimizer state then all differ from a fresh model's; there is no
    forward pass because the big nets are slow on CPU.
    """
    torch.manual_seed(1)
    opt = optimizer_cls(model.parameters(), **(opt_kw or {"lr": 0.1, "momentum": 0.9}))
    for p in model.parameters():
        p.grad = torch.randn_like(p)
    opt.step()
    opt.zero_grad(set_to_none=True)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.running_mean.normal_(0.0, 0.1)
            m.running_var.uniform_(0.5, 2.0)
    return model, opt.state_dict()


def logits(model: nn.Module) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(X)


def load_and_compare(writer: nn.Module, fresh: nn.Module, path) -> dict:
    """Load ``path`` into ``fresh``; its eval logits must then equal those of ``writer``."""
    expected = logits(writer)
    assert not torch.equal(logits(fresh), expected)  # the load below must be what changes it
    meta = load_weights(fresh, path)
    assert torch.equal(logits(fresh), expected)
    return meta


# ---- (a) the original KD project: experiments/<name>/best.pth.tar ---------------------------


@pytest.mark.parametrize(
    ("factory", "optimizer"),
    [(models.CNN5, torch.optim.Adam), (models.ResNet18, torch.optim.SGD)],
    ids=["cnn5-adam", "resnet18-sgd"],
)
def test_kd_project_best_pth_tar(tmp_path, factory, optimizer):
    kw = {"lr": 1e-3} if optimizer is torch.optim.Adam else {"lr": 0.1, "momentum": 0.9}
    model, optim_dict = trained(factory(), optimizer, **kw)
    # utils.save_checkpoint of the KD project, as written by PyTorch 0.3/0.4 (pre-zip format).
    state = {"epoch": 30, "state_dict": model.state_dict(), "optim_dict": optim_dict}
    path = tmp_path / "best.pth.tar"
    torch.save(state, path, _use_new_zipfile_serialization=False)
    meta = load_and_compare(model, factory(), path)
    assert meta["format"] == "kd-project"
    assert meta["epoch"] == 30


def test_kd_project_teacher_saved_under_data_parallel(tmp_path):
    # The KD project trained WRN/DenseNet/ResNeXt/PreResNet teachers wrapped in nn.DataParallel
    # (a small DenseNet-BC here: same code, same names, a fraction of the CPU time).
    def factory():
        return models.DenseNet(depth=40, growth_rate=12)

    model, optim_dict = trained(factory())
    wrapped = nn.DataParallel(model)
    state = {"epoch": 200, "state_dict": wrapped.state_dict(), "optim_dict": optim_dict}
    assert next(iter(state["state_dict"])).startswith("module.")
    torch.save(state, tmp_path / "best.pth.tar")
    meta = load_and_compare(model, factory(), tmp_path / "best.pth.tar")
    assert meta["format"] == "kd-project"
    assert meta["prefix"] == "module."


def test_checkpoint_from_pytorch_before_0_4_1_lacks_num_batches_tracked(tmp_path):
    model, optim_dict = trained(models.CNN5())
    sd = {k: v for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
    torch.save({"epoch": 1, "state_dict": sd, "optim_dict": optim_dict}, tmp_path / "old.pth.tar")
    load_and_compare(model, models.CNN5(), tmp_path / "old.pth.tar")


# ---- (b) bearpaw/pytorch-classification: checkpoint.pth.tar / model_best.pth.tar ------------


@pytest.mark.parametrize(
    "factory",
    [models.resnet20, lambda: models.PreResNet(depth=20, block="bottleneck")],
    ids=["resnet20", "preresnet20-bottleneck"],
)
def test_bearpaw_model_best_pth_tar(tmp_path, factory):
    # cifar.py: model = torch.nn.DataParallel(model).cuda(); save_checkpoint({...}, is_best, ...)
    model, optimizer = trained(factory())
    wrapped = nn.DataParallel(model)
    state = {
        "epoch": 164,
        "state_dict": wrapped.state_dict(),
        "acc": 93.12,
        "best_acc": 93.57,
        "optimizer": optimizer,
    }
    assert all(k.startswith("module.") for k in state["state_dict"])
    torch.save(state, tmp_path / "model_best.pth.tar")
    meta = load_and_compare(model, factory(), tmp_path / "model_best.pth.tar")
    assert meta["format"] == "bearpaw"
    assert meta["best_acc"] == pytest.approx(93.57)


# ---- (c) kdlight Lightning checkpoints ---------------------------------------------------


class _NetSystem(L.LightningModule):
    """Stands in for ClassifierModule / DistillationModule: the network is ``self.<attr>``."""

    def __init__(self, net: nn.Module, teacher: nn.Module | None = None, attr: str = "net"):
        super().__init__()
        self.attr = attr
        setattr(self, attr, net)
        if teacher is not None:
            self.teacher = teacher.requires_grad_(False)
        self.save_hyperparameters(ignore=["net", "teacher"])

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.cross_entropy(getattr(self, self.attr)(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(getattr(self, self.attr).parameters(), lr=0.1, momentum=0.9)


def _trainer() -> L.Trainer:
    return L.Trainer(
        accelerator="cpu",
        max_steps=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )


def _fit_and_save(system: L.LightningModule, path) -> None:
    data = torch.utils.data.TensorDataset(X, Y)
    trainer = _trainer()
    trainer.fit(system, torch.utils.data.DataLoader(data, batch_size=2))
    trainer.save_checkpoint(path)


@pytest.mark.parametrize(
    ("attr", "with_teacher"), [("net", False), ("net", True), ("student", True)]
)
def test_kdlight_lightning_checkpoint(tmp_path, attr, with_teacher):
    torch.manual_seed(0)
    teacher = models.resnet20() if with_teacher else None
    system = _NetSystem(models.CNN5(), teacher, attr=attr)
    _fit_and_save(system, tmp_path / "last.ckpt")
    saved = torch.load(tmp_path / "last.ckpt", weights_only=True)
    assert "pytorch-lightning_version" in saved
    assert any(k.startswith("teacher.") for k in saved["state_dict"]) == with_teacher
    meta = load_and_compare(getattr(system, attr), models.CNN5(), tmp_path / "last.ckpt")
    assert meta["format"] == "lightning"
    assert meta["prefix"] == f"{attr}."


def test_lightning_checkpoint_of_a_compiled_net(tmp_path):
    # EvalModule(compile=True) replaces self.net by torch.compile(net): keys gain "_orig_mod.".
    model, _ = trained(models.resnet20())
    system = _NetSystem(torch.compile(model))
    trainer = _trainer()
    trainer.strategy.connect(system)
    trainer.save_checkpoint(tmp_path / "last.ckpt")
    meta = load_and_compare(model, models.resnet20(), tmp_path / "last.ckpt")
    assert meta["prefix"] == "net._orig_mod."


def test_lightning_checkpoint_without_a_network_is_rejected(tmp_path):
    ckpt = {"pytorch-lightning_version": "2.6.0", "state_dict": {"head.w": torch.zeros(1)}}
    torch.save(ckpt, tmp_path / "other.ckpt")
    with pytest.raises(CheckpointError, match="without 'student.' or 'net.' weights"):
        load_state_dict_file(tmp_path / "other.ckpt")


# ---- (d) the kdlight teacher store; (e) a bare state dict -------------------------------


def test_kdlight_teacher_store_file(tmp_path):
    model, _ = trained(models.resnet20())
    meta_in = {"key_hash": "0123456789abcdef", "val_acc": 0.91, "test_acc": 0.9}
    torch.save({"state_dict": model.state_dict(), "kdlight": meta_in}, tmp_path / "teacher.pt")
    meta = load_and_compare(model, models.resnet20(), tmp_path / "teacher.pt")
    assert meta["format"] == "kdlight-store"
    assert meta["val_acc"] == 0.91
    assert meta["key_hash"] == "0123456789abcdef"


def test_bare_state_dict(tmp_path):
    model, _ = trained(models.CNN5())
    torch.save(model.state_dict(), tmp_path / "weights.pt")
    meta = load_and_compare(model, models.CNN5(), tmp_path / "weights.pt")
    assert meta["format"] == "state_dict"
    assert set(load_state_dict_file(tmp_path / "weights.pt")) == set(model.state_dict())


# ---- errors: one clear sentence ----------------------------------------------------------


def _one_sentence(exc: pytest.ExceptionInfo) -> str:
    msg = str(exc.value)
    assert "\n" not in msg and msg.endswith(".")
    return msg


def test_missing_file_names_the_path(tmp_path):
    path = tmp_path / "nowhere" / "best.pth.tar"
    with pytest.raises(CheckpointError) as exc:
        load_weights(models.CNN5(), path)
    assert str(path) in _one_sentence(exc)
    assert "does not exist" in str(exc.value)


@pytest.mark.parametrize("writer", ["torch.save", "pickle.dump"])
def test_a_pickle_that_would_run_code_is_refused_and_not_run(tmp_path, writer):
    marker = tmp_path / "pwned"
    payload = {
        "epoch": 1,
        "state_dict": {"conv1.weight": RunsCode(os.system, f"touch {marker}")},
        "optim_dict": {},
    }
    path = tmp_path / "best.pth.tar"
    if writer == "torch.save":
        torch.save(payload, path)
    else:
        with open(path, "wb") as fh:
            pickle.dump(payload, fh, protocol=2)
    with pytest.raises(CheckpointError) as exc:
        load_weights(models.CNN5(), path)
    msg = _one_sentence(exc)
    assert "refused" in msg and "execute code" in msg and str(path) in msg
    assert not marker.exists()
    if writer == "torch.save":  # the file really is hostile: an unsafe load runs it
        torch.load(path, weights_only=False)
        assert marker.exists()


@pytest.mark.parametrize(
    ("content", "match"),
    [
        (b"not a checkpoint at all", "is not a PyTorch checkpoint file: it is neither"),
        (b"", "is not a PyTorch checkpoint file: it is empty"),
        (b"PK\x03\x04truncated", "is not a readable PyTorch file"),
    ],
)
def test_a_file_that_is_not_a_checkpoint(tmp_path, content, match):
    path = tmp_path / "notes.pth.tar"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match=match) as exc:
        load_weights(models.CNN5(), path)
    _one_sentence(exc)


@pytest.mark.parametrize(
    ("obj", "match"),
    [
        ([torch.zeros(1)], "holds a list"),
        ({"state_dict": {"conv1.weight": 3}}, "entry 'conv1.weight' is a int"),
        ({}, "it is empty"),
    ],
)
def test_not_a_state_dict(tmp_path, obj, match):
    torch.save(obj, tmp_path / "x.pt")
    with pytest.raises(CheckpointError, match="is not a state dict") as exc:
        load_weights(models.CNN5(), tmp_path / "x.pt")
    assert match in _one_sentence(exc)


def test_wrong_architecture_lists_missing_and_unexpected_keys(tmp_path):
    torch.save(
        {"epoch": 1, "state_dict": models.resnet20().state_dict(), "optim_dict": {}},
        tmp_path / "r20.pth.tar",
    )
    with pytest.raises(CheckpointError) as exc:
        load_weights(models.resnet56(), tmp_path / "r20.pth.tar")
    msg = _one_sentence(exc)
    assert "does not fit ResNet" in msg
    # ResNet-56 has blocks 3..8 per stage that ResNet-20 lacks: 6 blocks x 3 stages x 12
    # tensors; the 2 num_batches_tracked per block may be absent (pre-0.4.1 files): 10 missing.
    assert (
        "180 missing keys (layer1.3.conv1.weight, layer1.3.bn1.weight, layer1.3.bn1.bias, ...)"
        in msg
    )

    torch.save(models.resnet56().state_dict(), tmp_path / "r56.pt")
    with pytest.raises(CheckpointError) as exc:
        load_weights(models.resnet20(), tmp_path / "r56.pt")
    assert "216 unexpected keys (layer1.3.conv1.weight" in _one_sentence(exc)


def test_wrong_num_classes_names_the_first_shape_mismatch(tmp_path):
    torch.save(models.resnet20(num_classes=100).state_dict(), tmp_path / "c100.pt")
    with pytest.raises(CheckpointError) as exc:
        load_weights(models.resnet20(num_classes=10), tmp_path / "c100.pt")
    msg = _one_sentence(exc)
    assert "2 shape mismatches" in msg
    assert "fc.weight is [100, 64] in the checkpoint but [10, 64] in the model" in msg


def test_teacher_of_another_family_is_rejected(tmp_path):
    torch.save(models.CNN5().state_dict(), tmp_path / "cnn.pt")
    with pytest.raises(CheckpointError, match="does not fit WideResNet: .* missing keys"):
        load_weights(models.WideResNet(depth=10, widen_factor=1), tmp_path / "cnn.pt")


# ---- weights_hash -------------------------------------------------------------------------


def test_weights_hash_identifies_weights(tmp_path):
    torch.manual_seed(0)
    a = models.resnet20()
    b = models.resnet20()
    assert weights_hash(a) != weights_hash(b)
    b.load_state_dict(a.state_dict())
    assert weights_hash(a) == weights_hash(b) == weights_hash(a.state_dict())
    torch.save(a.state_dict(), tmp_path / "a.pt")
    assert weights_hash(load_state_dict_file(tmp_path / "a.pt")) == weights_hash(a)
    with torch.no_grad():
        b.fc.bias[0] += 1e-3
    assert weights_hash(a) != weights_hash(b)
    b.load_state_dict(a.state_dict())
    b.bn1.running_mean[0] = 0.5  # buffers count too: they change the eval logits
    assert weights_hash(a) != weights_hash(b)
    assert len(weights_hash(a)) == 64


def test_read_checkpoint_reports_format_and_path(tmp_path):
    torch.save({"state_dict": models.CNN5().state_dict(), "epoch": 3}, tmp_path / "w.pt")
    state, meta = read_checkpoint(tmp_path / "w.pt")
    assert meta == {"format": "state_dict", "epoch": 3, "path": str(tmp_path / "w.pt")}
    assert "fc2.weight" in state
