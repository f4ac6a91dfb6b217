"""Scale decoupled distillation (Wei, Luo & Luo, CVPR 2024, "Scale Decoupled Distillation").

Both networks' last feature maps are average-pooled at several scales (M = [1, 2, 4]: the whole
map, its 2 x 2 and 4 x 4 regions; 21 regions), each network's own classifier is applied to every
region's pooled feature, and a logit loss is computed per (region, sample) row:

    z^r = fc(pool_r(F))     for each region r (fc: the network's classifier, with its bias)
    base = kd:  l_{r,i} = T^2 KL(softmax(z_t^{r,i} / T) || softmax(z_s^{r,i} / T))
    base = dkd: l_{r,i} = alpha * TCKD_{r,i} + beta * NCKD_{r,i}          (DKD per row)
    w_{r,i} = 2 where the teacher's region prediction is right and its global (1 x 1) one wrong
              or the reverse (complementary regions), else 1
    kd:  L = ce_weight * CE + kd_weight * sum_{r,i} w_{r,i} l_{r,i} / (R * B)
    dkd: L = ce_weight * CE + min((epoch + 1) / warmup, 1) * sum_{r,i} w_{r,i} l_{r,i} / (R * B)

following the authors' code (shicaiwei123/SDD-CVPR2024: ``mdistiller/distillers/KD.py``
``sdd_kd_loss``, ``SDD_DKD.py`` ``multi_dkd``, ``mdistiller/models/cifar/utils.py`` ``SPP``:
the map is pooled to the largest scale first and the smaller scales from that). Their SDD-KD
has no warm-up; SDD-DKD's counts mdistiller's epochs from 1 (kdlight's ``epoch + 1``).

Layers. ``auto`` taps each network's last stage (``feature_info``) and finds its classifier, the
``nn.Linear`` whose input is the penultimate tap; SDD needs that input to be the global average
of the map (checked on an example batch: a CIFAR ResNet, WRN, VGG, MobileNetV2, ShuffleNet; not
the 5-layer CNN, whose classifier reads a flattened map through another layer). The student's
classifier is the student's own (its gradient trains the student's fc); the teacher's is frozen
and its region logits are the teacher form the store keeps (R x C per sample). Neither is a
parameter of the method. The authors zero NaN KL entries and replace a non-finite loss by 0;
kdlight's terms stay finite (log-softmax throughout), so it does neither.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from kdlight.errors import ConfigError
from kdlight.methods.base import Context, Form, Method, check_range
from kdlight.methods.dkd import _binary_log_probs, _non_target_log_probs
from kdlight.methods.features import _layer_spec, penultimate_layer, stage_layers
from kdlight.methods.taps import find_module, plain, split_tap

BASES = ("kd", "dkd")
#: CFG.KD.LOSS.CE_WEIGHT and CFG.DKD.CE_WEIGHT of the authors' mdistiller config
DEFAULT_CE_WEIGHT = {"kd": 0.1, "dkd": 1.0}


def region_features(fmap: torch.Tensor, scales: Sequence[int]) -> torch.Tensor:
    """(N, C, R): the map average-pooled to each scale s (s * s regions, row-major), in order.

    The map is pooled to the largest scale first and every other scale from that (``SPP``).
    """
    top = F.adaptive_avg_pool2d(fmap, max(scales))
    pooled = [top if s == max(scales) else F.adaptive_avg_pool2d(top, s) for s in scales]
    return torch.cat([p.flatten(2) for p in pooled], dim=2)


def region_logits(fmap: torch.Tensor, fc: nn.Linear, scales: Sequence[int]) -> torch.Tensor:
    """(N, R, K): the classifier ``fc`` applied to every region's pooled feature."""
    feats = region_features(fmap, scales).transpose(1, 2)
    return F.linear(feats.to(fc.weight.dtype), fc.weight, fc.bias)


def region_weights(teacher: torch.Tensor, labels: torch.Tensor, scale_1: int = 0) -> torch.Tensor:
    """(N, R) weights: 2 where a region's and the global region's correctness differ, else 1."""
    right = teacher.argmax(dim=2) == labels[:, None]
    return 1.0 + (right != right[:, scale_1 : scale_1 + 1]).float()


def region_kd(s: torch.Tensor, t: torch.Tensor, temperature: float) -> torch.Tensor:
    """(rows,) T^2 KL(softmax(t / T) || softmax(s / T)) per row."""
    tt = float(temperature)
    log_s, log_t = F.log_softmax(s / tt, dim=1), F.log_softmax(t / tt, dim=1)
    return F.kl_div(log_s, log_t, reduction="none", log_target=True).sum(dim=1) * tt * tt


