"""What the exact (float32) teacher store promises: the teacher's own outputs on the same inputs.

The store computes a view's logits in eval-sized batches; an online teacher computes them in
training-sized batches. A CPU's GEMM kernels may accumulate the two shapes in different orders
(AVX-512 and AVX2 builds do), so the two agree to float32 rounding of the teacher forward, not
bit for bit. These tests check exactly that, with a bound derived from float32 itself:

for y = W x + b in float32 with inner dimension n, |fl(y) - y| <= gamma_n (|W| |x| + |b|),
gamma_n = n u / (1 - n u), u = 2^-24 (Higham, Accuracy and Stability of Numerical Algorithms,
section 3.5). A ReLU is exact and passes an error on only where its unit is active, so to
first order the output error of a ReLU network is at most e_L, where e_0 = 0 and
e_l = |W_l| (m_{l-1} * e_{l-1}) + gamma_{n_l} (|W_l| |a_{l-1}| + |b_l|), with a_l the
activations and m_l their ReLU's active mask (computed in float64). Two float32 computations
each within e_L of the float64 truth are within 2 e_L of each other. A row served from another
sample or place differs by the logits' own size (~1), orders of magnitude above the bound.
"""

from __future__ import annotations

import torch
from torch import nn

from kdlight.teacher.store import TeacherLogitStore

U = 2.0**-24  # float32 unit roundoff


def _gamma(n: int) -> float:
    return n * U / (1 - n * U)


def _teacher(seed: int = 0) -> nn.Sequential:
    """An MLP with He-initialised weights, so activations and logits keep a size of about 1."""
    torch.manual_seed(seed)
    net = nn.Sequential(
        nn.Flatten(),
        nn.Linear(784, 300),
        nn.ReLU(),
        nn.Linear(300, 300),
        nn.ReLU(),
        nn.Linear(300, 10),
    ).eval()
    for m in net:
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, std=(2 / m.in_features) ** 0.5)
            nn.init.normal_(m.bias, std=0.1)
    return net


def _bound(net: nn.Sequential, x: torch.Tensor) -> torch.Tensor:
    """e_L of the module docstring: the float32 forward error bound of ``net`` at ``x``."""
    a = x.double().flatten(1)
    err = torch.zeros_like(a)
    for layer in net:
        if isinstance(layer, nn.Linear):
            w, b = layer.weight.double(), layer.bias.double()
            err = err @ w.abs().T + _gamma(layer.in_features) * (a.abs() @ w.abs().T + b.abs())
            a = a @ w.T + b
        elif isinstance(layer, nn.ReLU):
            err = err * (a > 0)
            a = a.clamp_min(0)
    return err


def _inputs(n: int, seed: int) -> torch.Tensor:
    """Normalised images: mean 0, std 1 per pixel."""
    return (torch.rand(n, 1, 28, 28, generator=torch.Generator().manual_seed(seed)) - 0.5) / 0.29


def test_stored_logits_are_the_teachers_outputs_to_float32_rounding(tmp_path):
    teacher = _teacher()
    x = _inputs(300, seed=1)  # the data set, in sample order
    store = TeacherLogitStore(
        tmp_path, {"teacher": "t"}, num_samples=300, num_classes=10, dtype="float32", batch_size=256
    )
    with torch.inference_mode():
        store.get(0, lambda idx: teacher(x[idx]), progress=False)  # eval-sized batches: 256 + 44
        truth = teacher.double()(x.double())
        teacher.float()
        gen = torch.Generator().manual_seed(2)
        for idx in torch.randperm(300, generator=gen).split(128):  # a shuffled training epoch
            served = store.gather(0, idx)
            online = teacher(x[idx])
            bound = _bound(teacher, x[idx])
            assert served.dtype == online.dtype == torch.float32
            assert ((served.double() - truth[idx]).abs() <= bound).all()
            assert ((online.double() - truth[idx]).abs() <= bound).all()
            assert ((served - online).double().abs() <= 2 * bound).all()
            # the bound is tight enough that another sample's row would fail it
            wrong = store.gather(0, idx.roll(1))
            assert ((wrong - online).double().abs() > 2 * bound).any()


def test_the_float32_bound_is_not_vacuous():
    # the worst-case bound is loose (a float32 forward is typically ~1e-6 off here, the bound
    # ~0.2), but it must stay below the distance between two samples' logits, or the test above
    # could not tell a misplaced row from rounding
    teacher = _teacher()
    x = _inputs(256, seed=3)
    with torch.inference_mode():
        logits = teacher(x).double()
        bound = _bound(teacher, x)
    distance = (logits[:, None] - logits[None]).abs().amax(-1)
    distance.fill_diagonal_(float("inf"))
    assert 2 * bound.max() < distance.min()
