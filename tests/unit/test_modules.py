import functools

import pytest
import torch

from kdlight.engine import ClassifierModule, DistillationModule
from kdlight.methods.kd import KD
from kdlight.models.mlp import MLP

SGD = functools.partial(torch.optim.SGD, lr=0.1)


def _batch(n=8, labels=True):
    b = {"x": torch.randn(n, 1, 28, 28), "idx": torch.arange(n), "split": "train"}
    if labels:
        b["y"] = torch.randint(0, 10, (n,))
    return b


def _distiller(alpha=0.5):
    teacher = MLP(784, (32,), dropout=0.5)
    student = MLP(784, (16, 16))
    return DistillationModule(student, teacher, KD(alpha, 4.0), 10, SGD), teacher, student


def test_mlp_parameter_counts_match_the_study():
    assert sum(p.numel() for p in MLP(784, (1200, 1200), dropout=0.8).parameters()) == 2_395_210
    assert sum(p.numel() for p in MLP(784, (800, 800)).parameters()) == 1_276_810


def test_gradients_reach_every_student_parameter_and_never_the_teacher():
    module, teacher, student = _distiller()
    module.train()
    loss = module.training_step(_batch(), 0)
    loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in student.parameters())
    assert all(p.grad is None and not p.requires_grad for p in teacher.parameters())


def test_teacher_stays_in_eval_mode_and_out_of_the_optimizer():
    module, teacher, student = _distiller()
    module.train()
    assert student.training and not teacher.training
    assert not any(m.training for m in teacher.modules())
    opt = module.configure_optimizers()
    in_opt = {id(p) for g in opt.param_groups for p in g["params"]}
    assert in_opt == {id(p) for p in student.parameters()}


def test_teacher_is_deterministic_despite_dropout():
    module, teacher, _ = _distiller()
    module.train()
    b = _batch()
    assert torch.equal(module.teacher_logits(b), module.teacher_logits(b))


def test_checkpoint_leaves_the_teacher_out():
    module, _, _ = _distiller()
    ckpt = {"state_dict": module.state_dict()}
    module.on_save_checkpoint(ckpt)
    assert ckpt["state_dict"] and not any(k.startswith("teacher.") for k in ckpt["state_dict"])


def test_unlabeled_batch_with_alpha_one_trains_without_labels():
    module, _, student = _distiller(alpha=1.0)
    loss = module.training_step(_batch(labels=False), 0)
    loss.backward()
    assert all(p.grad is not None for p in student.parameters())


def test_classifier_gradients():
    net = MLP(784, (16,))
    module = ClassifierModule(net, 10, SGD)
    module.training_step(_batch(), 0).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in net.parameters())


def test_train_accuracy_is_the_epochs_fraction_of_correct_predictions():
    module = ClassifierModule(MLP(784, (16,)), 3, SGD)
    logged = {}
    module.log = lambda name, value, **kw: logged.__setitem__(name, value)
    eye = torch.eye(3)
    module.on_train_epoch_start()
    # batch 1: predictions 0, 1, 2, 0 against labels 0, 1, 1, 0 (3 right); batch 2: 2, 2 against 2, 0 (1 right)
    module.update_train_acc(eye[[0, 1, 2, 0]], torch.tensor([0, 1, 1, 0]))
    module.update_train_acc(eye[[2, 2]], torch.tensor([2, 0]))
    module.on_train_epoch_end()
    assert float(logged["train/acc"].compute()) == pytest.approx(4 / 6, rel=1e-6)  # float32
    # the next epoch starts from zero: 1 of 1 right
    logged["train/acc"].reset()
    module.on_train_epoch_start()
    module.update_train_acc(eye[[1]], torch.tensor([1]))
    module.on_train_epoch_end()
    assert float(logged["train/acc"].compute()) == 1.0


def test_per_step_attributes_skip_module_bookkeeping_but_stay_plain_attributes():
    from kdlight.engine import STEP_ATTRIBUTES

    module, _, _ = _distiller()
    params, buffers = dict(module.named_parameters()), dict(module.named_buffers())
    for name in STEP_ATTRIBUTES:
        setattr(module, name, torch.ones(2))  # a tensor too: never taken for a buffer
        assert torch.equal(getattr(module, name), torch.ones(2))
    assert dict(module.named_parameters()).keys() == params.keys()
    assert dict(module.named_buffers()).keys() == buffers.keys()
    assert not any(k.split(".")[0] in STEP_ATTRIBUTES for k in module.state_dict())
    # every other name still goes through nn.Module: parameters and submodules register
    module.extra = torch.nn.Parameter(torch.zeros(3))
    module.head = torch.nn.Linear(2, 2)
    assert "extra" in dict(module.named_parameters())
    assert "head.weight" in dict(module.named_parameters())
    assert "head" in dict(module.named_children())


def test_val_accuracy_is_the_epochs_fraction_not_the_mean_of_batches():
    module = ClassifierModule(MLP(784, (16,)), 3, SGD)
    module.net = torch.nn.Identity()  # the "logits" are the inputs
    logged = {}
    module.log = lambda name, value, **kw: logged.__setitem__(name, value)
    eye = torch.eye(3)
    # batch 1: 3 of 4 right; batch 2: 0 of 2 -> 3/6 = 0.5 (the mean of batch accuracies would be 0.375)
    module.validation_step({"x": eye[[0, 1, 2, 0]], "y": torch.tensor([0, 1, 1, 0])}, 0)
    module.validation_step({"x": eye[[2, 2]], "y": torch.tensor([0, 1])}, 1)
    assert "val/acc" not in logged and "val/loss" not in logged  # once per epoch, not per step
    module.on_validation_epoch_end()
    assert float(logged["val/acc"].compute()) == pytest.approx(0.5)
    # val/loss: the sample-weighted mean of the batches' mean cross-entropies (4 and 2 samples)
    ce = torch.nn.functional.cross_entropy
    b1 = ce(eye[[0, 1, 2, 0]], torch.tensor([0, 1, 1, 0]))
    b2 = ce(eye[[2, 2]], torch.tensor([0, 1]))
    assert float(logged["val/loss"].compute()) == pytest.approx(float((4 * b1 + 2 * b2) / 6))
    # an epoch without a batch logs nothing (no 0 from an empty metric)
    logged.clear()
    module.val_acc.reset()
    module.on_validation_epoch_end()
    module.on_test_epoch_end()
    assert logged == {}


def test_test_agreement_is_logged_once_per_epoch_over_every_batch():
    module, teacher, student = _distiller()
    logged = {}
    module.log = lambda name, value, **kw: logged.__setitem__(name, value)
    batches = [_batch(8), _batch(5)]
    for i, b in enumerate(batches):
        module.test_step(b, i)
    module.on_test_epoch_end()
    with torch.no_grad():
        x = torch.cat([b["x"] for b in batches])
        same = (student.eval()(x).argmax(1) == teacher.eval()(x).argmax(1)).float().mean()
        right = (student(x).argmax(1) == torch.cat([b["y"] for b in batches])).float().mean()
    assert float(logged["test/agreement"].compute()) == pytest.approx(float(same))
    assert float(logged["test/acc"].compute()) == pytest.approx(float(right))
