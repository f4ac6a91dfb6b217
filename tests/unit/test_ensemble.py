"""The teacher ensemble: averaged probabilities as one logit vector."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from kdlight.errors import ConfigError
from kdlight.teacher.ensemble import TeacherEnsemble


class Fixed(nn.Module):
    def __init__(self, logits):
        super().__init__()
        self.register_buffer("logits", torch.tensor(logits))

    def forward(self, x):
        return self.logits.expand(x.shape[0], -1)


def test_softmax_of_the_ensemble_output_is_the_members_average_probability():
    # members: p1 = softmax([ln 3, 0]) = [3/4, 1/4], p2 = softmax([0, 0]) = [1/2, 1/2]
    ens = TeacherEnsemble([Fixed([1.0986122886681098, 0.0]), Fixed([0.0, 0.0])])
    out = ens(torch.zeros(2, 1))
    assert torch.softmax(out, dim=1)[0].tolist() == pytest.approx([0.625, 0.375], abs=1e-6)
    assert torch.exp(out)[0].sum().item() == pytest.approx(1.0, abs=1e-6)  # already log-probs
    assert out.argmax(1).tolist() == [0, 0]


def test_three_random_members():
    torch.manual_seed(0)
    members = [nn.Linear(4, 5) for _ in range(3)]
    x = torch.randn(6, 4)
    expected = sum(torch.softmax(m(x), dim=1) for m in members) / 3
    got = torch.softmax(TeacherEnsemble(members)(x), dim=1)
    assert torch.allclose(got, expected, atol=1e-6)


def test_one_member_is_not_an_ensemble():
    with pytest.raises(ConfigError, match="at least two"):
        TeacherEnsemble([nn.Linear(2, 2)])