def region_dkd(
    s: torch.Tensor, t: torch.Tensor, y: torch.Tensor, temperature: float, alpha: float, beta: float
) -> torch.Tensor:
    """(rows,) alpha * TCKD + beta * NCKD per row, each T^2 * KL summed over classes."""
    tt = float(temperature)
    s, t = s / tt, t / tt

    def kl(a, b):
        return F.kl_div(a, b, reduction="none", log_target=True).sum(dim=1)

    tckd = kl(_binary_log_probs(s, y), _binary_log_probs(t, y))
    nckd = kl(_non_target_log_probs(s, y), _non_target_log_probs(t, y))
    return (alpha * tckd + beta * nckd) * tt * tt


def classifier(net: nn.Module, role: str) -> tuple[str, nn.Linear]:
    """(penultimate tap, the nn.Linear that reads it) of ``net``; ConfigError if not that form."""
    tap = penultimate_layer(net, role)
    name, is_input = split_tap(tap)
    module = find_module(net, name, f"{role} layer")
    if not (is_input and isinstance(module, nn.Linear)):
        raise ConfigError(
            f"distill=sdd applies the {role}'s classifier to pooled regions, but the {role} "
            f"{type(plain(net)).__name__}'s penultimate tap {tap!r} is not the input of an "
            "nn.Linear classifier; use a network whose classifier reads the pooled last map."
        )
    return tap, module


