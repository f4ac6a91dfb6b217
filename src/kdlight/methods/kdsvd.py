"""SVD-based self-supervised KD (Lee, Kim & Song, ECCV 2018, "Self-supervised Knowledge
Distillation Using Singular Value Decomposition").

Each stage map (N, C, H, W) is read per sample as the (H*W, C) matrix X = U S V^T. Its first
singular vectors summarise the map: the teacher keeps k, the student k + 3, each column
L2-normalised over the C channels, and the teacher's k singular values are L2-normalised too
(s_t). The student's vectors are aligned to the teacher's (for each teacher vector, the student
vector of largest |cosine|, with its sign) and both sides are scaled by s_t:

    v_t = V_t[:, :k] * s_t,        v_s = align(V_s[:, :k+3], V_t[:, :k]) * s_t       (C, k)

Consecutive stages l-1, l are related by an RBF of every channel pair (per column j):

    R(v^l, v^{l-1})[a, b, j] = exp(-(v^l[a, j] - v^{l-1}[b, j])^2 / 8)
    L_SVD = sum_{l >= 1} sum over a, b, j of (R_s^l - R_t^l)^2, averaged over the batch

(non-finite entries count 0), as RepDistiller's ``KDSVD`` (port of the authors' TensorFlow
code). The paired layers need equal channel counts (R_s and R_t are C x C' matrices).
``k = 1`` and ``beta = 1`` are mdistiller's ``CFG.KDSVD`` defaults; layers ``auto`` are the
stage outputs (``feat[1:-1]``).

Teacher store: the form of each teacher layer is v_t itself (``svd_k<k>``: C * k numbers per
sample), a per-sample function of the map. Singular vectors are defined up to sign: which sign
LAPACK / cuSOLVER returns is the method's (and its references') arbitrary choice.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

from kdlight.errors import ConfigError
from kdlight.methods.base import Context, Form
from kdlight.methods.features import FeatureKD


def _finite(x: torch.Tensor) -> torch.Tensor:
    return torch.where(torch.isfinite(x), x, torch.zeros_like(x))


def singular(feature: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(V[:, :, :n] normalised over channels (N, C, n), S[:, :n] normalised (N, n))."""
    x = feature.reshape(feature.shape[0], feature.shape[1], -1).transpose(-2, -1)
    _, s, vh = torch.linalg.svd(x, full_matrices=False)
    v = _finite(vh.transpose(-2, -1))
    s = _finite(s)
    return F.normalize(v[:, :, :n], dim=1), F.normalize(s[:, :n], dim=1)


def teacher_vectors(feature: torch.Tensor, k: int) -> torch.Tensor:
    """v_t = V_t[:, :, :k] * s_t, (N, C, k): the teacher's form."""
    v, s = singular(feature.float(), k)
    return v * s.unsqueeze(1)


def align(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """For each column of b (N, C, k), the column of a (N, C, m) of largest |cosine|, signed."""
    cosine = torch.matmul(a.transpose(-2, -1), b)
    best = cosine.abs().amax(dim=1, keepdim=True)
    mask = torch.where(best == cosine.abs(), torch.sign(cosine), torch.zeros_like(cosine))
    return torch.matmul(a, mask)


def rbf(v: torch.Tensor, prev: torch.Tensor) -> torch.Tensor:
    """exp(-(v[a, j] - prev[b, j])^2 / 8), (N, C, C', k)."""
    return torch.exp(-(v.unsqueeze(2) - prev.unsqueeze(1)).pow(2) / 8)


class KDSVD(FeatureKD):
    """SVD-based KD; see the module docstring.

    Args:
        k: singular vectors compared per layer, an integer >= 1 (1).
        beta, gamma, alpha, temperature, student_layers, teacher_layers: see
            :class:`kdlight.methods.features.FeatureKD` (``auto``: every stage output; >= 2).

    Returns ``{"loss", "loss_svd", "loss_ce"[, "loss_kd"]}``; the terms are unweighted.
    """

    term = "loss_svd"
    needs_maps = True

    def __init__(self, k: int = 1, beta: float = 1.0, **kwargs) -> None:
        super().__init__(beta, **kwargs)
        if int(k) != k or int(k) < 1:
            raise ConfigError(f"distill.k={k} is invalid; it must be an integer >= 1.")
        self.k = int(k)

    def build_heads(self, student, teacher) -> None:
        if len(student) < 2:
            raise ConfigError(
                f"distill=kdsvd relates consecutive layers and needs >= 2 per network but got "
                f"{list(self.student_layers)}; name more in distill.student_layers / "
                f"distill.teacher_layers."
            )
        for i, (s, t) in enumerate(zip(student, teacher, strict=True)):
            if s.shape[1] != t.shape[1]:
                raise ConfigError(
                    f"distill=kdsvd needs equal channel counts in paired layers but the student "
                    f"layer {self.student_layers[i]!r} has {s.shape[1]} and the teacher layer "
                    f"{self.teacher_layers[i]!r} {t.shape[1]}; pick networks or layers "
                    f"(distill.student_layers / distill.teacher_layers) with matching channels."
                )

    def teacher_forms(self) -> dict[str, Form]:
        fn = functools.partial(teacher_vectors, k=self.k)
        return {name: Form(f"svd_k{self.k}", fn) for name in self.teacher_layers}

    def feature_loss(self, student, teacher, ctx: Context) -> torch.Tensor:
        total = student[0].new_zeros(())
        prev_s = prev_t = None
        for fs, ft in zip(student, teacher, strict=True):
            v_t = teacher_vectors(ft, self.k) if ft.dim() == 4 else ft  # raw map or the form
            v_s, _ = singular(fs, self.k + 3)
            # v_t's columns are scaled by s_t > 0: the same alignment as the unscaled vectors
            s_t = v_t.norm(dim=1, keepdim=True)
            v_s = align(v_s, v_t) * s_t
            if prev_s is not None:
                diff = (rbf(v_s, prev_s) - rbf(v_t, prev_t)).pow(2)
                total = total + _finite(diff).sum() / fs.shape[0]
            prev_s, prev_t = v_s, v_t
        return total

    def hparams(self) -> dict:
        return {**super().hparams(), "k": self.k}
