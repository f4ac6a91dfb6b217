"""Multi-level logit distillation (Jin, Wang & Lin, CVPR 2023, "Multi-Level Logit Distillation").

The student's probabilities are aligned with the teacher's at three levels, each at several
temperatures T (the authors' code: 4, 3, 5, 2, 6), with P^T = softmax(Z / T) the (B, C)
batch of probabilities:

    instance  KD_T = T^2 * mean_i KL(P_t^T[i] || P_s^T[i])
    batch     BC_T = || P_t^T P_t^T' - P_s^T P_s^T' ||_F^2 / B     (B x B sample relations)
    class     CC_T = || P_t^T' P_t^T - P_s^T' P_s^T ||_F^2 / C     (C x C class relations)

Confidence masking. m_i = [max_c softmax(z_t)[i, c] <= median of those over the batch] and
k_c = [sum_i softmax(z_t)[i, c] <= median over classes]. The authors' code
(Jin-Ying/Multi-Level-Logit-Distillation, ``mdistiller/distillers/KD_ours.py``) multiplies the
batch-averaged KD_T and BC_T by m and CC_T by k and then averages, so each term is weighted by
the masked fraction mean(m) (about 1/2) or mean(k):

    weak = ce_weight * CE + kd_weight * sum_T (mean(m) * KD_T + mean(m) * BC_T + mean(k) * CC_T)

Their trainer feeds a weakly and a strongly augmented view of every image. The strong view adds
``ce_weight * CE + kd_weight * sum_T KD_T`` (unmasked; their BC/CC terms of the strong view are
computed but never used). kdlight trains on one view, which stands for both: with
``strong_branch`` (default) the loss is the authors' forward with ``image_strong = image_weak``,

    L = weak + strong_branch * (ce_weight * CE + kd_weight * sum_T KD_T)

Known deviation: the published CIFAR-100 results use 480 epochs and the extra strong
augmentation (AutoAugment-style), which kdlight does not reproduce; only the loss is.
``ce_weight = 0`` learns from the teacher alone (no labels needed).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from kdlight.errors import ConfigError
from kdlight.methods.base import Context, Method, check_range
from kdlight.methods.kd import soft_kl

#: the authors' temperatures: the configured KD temperature (4) and 3, 5, 2, 6
DEFAULT_TEMPERATURES = (4.0, 3.0, 5.0, 2.0, 6.0)


def batch_relation(p_s: torch.Tensor, p_t: torch.Tensor) -> torch.Tensor:
    """BC: ||P_t P_t' - P_s P_s'||_F^2 / B for (B, C) probabilities."""
    return (p_t @ p_t.t() - p_s @ p_s.t()).pow(2).sum() / p_s.shape[0]


def class_relation(p_s: torch.Tensor, p_t: torch.Tensor) -> torch.Tensor:
    """CC: ||P_t' P_t - P_s' P_s||_F^2 / C for (B, C) probabilities."""
    return (p_t.t() @ p_t - p_s.t() @ p_s).pow(2).sum() / p_s.shape[1]


def masked_fractions(teacher_logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean(m), mean(k)): the fractions of samples / classes at or below the median confidence.

    As the authors compute them (``np.percentile(., 50)``, linear interpolation, of each
    sample's top teacher probability and of each class's summed probability over the batch,
    T = 1), in float64: with a very sure teacher the confidences differ from 1 by less than
    float32 resolves, and float32 ties would change the masks. (B x C values: cheap; on MPS,
    which has no float64, on the CPU.)
    """
    with torch.no_grad():
        z = teacher_logits.detach()
        z = (z.cpu() if z.device.type == "mps" else z).double()
        p = F.softmax(z, dim=1)
        conf = p.max(dim=1).values
        m = (conf <= torch.quantile(conf, 0.5)).double().mean()
        per_class = p.sum(dim=0)
        k = (per_class <= torch.quantile(per_class, 0.5)).double().mean()
    return m.to(teacher_logits.device, torch.float32), k.to(teacher_logits.device, torch.float32)


def mlkd_terms(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperatures: Sequence[float]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(sum_T KD_T, sum_T BC_T, sum_T CC_T), unmasked."""
    z_s, z_t = student_logits.float(), teacher_logits.float()
    kd = bc = cc = z_s.new_zeros(())
    for t in temperatures:
        p_s, p_t = F.softmax(z_s / t, dim=1), F.softmax(z_t / t, dim=1)
        kd = kd + soft_kl(z_s, z_t, t)
        bc = bc + batch_relation(p_s, p_t)
        cc = cc + class_relation(p_s, p_t)
    return kd, bc, cc


class MLKD(Method):
    """Multi-level logit distillation; see the module docstring.

    Args:
        temperatures: the temperatures T > 0 every level is computed at (non-empty list).
        kd_weight: weight of the distillation terms, >= 0 (the code's ``KD.LOSS.KD_WEIGHT``).
        ce_weight: weight of cross-entropy with the labels, >= 0 (``KD.LOSS.CE_WEIGHT``).
        strong_branch: add the authors' strong-view terms computed on kdlight's one view.

    Returns ``{"loss", "loss_ce", "loss_kd", "loss_bc", "loss_cc", "mask_instance",
    "mask_class"}``: CE and the unmasked sums over T, and the masked fractions mean(m), mean(k).
    """

    def __init__(
        self,
        temperatures: Sequence[float] = DEFAULT_TEMPERATURES,
        kd_weight: float = 0.9,
        ce_weight: float = 0.1,
        strong_branch: bool = True,
    ) -> None:
        super().__init__()
        if isinstance(temperatures, (int, float, str)) or not len(temperatures):
            raise ConfigError(
                f"distill.temperatures={temperatures!r} is invalid; give a non-empty list of "
                "temperatures > 0."
            )
        self.temperatures = tuple(
            check_range("temperatures", t, 0.0, low_open=True) for t in temperatures
        )
        self.kd_weight = check_range("kd_weight", kd_weight, 0.0)
        self.ce_weight = check_range("ce_weight", ce_weight, 0.0)
        self.strong_branch = bool(strong_branch)
        self.needs_labels = self.ce_weight > 0.0

    def forward(self, ctx: Context) -> dict[str, torch.Tensor]:
        t_logits = ctx.teacher_logits.detach()
        kd, bc, cc = mlkd_terms(ctx.student_logits, t_logits, self.temperatures)
        m, k = masked_fractions(t_logits)
        strong = 1.0 if self.strong_branch else 0.0
        loss = self.kd_weight * ((m + strong) * kd + m * bc + k * cc)
        if ctx.labels is None:
            loss_ce = torch.zeros((), device=loss.device)
        else:
            loss_ce = F.cross_entropy(ctx.student_logits.float(), ctx.labels)
            loss = loss + self.ce_weight * (1.0 + strong) * loss_ce
        return {
            "loss": loss,
            "loss_ce": loss_ce,
            "loss_kd": kd,
            "loss_bc": bc,
            "loss_cc": cc,
            "mask_instance": m,
            "mask_class": k,
        }

    def hparams(self) -> dict[str, float]:
        return {"kd_weight": self.kd_weight, "ce_weight": self.ce_weight}

    def extra_repr(self) -> str:
        return (
            f"temperatures={list(self.temperatures)}, kd_weight={self.kd_weight}, "
            f"ce_weight={self.ce_weight}, strong_branch={self.strong_branch}"
        )
