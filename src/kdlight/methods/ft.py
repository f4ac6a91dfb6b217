"""Factor transfer (Kim, Park & Kwak, NeurIPS 2018, "Paraphrasing Complex Network: Network
Compression via Factor Transfer").

A paraphraser P (three 3x3 convs down to ``rate`` * C_t channels, LeakyReLU 0.1, and a mirrored
decoder of transposed convs) learns to reconstruct the teacher's last stage map T; a
translator R (three 3x3 convs + BN + LeakyReLU, student channels to ``rate`` * C_t) maps the
student's last stage map S to the same factor space. With the factor
f(X) = normalize(vec(mean_c X_c^p1)) (per sample, L2), the smaller factor map's size used for
both (the larger average-pooled first),

    init stage:  L_rec = mean (decoder(P(T)) - T)^2                   (P learns, alone)
    then:        L_FT  = mean over the batch and positions of |f(R(S)) - f(P(T))|^p2

with p1 = 2, p2 = 1 (paper eq. 3: the L1 distance of the normalised factors), as RepDistiller's
``FactorTransfer`` / ``Paraphraser`` / ``Translator``. After the init stage P is frozen; R
learns with the student under ``gamma * CE + alpha * KD + beta * L_FT``; ``beta = 200`` and
``rate = 0.5`` are RepDistiller's (``--distill factor -a 0 -b 200``). RepDistiller trains P
for 30 epochs before its 240 (at lr 0.01 for ResNets); kdlight counts ``init_epochs`` inside
``trainer.max_epochs`` (the default 2 is a CPU-scale choice as FitNets' ``hint_epochs``), at
the run's learning rate, and the student's forward still runs (its BatchNorm statistics move).

Layers: ``auto`` taps each network's last declared stage (RepDistiller's ``feat[-2]``). The
teacher's part passes through the learned paraphraser, so the store keeps the raw map.
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from torch import nn

from kdlight.errors import ConfigError
from kdlight.methods.ab import check_stages
from kdlight.methods.base import Context, Plan, check_range
from kdlight.methods.features import FeatureKD, match_spatial, warn_if_first_stage_covers_training

log = logging.getLogger(__name__)


def _stack(pairs, conv, bn: bool) -> nn.Sequential:
    layers: list[nn.Module] = []
    for c_in, c_out in pairs:
        layers += [conv(c_in, c_out, 3, 1, 1), nn.BatchNorm2d(c_out) if bn else nn.Sequential()]
        layers.append(nn.LeakyReLU(0.1))
    return nn.Sequential(*layers)


class Paraphraser(nn.Module):
    """Encoder C -> C -> kC -> kC and decoder kC -> kC -> C -> C (RepDistiller's, no BN)."""

    def __init__(self, channels: int, rate: float, bn: bool = False) -> None:
        super().__init__()
        c, k = channels, int(channels * rate)
        self.encoder = _stack([(c, c), (c, k), (k, k)], nn.Conv2d, bn)
        self.decoder = _stack([(k, k), (k, c), (c, c)], nn.ConvTranspose2d, bn)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        factor = self.encoder(x)
        return factor, self.decoder(factor)


class Translator(nn.Module):
    """Student channels Cs -> Cs -> kCt -> kCt, each conv followed by BN (RepDistiller's)."""

    def __init__(self, student_channels: int, teacher_channels: int, rate: float) -> None:
        super().__init__()
        c, k = student_channels, int(teacher_channels * rate)
        self.encoder = _stack([(c, c), (c, k), (k, k)], nn.Conv2d, True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x)


def factor(x: torch.Tensor, p1: float) -> torch.Tensor:
    """normalize(vec(mean_c x_c^p1)) per sample, (N, H * W)."""
    return F.normalize(x.pow(p1).mean(1).reshape(x.shape[0], -1))


class FT(FeatureKD):
    """Factor transfer; see the module docstring.

    Args:
        rate: paraphrase rate k in (0, 1]: the factor has int(k * C_t) channels (0.5).
        p1: exponent of the factor map, > 0 (2); p2: exponent of the distance, > 0 (1: L1).
        init_epochs: epochs of the paraphraser's reconstruction stage, >= 0 (0: none; the
            paraphraser then stays at its initialisation).
        beta, gamma, alpha, temperature, student_layers, teacher_layers: see
            :class:`kdlight.methods.features.FeatureKD` (``auto``: the last stage), one pair.

    Returns ``{"loss", "loss_rec"}`` in the init stage, then
    ``{"loss", "loss_ft", "loss_ce"[, "loss_kd"]}``; the terms are unweighted.
    """

    layer_kind = "last_stage"
    term = "loss_ft"
    needs_maps = True

    def __init__(
        self,
        rate: float = 0.5,
        p1: float = 2.0,
        p2: float = 1.0,
        init_epochs: int = 2,
        beta: float = 200.0,
        **kwargs,
    ) -> None:
        super().__init__(beta, **kwargs)
        self.rate = check_range("rate", rate, 0.0, 1.0, low_open=True)
        self.p1 = check_range("p1", p1, 0.0, low_open=True)
        self.p2 = check_range("p2", p2, 0.0, low_open=True)
        self.init_epochs = check_stages(self, init_epochs)
        self.paraphraser: Paraphraser | None = None
        self.translator: Translator | None = None

    def build_heads(self, student, teacher) -> None:
        if len(student) != 1:
            raise ConfigError(
                f"distill=ft transfers one layer pair but got {len(student)}; name one layer in "
                f"distill.student_layers and distill.teacher_layers."
            )
        ct = teacher[0].shape[1]
        if int(ct * self.rate) < 1:
            raise ConfigError(
                f"distill.rate={self.rate} leaves no factor channel for the teacher layer's {ct} "
                f"channels; it must be >= {1 / ct:g}."
            )
        self.paraphraser = Paraphraser(ct, self.rate)
        self.translator = Translator(student[0].shape[1], ct, self.rate)

    def in_init_stage(self, epoch: int) -> bool:
        return epoch < self.init_epochs

    def plan(self, epoch: int) -> Plan:
        if self.in_init_stage(epoch):  # the paraphraser alone: only the teacher is tapped
            return Plan((), self.teacher_layers, stop_early=True, teacher_logits=False)
        return Plan(self.student_layers, self.teacher_layers, teacher_logits=self.alpha > 0)

    def feature_loss(self, student, teacher, ctx: Context) -> torch.Tensor:
        with torch.no_grad():
            factor_t = self.paraphraser.encoder(teacher[0])
        factor_s = self.translator(student[0])
        fs, ft = match_spatial(factor_s, factor_t)
        diff = factor(fs, self.p1) - factor(ft, self.p1)
        return diff.abs().pow(self.p2).mean()  # RepDistiller: |d| for p2 = 1, d^p2 otherwise

    def forward(self, ctx: Context) -> dict[str, torch.Tensor]:
        warn_if_first_stage_covers_training(
            self, ctx, "init_epochs", self.init_epochs, "the student"
        )
        if self.paraphraser is None:
            raise RuntimeError("FT.forward before build(): its paraphraser does not exist yet.")
        if self.in_init_stage(ctx.epoch):
            t = ctx.teacher_feats[self.teacher_layers[0]].float().detach()
            loss = F.mse_loss(self.paraphraser(t)[1], t)
            return {"loss": loss, "loss_rec": loss}
        return super().forward(ctx)

    def hparams(self) -> dict:
        return {**super().hparams(), "rate": self.rate, "init_epochs": self.init_epochs}
