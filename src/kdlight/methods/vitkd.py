"""ViTKD (Yang, Li, Zeng, Li, Yuan & Li, 2022, "ViTKD: Practical Guidelines for ViT feature
knowledge distillation", arXiv:2209.02432): mimic the teacher's shallow blocks, generate its deep
block from masked student tokens.

Features are the patch tokens (class and distillation tokens dropped) of three taps per network:
the outputs of the first two transformer blocks (shallow) and the final LayerNorm's output
(deep, the last block after the norm), as yzd-v/cls_KD's ViT backbone returns them. With
student tokens S (N x L x D_s) and teacher tokens T (N x L x D_t), B the batch size
(yzd-v/cls_KD ``mmcls/models/dis_losses/vitkd.py``, ``ViTKDLoss``)::

    mimic: L_mim = sum_{k=1,2} ||W_k S_k - T_k||^2 / B               (one Linear per shallow block)
    gen:   X = W S_deep; a random fraction lambda of X's tokens per sample is replaced by a learned
           mask token; G = conv3x3(ReLU(conv3x3(X as a sqrt(L) x sqrt(L) map)))
           L_gen = ||M * (G - T_deep)||^2 / B                         (M: 1 on the masked tokens)
    L = gamma * CE + alpha * KD + mimic_weight * L_mim + generation_weight / lambda * L_gen

The Linears exist only when D_s != D_t (the authors' ``align2`` and ``align``). Defaults: the
authors' ImageNet configs (DeiT III-S -> DeiT-T: ``alpha_vitkd 3e-5``, ``beta_vitkd 3e-6``,
``lambda_vitkd 0.5``) with the student's CE (weight 1); their "ViTKD+NKD" rows add a logit
term, here Hinton KD (``alpha``, off by default; the authors' ``KDLoss`` is the cross-entropy
form, the same gradient).

Teacher store: the form of each teacher tap is its patch tokens (``patch_tokens_skip<P>``), a
pure per-sample function of the tap, so the store keeps it when the raw maps fit its budget.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from kdlight.errors import ConfigError
from kdlight.methods.base import Context, Form, Method, check_range
from kdlight.methods.features import _layer_spec
from kdlight.methods.kd import soft_kl
from kdlight.methods.taps import find_module, plain, split_tap


def prefix_tokens(net: nn.Module) -> int:
    """How many tokens precede the patch tokens (timm's ``num_prefix_tokens``: 1, 2 for DeiT)."""
    net = plain(net)
    count = getattr(net, "num_prefix_tokens", None)
    if count is None:
        count = sum(getattr(net, t, None) is not None for t in ("cls_token", "dist_token"))
    return int(count)


def patch_tokens(x: torch.Tensor, skip: int) -> torch.Tensor:
    """(N, P + L, D) tokens -> the L patch tokens (N, L, D)."""
    return x[:, skip:]


def random_masking(x: torch.Tensor, mask_ratio: float):
    """MAE-style per-sample shuffle: (kept tokens, mask with 1 on removed ones, restore ids).

    The same draws as the authors' ``random_masking`` (one ``torch.rand(N, L)``).
    """
    n, length, d = x.shape
    len_keep = int(length * (1 - mask_ratio))
    noise = torch.rand(n, length, device=x.device)
    ids_shuffle = torch.argsort(noise, dim=1)
    ids_restore = torch.argsort(ids_shuffle, dim=1)
    ids_keep = ids_shuffle[:, :len_keep]
    x_keep = torch.gather(x, dim=1, index=ids_keep.unsqueeze(-1).repeat(1, 1, d))
    mask = torch.ones(n, length, device=x.device)
    mask[:, :len_keep] = 0
    mask = torch.gather(mask, dim=1, index=ids_restore)
    return x_keep, mask, ids_restore


class ViTKD(Method):
    """ViTKD: shallow mimicking + deep generation; see the module docstring.

    Args:
        mimic_weight: weight of the shallow mimicking term (authors' ``alpha_vitkd``, 3e-5).
        generation_weight: weight of the generation term (``beta_vitkd``, 3e-6).
        mask_ratio: fraction of deep tokens masked, in (0, 1) (``lambda_vitkd``, 0.5).
        gamma: weight of the student's CE, >= 0 (1).
        alpha: weight of Hinton KD at ``temperature``, >= 0 (0).
        student_layers / teacher_layers: ``auto`` (``blocks.0``, ``blocks.1``, ``norm``) or
            three ``named_modules()`` names: two shallow taps, then the deep one.

    Returns ``{"loss", "loss_mimic", "loss_gen", "loss_ce"[, "loss_kd"]}``, unweighted.
    """

    def __init__(
        self,
        mimic_weight: float = 3e-5,
        generation_weight: float = 3e-6,
        mask_ratio: float = 0.5,
        gamma: float = 1.0,
        alpha: float = 0.0,
        temperature: float = 1.0,
        student_layers: Any = "auto",
        teacher_layers: Any = "auto",
    ) -> None:
        super().__init__()
        self.mimic_weight = check_range("mimic_weight", mimic_weight, 0.0)
        self.generation_weight = check_range("generation_weight", generation_weight, 0.0)
        self.mask_ratio = check_range("mask_ratio", mask_ratio, 0.0, 1.0, low_open=True)
        if self.mask_ratio >= 1.0:
            raise ConfigError(f"distill.mask_ratio={mask_ratio} is invalid; it must be in (0, 1).")
        self.gamma = check_range("gamma", gamma, 0.0)
        self.alpha = check_range("alpha", alpha, 0.0)
        self.temperature = check_range("temperature", temperature, 0.0, low_open=True)
        self.needs_labels = self.gamma > 0
        self.specs = {
            "student_layers": _layer_spec("student_layers", student_layers),
            "teacher_layers": _layer_spec("teacher_layers", teacher_layers),
        }
        for key, spec in self.specs.items():
            if spec != "auto" and len(spec) != 3:
                raise ConfigError(
                    f"distill.{key}={list(spec)} is invalid; give auto or three named_modules() "
                    f"names: two shallow blocks, then the deep tap (e.g. [blocks.0, blocks.1, norm])."
                )
        self.skip = {"student": 1, "teacher": 1}
        self.align2: nn.ModuleList | None = None
        self.align: nn.Linear | None = None
        self.mask_token = nn.Parameter(torch.zeros(1, 1, 1))
        self.generation = nn.Sequential()

    # ---- layers --------------------------------------------------------------------------
    def resolve_layers(self, student: nn.Module, teacher: nn.Module) -> None:
        for side, net in (("student", student), ("teacher", teacher)):
            spec = self.specs[f"{side}_layers"]
            names = ("blocks.0", "blocks.1", "norm") if spec == "auto" else spec
            for name in names:
                find_module(net, split_tap(name)[0], f"{side} layer")
            setattr(self, f"{side}_layers", tuple(names))
            self.skip[side] = prefix_tokens(net)

    def build(self, student_feats, teacher_feats, num_classes) -> None:
        s = [patch_tokens(student_feats[n], self.skip["student"]) for n in self.student_layers]
        t = [patch_tokens(teacher_feats[n], self.skip["teacher"]) for n in self.teacher_layers]
        pairs = [(f, n, "student") for f, n in zip(s, self.student_layers, strict=True)]
        pairs += [(f, n, "teacher") for f, n in zip(t, self.teacher_layers, strict=True)]
        for f, name, side in pairs:
            if f.dim() != 3:
                raise ConfigError(
                    f"distill=vitkd needs (N, tokens, D) transformer features but the {side} layer "
                    f"{name!r} gives shape {tuple(f.shape)}; use ViT networks (e.g. "
                    f"model@student=vit_cifar_tiny) or name their blocks in distill.{side}_layers."
                )
        length = t[2].shape[1]
        if s[2].shape[1] != length or s[0].shape[1] != t[0].shape[1] or math.isqrt(length) ** 2 != length:  # fmt: skip
            raise ConfigError(
                f"distill=vitkd needs the same square number of patch tokens in student and teacher; "
                f"they have {s[2].shape[1]} and {length}: give both the same img_size and patch_size."
            )
        d_s, d_t = s[2].shape[-1], t[2].shape[-1]
        if d_s != d_t:
            self.align2 = nn.ModuleList(nn.Linear(d_s, d_t) for _ in range(2))
            self.align = nn.Linear(d_s, d_t)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, d_t))
        self.generation = nn.Sequential(
            nn.Conv2d(d_t, d_t, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(d_t, d_t, kernel_size=3, padding=1),
        )

    def teacher_forms(self) -> dict[str, Form]:
        skip = self.skip["teacher"]
        form = Form(f"patch_tokens_skip{skip}", functools.partial(patch_tokens, skip=skip))
        return dict.fromkeys(self.teacher_layers, form)

    # ---- loss ----------------------------------------------------------------------------
    def mimic(self, low_s: list[torch.Tensor], low_t: list[torch.Tensor]) -> torch.Tensor:
        if self.align2 is not None:
            low_s = [self.align2[i](x) for i, x in enumerate(low_s)]
        total = sum(F.mse_loss(a, b, reduction="sum") for a, b in zip(low_s, low_t, strict=True))
        return total / low_s[0].shape[0]

    def generate(self, high_s: torch.Tensor, high_t: torch.Tensor) -> torch.Tensor:
        x = self.align(high_s) if self.align is not None else high_s
        n, length, d = x.shape
        x, mask, ids_restore = random_masking(x, self.mask_ratio)
        x = torch.cat([x, self.mask_token.repeat(n, length - x.shape[1], 1)], dim=1)
        x = torch.gather(x, dim=1, index=ids_restore.unsqueeze(-1).repeat(1, 1, d))
        hw = math.isqrt(length)
        x = self.generation(x.reshape(n, hw, hw, d).permute(0, 3, 1, 2)).flatten(2).transpose(1, 2)
        mask = mask.unsqueeze(-1)
        return F.mse_loss(x * mask, high_t * mask, reduction="sum") / n

    def forward(self, ctx: Context) -> dict[str, torch.Tensor]:
        s = [patch_tokens(ctx.student_feats[n].float(), self.skip["student"]) for n in self.student_layers]  # fmt: skip
        t = [ctx.teacher_feats[n].float().detach() for n in self.teacher_layers]  # their form
        terms = {"loss_mimic": self.mimic(s[:2], t[:2]), "loss_gen": self.generate(s[2], t[2])}
        loss = self.mimic_weight * terms["loss_mimic"]
        loss = loss + self.generation_weight / self.mask_ratio * terms["loss_gen"]
        if self.gamma > 0:
            terms["loss_ce"] = F.cross_entropy(ctx.student_logits.float(), ctx.labels)
            loss = loss + self.gamma * terms["loss_ce"]
        if self.alpha > 0:
            terms["loss_kd"] = soft_kl(ctx.student_logits, ctx.teacher_logits, self.temperature)
            loss = loss + self.alpha * terms["loss_kd"]
        return {"loss": loss, **terms}

    def hparams(self) -> dict[str, Any]:
        return {
            "mimic_weight": self.mimic_weight,
            "generation_weight": self.generation_weight,
            "mask_ratio": self.mask_ratio,
            "alpha": self.alpha,
        }
