"""OFA-KD (Hao, Guo, Chen, Han, Zhang, Xu & Wang, NeurIPS 2023, "One-for-All: Bridge the Gap
Between Heterogeneous Architectures in Knowledge Distillation").

Each tapped student stage gets its own branch that projects the stage's features into the logit
space; every branch and the student's own logits learn from the teacher's logits with the OFA
loss, which raises the target class's teacher probability to the power eps (Hao840/OFAKD
``distillers/ofa.py``)::

    p_t = softmax(z_t / T), p_s = softmax(z_s / T), m = one_hot(y)
    OFA(z_s, z_t, y) = mean over the batch of  - sum_c ((p_t + m)^eps - m)_c * log p_s,c
    L = gt_weight * CE_ls(z, y) + kd_weight * OFA(z, z_t, y; eps_last)
        + ofa_weight * sum_k OFA(branch_k(F_k), z_t, y; eps_k)

(for eps = 1 this is CE with the teacher's soft targets; eps > 1 shrinks the target class's
weight when the teacher is unsure of it.) The branches, as the authors build them, where S is
the number of tapped stages (their 4) and D = max(student, teacher penultimate width):

- CNN stage k of S, (N, C, H, W): S - k depthwise-separable stride-2 blocks (channels doubling,
  the last to D; a 1x1 conv to D for the last stage), global average pooling, a Linear to classes.
- ViT stage k, (N, P + L, D_s) tokens: log2(sqrt(L) / 7) patch-merging steps (none at 8 x 8
  tokens), max(S - k, 1) transformer blocks of width D_s with 4 heads, the class token, a Linear.

``auto`` stages: a CNN's declared stages (``feature_info``); for a ViT, the blocks at the
authors' depths 2/12, 4/12, 10/12, 12/12 (blocks 1, 3, 9, 11 of 12). Works CNN teacher -> ViT
student and ViT teacher -> CNN student: the teacher contributes its logits only (the store
serves them). Defaults: OFAKD's ``train.py`` (eps 1, T 1, every loss weight 1) and its CIFAR
configs' label smoothing 0.1.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from omegaconf import ListConfig
from timm.layers import trunc_normal_
from timm.models.vision_transformer import Block
from torch import nn

from kdlight.errors import ConfigError
from kdlight.methods.base import Context, Method, check_range
from kdlight.methods.features import _layer_spec, stage_layers
from kdlight.methods.taps import find_module, plain, split_tap

#: the authors' ViT stages: the outputs of blocks 2, 4, 10 and 12 of 12 (1-based)
VIT_DEPTHS = (2, 4, 10, 12)
FINAL_PATCH_GRID = 7  # the authors' branches merge ViT tokens down to about 7 x 7


def ofa_loss(
    student: torch.Tensor, teacher: torch.Tensor, target_mask: torch.Tensor, eps: float, temperature: float
) -> torch.Tensor:  # fmt: skip
    """The OFA loss; see the module docstring (log p_s through log_softmax: the same value)."""
    p_t = F.softmax(teacher.float() / temperature, dim=1)
    log_p_s = F.log_softmax(student.float() / temperature, dim=1)
    prod = (p_t + target_mask) ** eps
    return torch.sum(-(prod - target_mask) * log_p_s, dim=-1).mean()


def is_transformer(net: nn.Module) -> bool:
    return hasattr(plain(net), "patch_embed") and hasattr(plain(net), "blocks")


def penultimate_width(net: nn.Module, role: str) -> int:
    """The width of the feature the classifier reads (OFAKD's ``stage_info(-1)``)."""
    width = getattr(plain(net), "num_features", None)
    if isinstance(width, int) and not isinstance(width, bool):
        return width
    linears = [m for m in plain(net).modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ConfigError(f"distill=ofa found no nn.Linear classifier in the {role} {type(plain(net)).__name__}.")  # fmt: skip
    return linears[-1].in_features


class SepConv(nn.Module):
    """Depthwise-separable stride-2 block (the authors' ``SepConv``)."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.op = nn.Sequential(
            nn.Conv2d(c_in, c_in, 3, 2, 1, groups=c_in, bias=False),
            nn.Conv2d(c_in, c_in, 1, bias=False),
            nn.BatchNorm2d(c_in),
            nn.ReLU(inplace=False),
            nn.Conv2d(c_in, c_in, 3, 1, 1, groups=c_in, bias=False),
            nn.Conv2d(c_in, c_out, 1, bias=False),
            nn.BatchNorm2d(c_out),
            nn.ReLU(inplace=False),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x)


class PatchMerging(nn.Module):
    """2 x 2 neighbouring tokens concatenated, LayerNorm, Linear (Swin's; the authors' copy)."""

    def __init__(self, grid: int, dim: int, out_dim: int, act: type[nn.Module]) -> None:
        super().__init__()
        self.grid = grid
        self.norm = nn.LayerNorm(4 * dim)
        self.reduction = nn.Linear(4 * dim, out_dim, bias=False)
        self.act = act()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, _, c = x.shape
        x = x.view(n, self.grid, self.grid, c)
        x = torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], -1)
        return self.act(self.reduction(self.norm(x.view(n, -1, 4 * c))))


class TokenContext(nn.Module):
    """Apply ``fn`` to the patch tokens only; the ``num`` prefix tokens stay in front."""

    def __init__(self, num: int, fn: nn.Module) -> None:
        super().__init__()
        self.num = num
        self.fn = fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x[:, : self.num], self.fn(x[:, self.num :])], dim=1)


class Pool(nn.Module):
    """The branch's feature: the class token (the first) if there is one, else the token mean."""

    def __init__(self, has_token: bool) -> None:
        super().__init__()
        self.has_token = has_token

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, 0] if self.has_token else x.mean(1)


def init_weights(module: nn.Module) -> None:
    """The authors' ``init_weights`` of the branches."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def cnn_branch(k: int, stages: int, channels: int, width: int, classes: int) -> nn.Sequential:
    if k == stages:
        down = [nn.Conv2d(channels, width, 1, 1, 0)]
    else:
        down, c = [], channels
        for i in range(stages - k):
            down.append(SepConv(c, width if i == stages - k - 1 else c * 2))
            c *= 2
    return nn.Sequential(*down, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, classes))


def vit_branch(k: int, stages: int, tokens: int, prefix: int, dim: int, width: int, classes: int):
    grid = math.isqrt(tokens)
    merges = max(int(math.log2(grid / FINAL_PATCH_GRID)), 0)
    mergers = [
        PatchMerging(grid // 2**i, dim if i == 0 else width, width,
                     nn.GELU if i == 0 or i != merges - 1 else nn.Identity)
        for i in range(merges)
    ]  # fmt: skip
    if merges == 0 and dim != width:
        raise ConfigError(f"distill=ofa: the student's tokens have width {dim} but its penultimate feature {width}; name blocks of that width in distill.student_layers.")  # fmt: skip
    blocks = [Block(dim=width, num_heads=4) for _ in range(max(stages - k, 1))]
    return nn.Sequential(
        TokenContext(prefix, nn.Sequential(*mergers)),
        nn.Sequential(*blocks),
        Pool(prefix > 0),
        nn.Linear(width, classes),
    )


class OFA(Method):
    """OFA-KD; see the module docstring.

    Args:
        eps: the exponent on the target class, one number or one per stage plus one for the
            logits (last), each > 0 (1; the authors' ImageNet CNN students 1.5).
        temperature: T > 0 (1).
        ofa_weight / kd_weight / gt_weight: weights of the branches' sum, the student logits'
            OFA term and its CE, >= 0 (1 each).
        label_smoothing: of the CE, in [0, 1) (the authors' configs: 0.1).
        student_layers: ``auto`` or a list of ``named_modules()`` names, shallow to deep.

    Returns ``{"loss", "loss_ce", "loss_kd", "loss_ofa"}`` (unweighted).
    """

    def __init__(
        self,
        eps: Any = 1.0,
        temperature: float = 1.0,
        ofa_weight: float = 1.0,
        kd_weight: float = 1.0,
        gt_weight: float = 1.0,
        label_smoothing: float = 0.1,
        student_layers: Any = "auto",
    ) -> None:
        super().__init__()
        values = list(eps) if isinstance(eps, (list, tuple, ListConfig)) else [eps]
        self.eps = [check_range("eps", v, 0.0, low_open=True) for v in values]
        self.temperature = check_range("temperature", temperature, 0.0, low_open=True)
        self.ofa_weight = check_range("ofa_weight", ofa_weight, 0.0)
        self.kd_weight = check_range("kd_weight", kd_weight, 0.0)
        self.gt_weight = check_range("gt_weight", gt_weight, 0.0)
        self.label_smoothing = check_range("label_smoothing", label_smoothing, 0.0, 0.999)
        self.spec = _layer_spec("student_layers", student_layers)
        self.projector = nn.ModuleDict()
        self.prefix = 0
        self.widths = (0, 0)

    def resolve_layers(self, student: nn.Module, teacher: nn.Module) -> None:
        if self.spec == "auto":
            names = stage_layers(student, "student")
            if is_transformer(student):
                d = len(names)
                picked = sorted({max(round(f * d / 12), 1) - 1 for f in VIT_DEPTHS})
                names = tuple(names[i] for i in picked)
        else:
            names = self.spec
        for name in names:
            find_module(student, split_tap(name)[0], "student layer")
        if len(self.eps) == 1:
            self.eps = self.eps * (len(names) + 1)
        if len(self.eps) != len(names) + 1:
            raise ConfigError(
                f"distill.eps={self.eps} is invalid; give one number or {len(names) + 1} (one per "
                f"student layer {list(names)}, then one for the logits)."
            )
        self.student_layers = tuple(names)
        self.prefix = int(getattr(plain(student), "num_prefix_tokens", 0) or 0)
        self.widths = (penultimate_width(student, "student"), penultimate_width(teacher, "teacher"))

    def build(self, student_feats, teacher_feats, num_classes) -> None:
        stages = len(self.student_layers)
        width = max(self.widths)
        for k, name in enumerate(self.student_layers, start=1):
            f = student_feats[name]
            if f.dim() == 4:
                branch = cnn_branch(k, stages, f.shape[1], width, num_classes)
            elif f.dim() == 3:
                tokens = f.shape[1] - self.prefix
                branch = vit_branch(k, stages, tokens, self.prefix, f.shape[2], self.widths[0], num_classes)  # fmt: skip
            else:
                raise ConfigError(
                    f"distill=ofa needs (N, C, H, W) maps or (N, tokens, D) tokens but the student "
                    f"layer {name!r} gives shape {tuple(f.shape)}; name other layers in "
                    f"distill.student_layers."
                )
            self.projector[str(k)] = branch
        init_weights(self.projector)

    def forward(self, ctx: Context) -> dict[str, torch.Tensor]:
        logits = ctx.student_logits.float()
        teacher = ctx.teacher_logits.float().detach()
        mask = F.one_hot(ctx.labels, logits.shape[-1]).to(logits.dtype)
        loss_ofa = logits.new_zeros(())
        for k, name in enumerate(self.student_layers, start=1):
            head = self.projector[str(k)](ctx.student_feats[name].float())
            loss_ofa = loss_ofa + ofa_loss(head, teacher, mask, self.eps[k - 1], self.temperature)
        loss_kd = ofa_loss(logits, teacher, mask, self.eps[-1], self.temperature)
        loss_ce = F.cross_entropy(logits, ctx.labels, label_smoothing=self.label_smoothing)
        loss = self.gt_weight * loss_ce + self.kd_weight * loss_kd + self.ofa_weight * loss_ofa
        return {"loss": loss, "loss_ce": loss_ce, "loss_kd": loss_kd, "loss_ofa": loss_ofa}

    def hparams(self) -> dict[str, Any]:
        return {"eps": self.eps[-1], "temperature": self.temperature, "ofa_weight": self.ofa_weight}
