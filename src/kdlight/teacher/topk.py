"""The top-k codec of stored logits: the K largest logits per row and the log-sum-exp of the rest."""

from __future__ import annotations

import math

import torch

TOPK_TABLES = ("topk_values", "topk_indices", "topk_lse_rest")


def topk_compress(logits: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(values, indices, lse_rest)`` of (N, C) logits: the k largest per row and the log-sum-exp
    of the other C - k (``k < C``)."""
    values, indices = logits.topk(k, dim=1)
    rest = logits.scatter(1, indices, float("-inf"))
    return values, indices, torch.logsumexp(rest, dim=1)


def topk_expand(
    values: torch.Tensor, indices: torch.Tensor, lse_rest: torch.Tensor, num_classes: int
) -> torch.Tensor:
    """(N, C) float32 logits rebuilt from :func:`topk_compress`: an approximation.

    The k kept classes get their logits; each of the other C - k gets
    ``lse_rest - log(C - k)``, so the rest's total mass exp(lse_rest) is spread evenly over
    them. The softmax of the result equals the teacher's on the kept classes (and in total on
    the rest) at temperature 1; at T != 1, and within the rest, it is approximate.
    """
    k = values.shape[1]
    fill = lse_rest.float() - math.log(num_classes - k)
    out = fill[:, None].expand(values.shape[0], num_classes).clone()
    return out.scatter_(1, indices.long(), values.float())