class SDD(Method):
    """Scale decoupled distillation on KD or DKD; see the module docstring.

    Args:
        base: ``kd`` or ``dkd``, the logit loss applied per region.
        scales: region grid sizes, a list of whole numbers >= 1 that contains 1 (default 1, 2, 4).
        temperature: softmax temperature T > 0.
        ce_weight: weight of cross-entropy with the labels, >= 0; None: 0.1 with kd, 1 with dkd.
        kd_weight: weight of the SDD term with ``base=kd``, >= 0.
        alpha / beta: DKD's TCKD / NCKD weights with ``base=dkd``, >= 0.
        warmup: DKD's warm-up epochs with ``base=dkd`` (0: none).
        complementary_weight: w of complementary regions, >= 0 (authors: 2).
        student_layers / teacher_layers: ``auto`` (last stage) or one map layer each.

    Returns ``{"loss", "loss_ce", "loss_sdd"}``, ``loss_sdd`` the weighted region sum
    before ``kd_weight`` / the warm-up.
    """

    needs_labels = True  # the region weights and DKD read the label

    def __init__(
        self,
        base: str = "kd",
        scales: Sequence[int] = (1, 2, 4),
        temperature: float = 4.0,
        ce_weight: float | None = None,
        kd_weight: float = 0.9,
        alpha: float = 1.0,
        beta: float = 8.0,
        warmup: int = 20,
        complementary_weight: float = 2.0,
        student_layers: Any = "auto",
        teacher_layers: Any = "auto",
    ) -> None:
        super().__init__()
        if base not in BASES:
            raise ConfigError(f"distill.base={base!r} is invalid; valid values are kd, dkd.")
        self.base = base
        bad = isinstance(scales, (str, int, float)) or not len(scales)
        if not bad:
            values = [check_range("scales", s, 1.0) for s in scales]
            bad = any(v != int(v) for v in values) or 1.0 not in values
        if bad:
            raise ConfigError(
                f"distill.scales={scales!r} is invalid; give a list of whole numbers >= 1 "
                "that contains 1 (e.g. [1, 2, 4])."
            )
        self.scales = tuple(sorted({int(v) for v in values}))
        self.temperature = check_range("temperature", temperature, 0.0, low_open=True)
        if ce_weight is None:  # the authors' CE weight of each base (mdistiller's CFG)
            ce_weight = DEFAULT_CE_WEIGHT[base]
        self.ce_weight = check_range("ce_weight", ce_weight, 0.0)
        self.kd_weight = check_range("kd_weight", kd_weight, 0.0)
        self.alpha = check_range("alpha", alpha, 0.0)
        self.beta = check_range("beta", beta, 0.0)
        self.warmup = int(check_range("warmup", warmup, 0.0))
        if self.warmup != float(warmup):
            raise ConfigError(
                f"distill.warmup={warmup} is invalid; it must be a whole number >= 0."
            )
        self.complementary_weight = check_range("complementary_weight", complementary_weight, 0.0)
        self.specs = {}
        for key, value in (("student_layers", student_layers), ("teacher_layers", teacher_layers)):
            spec = _layer_spec(key, value)
            if spec != "auto" and len(spec) != 1:
                raise ConfigError(
                    f"distill.{key}={list(spec)} is invalid; give auto or one feature map layer."
                )
            self.specs[key] = spec
        self._heads: dict[str, nn.Linear] = {}  # the networks' own classifiers, not parameters
        self._maps: dict[str, str] = {}

    # ---- layers --------------------------------------------------------------------------
    def resolve_layers(self, student: nn.Module, teacher: nn.Module) -> None:
        taps = {}
        for key, net, role in (
            ("student_layers", student, "student"),
            ("teacher_layers", teacher, "teacher"),
        ):
            spec = self.specs[key]
            fmap = stage_layers(net, role)[-1] if spec == "auto" else spec[0]
            find_module(net, split_tap(fmap)[0], f"{role} layer")
            tap, self._heads[role] = classifier(net, role)
            self._maps[role] = fmap
            taps[role] = (fmap, tap)  # the classifier's input too, to check it in build
        self.student_layers, self.teacher_layers = taps["student"], taps["teacher"]

    def build(self, student_feats, teacher_feats, num_classes: int) -> None:
        for role, feats, names in (
            ("student", student_feats, self.student_layers),
            ("teacher", teacher_feats, self.teacher_layers),
        ):
            fmap, vec = feats[names[0]], feats[names[1]]
            if fmap.dim() != 4:
                raise ConfigError(
                    f"distill=sdd needs an (N, C, H, W) map but the {role} layer {names[0]!r} "
                    f"gives shape {tuple(fmap.shape)}; name one in distill.{role}_layers."
                )
            pooled, vec = fmap.float().mean(dim=(2, 3)), vec.float().reshape(len(vec), -1)
            if pooled.shape != vec.shape or not torch.allclose(pooled, vec, rtol=1e-3, atol=1e-4):
                raise ConfigError(
                    f"distill=sdd needs the {role}'s classifier input {names[1]!r} to be the "
                    f"global average of its map {names[0]!r}, which it is not; name the map the "
                    f"classifier pools in distill.{role}_layers."
                )
        self.student_layers = (self._maps["student"],)
        self.teacher_layers = (self._maps["teacher"],)

    def teacher_forms(self) -> dict[str, Form]:
        head, scales = self._heads["teacher"], self.scales

        @torch.no_grad()
        def logits_per_region(fmap: torch.Tensor) -> torch.Tensor:
            return region_logits(fmap, head, scales)

        name = "sdd_logits_" + "_".join(str(s) for s in scales)
        return {self._maps["teacher"]: Form(name, logits_per_region)}

    # ---- loss ----------------------------------------------------------------------------
    def region_loss(self, s: torch.Tensor, t: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """sum_{r,i} w_{r,i} l_{r,i} / (R * B) for (B, R, K) student and teacher region logits."""
        b, r, k = s.shape
        w = region_weights(t, labels)  # scales are sorted: region 0 is the 1 x 1 one
        w = torch.where(w > 1.0, torch.full_like(w, self.complementary_weight), w)
        y = labels[:, None].expand(b, r).reshape(-1)
        s, t = s.reshape(b * r, k), t.reshape(b * r, k)
        if self.base == "kd":
            rows = region_kd(s, t, self.temperature)
        else:
            rows = region_dkd(s, t, y, self.temperature, self.alpha, self.beta)
        return (w.reshape(-1) * rows).sum() / (b * r)

    def forward(self, ctx: Context) -> dict[str, torch.Tensor]:
        fmap = ctx.student_feats[self.student_layers[0]]
        s = region_logits(fmap, self._heads["student"], self.scales).float()
        t = ctx.teacher_feats[self.teacher_layers[0]].float().detach()
        term = self.region_loss(s, t, ctx.labels)
        if self.base == "kd":
            weight = self.kd_weight
        else:
            weight = 1.0 if self.warmup == 0 else min((ctx.epoch + 1) / self.warmup, 1.0)
        loss_ce = F.cross_entropy(ctx.student_logits.float(), ctx.labels)
        loss = self.ce_weight * loss_ce + weight * term
        return {"loss": loss, "loss_ce": loss_ce, "loss_sdd": term}

    def hparams(self) -> dict[str, Any]:
        return {"base": self.base, "temperature": self.temperature}

    def extra_repr(self) -> str:
        return (
            f"base={self.base!r}, scales={list(self.scales)}, T={self.temperature}, "
            f"ce_weight={self.ce_weight}, kd_weight={self.kd_weight}, alpha={self.alpha}, "
            f"beta={self.beta}, warmup={self.warmup}, "
            f"complementary_weight={self.complementary_weight}"
        )
