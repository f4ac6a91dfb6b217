"""``module.fused_optimizer``: which optimizers get their fused kernel, and that it trains the same."""

from functools import partial

import lightning as L
import pytest
import torch
from torch import nn

from kdlight.engine import ClassifierModule
from kdlight.errors import ConfigError
from kdlight.optim import fill_momentum_buffers, fused_optimizer_setting, make_optimizer


def _params(device: str = "cpu") -> list[torch.Tensor]:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3)).to(device)
    return list(net.parameters())


def _is_fused(opt: torch.optim.Optimizer) -> bool:
    return bool(opt.param_groups[0].get("fused"))


@pytest.mark.parametrize("cls", [torch.optim.SGD, torch.optim.Adam, torch.optim.AdamW])
def test_auto_fuses_sgd_adam_adamw_on_cpu(cls):
    assert _is_fused(make_optimizer(partial(cls, lr=0.1), _params(), "auto"))
    assert _is_fused(make_optimizer(partial(cls, lr=0.1), _params(), True))
    assert not _is_fused(make_optimizer(partial(cls, lr=0.1), _params(), False))


@pytest.mark.parametrize("given", [{"foreach": False}, {"foreach": True}, {"fused": False}])
def test_the_optimizer_configs_own_choice_wins(given):
    opt = make_optimizer(partial(torch.optim.SGD, lr=0.1, **given), _params(), "auto")
    assert not _is_fused(opt)
    assert opt.param_groups[0]["foreach"] == given.get("foreach")


def test_auto_leaves_what_cannot_fuse_and_true_names_why():
    rms = partial(torch.optim.RMSprop, lr=0.1)
    assert not _is_fused(make_optimizer(rms, _params(), "auto"))
    with pytest.raises(ConfigError, match=r"fused_optimizer=true but RMSprop .*auto or false"):
        make_optimizer(rms, _params(), True)
    meta = partial(torch.optim.SGD, lr=0.1)
    assert not _is_fused(make_optimizer(meta, _params("meta"), "auto"))
    with pytest.raises(ConfigError, match="CPU or CUDA"):
        make_optimizer(meta, _params("meta"), True)
    clipped = make_optimizer(meta, _params(), "auto", clips_scaled_gradients=True)
    assert not _is_fused(clipped)
    with pytest.raises(ConfigError, match="clips gradients"):
        make_optimizer(meta, _params(), True, clips_scaled_gradients=True)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("auto", "auto"),
        (None, "auto"),
        (True, True),
        (False, False),
        ("true", True),
        ("False", False),
    ],
)
def test_setting_values(value, expected):
    assert fused_optimizer_setting(value) == expected


@pytest.mark.parametrize("value", ["sometimes", 1, 0.5])
def test_a_bad_setting_is_one_sentence(value):
    with pytest.raises(
        ConfigError, match=r"module.fused_optimizer=.* is not valid; use auto, true or false"
    ):
        fused_optimizer_setting(value)


def test_fused_sgd_follows_the_momentum_update_written_out():
    """SGD with momentum and weight decay, written out: g' = g + wd*w; b = m*b + g'; w -= lr*b."""
    lr, m, wd = 0.1, 0.9, 5e-3
    params = _params()
    expected = [p.detach().clone() for p in params]
    bufs = [None] * len(params)
    opt = make_optimizer(partial(torch.optim.SGD, lr=lr, momentum=m, weight_decay=wd), params)
    assert _is_fused(opt)
    gen = torch.Generator().manual_seed(1)
    for _ in range(4):
        grads = [torch.randn(p.shape, generator=gen) for p in params]
        for p, g in zip(params, grads, strict=True):
            p.grad = g.clone()
        opt.step()
        for i, g in enumerate(grads):
            g = g + wd * expected[i]
            bufs[i] = g.clone() if bufs[i] is None else m * bufs[i] + g
            expected[i] = expected[i] - lr * bufs[i]
    for p, e in zip(params, expected, strict=True):
        torch.testing.assert_close(p.detach(), e, rtol=1e-6, atol=1e-7)


def test_a_fit_uses_the_fused_kernel_unless_switched_off():
    x = torch.randn(16, 6)
    y = torch.randint(0, 3, (16,))
    loader = torch.utils.data.DataLoader(
        [{"x": a, "y": b} for a, b in zip(x, y, strict=True)], batch_size=8
    )
    seen = {}
    for setting in ("auto", False):
        torch.manual_seed(0)
        net = nn.Sequential(nn.Linear(6, 3))
        module = ClassifierModule(
            net, 3, partial(torch.optim.SGD, lr=0.1, momentum=0.9), fused_optimizer=setting
        )
        trainer = L.Trainer(
            max_epochs=1,
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            accelerator="cpu",
        )
        trainer.fit(module, train_dataloaders=loader)
        seen[setting] = (
            _is_fused(trainer.optimizers[0]),
            [p.detach().clone() for p in net.parameters()],
        )
    assert seen["auto"][0] and not seen[False][0]
    for a, b in zip(seen["auto"][1], seen[False][1], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)  # a few ulp apart


def test_a_parameter_that_starts_training_late_moves_as_with_the_unfused_sgd():
    """FitNets' KD stage: parameters get their first gradient after others have momentum."""
    lr, m, wd = 0.1, 0.9, 1e-3
    weights = {}
    for fused in (True, False):
        a, b = _params()[:2]
        expected = [a.detach().clone(), b.detach().clone()]
        bufs = [None, None]
        opt = torch.optim.SGD([a, b], lr=lr, momentum=m, weight_decay=wd, fused=fused)
        gen = torch.Generator().manual_seed(2)
        for step in range(5):
            a.grad = torch.randn(a.shape, generator=gen)
            b.grad = torch.randn(b.shape, generator=gen) if step >= 2 else None
            fill_momentum_buffers(opt)  # what EvalModule.optimizer_step does after the closure
            opt.step()
            # written out: a buffer starts as the first (decayed) gradient, then b = m*b + g
            for i, p in enumerate((a, b)):
                if p.grad is not None:
                    g = p.grad + wd * expected[i]
                    bufs[i] = g.clone() if bufs[i] is None else m * bufs[i] + g
                    expected[i] = expected[i] - lr * bufs[i]
        weights[fused] = (a.detach().clone(), b.detach().clone())
        for p, e in zip((a, b), expected, strict=True):
            torch.testing.assert_close(p.detach(), e, rtol=1e-6, atol=1e-6)
    # the fused kernel rounds once where the unfused SGD rounds twice: a few ulp apart
    for x, y in zip(weights[True], weights[False], strict=True):
        torch.testing.assert_close(x, y, rtol=1e-6, atol=1e-6)


def test_auto_leaves_sgd_with_dampening_unfused():
    opt = make_optimizer(partial(torch.optim.SGD, lr=0.1, momentum=0.9, dampening=0.1), _params())
    assert not _is_fused(opt)
    with pytest.raises(ConfigError, match="dampening"):
        make_optimizer(
            partial(torch.optim.SGD, lr=0.1, momentum=0.9, dampening=0.1), _params(), True
        )
