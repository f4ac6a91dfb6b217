"""Contrastive representation distillation (Tian, Krishnan & Isola, ICLR 2020, "Contrastive
Representation Distillation"), with the memory bank and NCE loss of the authors' code
(HobbitLong/RepDistiller ``crd/``).

Linear heads map the penultimate features to unit vectors v_s = g_s(f_s), v_t = g_t(f_t) in
R^d (d = 128). Two memory banks hold one unit vector per training sample, m_s[i] and m_t[i]
(buffers, indexed by the sample index ``ctx.idx``, so they follow a sample whatever the
batch order). For sample i with K negatives j_1..j_K (other training samples; by default of
another class, RepDistiller's "exact" sampling) and N training samples:

    h_t(i, j) = exp(m_s[j] . v_t(i) / tau) / Z_t,   h_s(i, j) = exp(m_t[j] . v_s(i) / tau) / Z_s
    L_NCE(h) = -(1/B) sum_i [ log(h(i, i) / (h(i, i) + K/N))
                              + sum_k log((K/N) / (h(i, j_k) + K/N)) ]         (paper eq. 18)
    L_CRD = L_NCE(h_s) + L_NCE(h_t)

(each ratio's denominator gets + 1e-7, as in the code). Z_s, Z_t are fixed at the first step
to mean(exp(.)) * N of that step (the code's normalisation constants). After each step the
banks move towards the batch: m[i] <- normalise(momentum * m[i] + (1 - momentum) * v(i)).
Defaults: K 16384, tau 0.07, momentum 0.5, d 128, beta 0.8 (RepDistiller, mdistiller).

Under DDP (a ``torch.distributed`` process group of W > 1 ranks, e.g. ``trainer=ddp`` /
``ddp_cpu``) every step all-gathers the sample indices and embeddings of every rank's batch
(in rank order) and moves the banks towards all of them, so every rank holds the same banks,
equal to those of one process training on the union of the ranks' batches. Z_s, Z_t are
averaged over the union of the first step's batches. The negatives are drawn for the union
batch, by each rank from its own generator, and each rank keeps the rows of its own anchors:
with equal generator states (Lightning's ``seed_everything`` seeds every rank alike) the
draws are identical on every rank and equal to one process's draw for the union batch; with
unequal states each rank's rows are still a valid draw from the shared banks. A sample in
two ranks' batches of one step (DistributedSampler's padding) moves its rows once, towards
the embedding of the lowest rank.
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from kdlight.errors import ConfigError
from kdlight.methods.base import EMBEDDING, Context, check_range
from kdlight.methods.features import FeatureKD, flat

NEGATIVES = ("other_class", "any")
EPS = 1e-7


def nce_loss(scores: torch.Tensor, num_data: int) -> torch.Tensor:
    """L_NCE of (B, K + 1) scores whose column 0 is the positive pair (paper eq. 18)."""
    k = scores.shape[1] - 1
    noise = k / float(num_data)
    log_pos = torch.log(scores[:, 0] / (scores[:, 0] + noise + EPS))
    log_neg = torch.log(noise / (scores[:, 1:] + noise + EPS))
    return -(log_pos.sum() + log_neg.sum()) / scores.shape[0]


#: The scores come from one (B, N) product while N <= PRODUCT_ROWS x (K + 1), else from gathered rows.
PRODUCT_ROWS = 8


def bank_scores(bank: torch.Tensor, v: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """(B, K + 1) dot products ``bank[rows[b, k]] . v[b]`` of a (N, d) bank and (B, d) vectors.

    Gathering the rows (RepDistiller's way) moves B x (K + 1) x d floats whatever N is: 1 GB a
    step at B 128, K 16384, d 128, for each bank. One product ``v @ bank.T`` and a gather of
    its (B, N) scores costs B x N x d multiply-adds instead, far cheaper per element. Measured
    on a 2-core AMD EPYC (one thread, the other core busy; B 128, K 16384, d 128, forward +
    backward): 16.8 s a call for the gather against 0.09 s for the product at N = 2,250
    (CIFAR-10 5%), 1.2 s at N = 45,000 and 4.7 s at N = 200,000. So the product is used while
    N <= ``PRODUCT_ROWS`` x (K + 1) (131,080 at K 16384: CIFAR, Tiny-ImageNet), the gather
    beyond (ImageNet). Both give the same scores up to float rounding.
    """
    if bank.shape[0] <= PRODUCT_ROWS * rows.shape[1]:
        # a copy (N x d): autograd keeps it, and the step moves the bank in place afterwards
        return (v @ bank.clone().T).gather(1, rows)
    return torch.bmm(bank[rows], v[:, :, None]).squeeze(2)


def _world() -> tuple[int, int]:
    """(rank, world size) of the default process group; (0, 1) without one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def gather_rows(x: torch.Tensor, world: int) -> tuple[torch.Tensor, list[int]]:
    """Every rank's ``x`` (N_r, ...) concatenated in rank order, and the N_r (ranks may differ)."""
    n = torch.tensor([x.shape[0]], device=x.device)
    sizes = [torch.zeros_like(n) for _ in range(world)]
    dist.all_gather(sizes, n)
    counts = [int(c) for c in sizes]
    padded = x.new_zeros((max(counts), *x.shape[1:]))
    padded[: x.shape[0]] = x
    parts = [torch.zeros_like(padded) for _ in range(world)]
    dist.all_gather(parts, padded)
    return torch.cat([p[:c] for p, c in zip(parts, counts, strict=True)]), counts


def _first_occurrences(pos: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The distinct values of ``pos`` and, for each, the index of its first occurrence."""
    unique, inverse = torch.unique(pos, return_inverse=True)
    order = torch.arange(pos.numel(), device=pos.device)
    first = torch.full_like(unique, pos.numel()).scatter_reduce_(0, inverse, order, "amin")
    return unique, first


class CRD(FeatureKD):
    """Contrastive representation distillation; see the module docstring.

    Args:
        feat_dim: width d of the two embedding heads (128).
        nce_k: negatives per sample, K >= 1 (16384; drawn with replacement).
        nce_t: temperature tau > 0 (0.07).
        nce_m: memory momentum in [0, 1) (0.5).
        negatives: ``other_class`` (negatives of another label: needs labels) or ``any``
            (any other training sample: for unlabeled data).
        beta, gamma, alpha, temperature, student_layers, teacher_layers: see
            :class:`kdlight.methods.features.FeatureKD` (``auto``: the penultimate features).

    Returns ``{"loss", "loss_crd", "loss_ce"[, "loss_kd"]}``; the terms are unweighted.
    """

    layer_kind = "penultimate"
    term = "loss_crd"
    teacher_form = EMBEDDING  # the store keeps the (N, D) embedding

    def __init__(
        self,
        feat_dim: int = 128,
        nce_k: int = 16384,
        nce_t: float = 0.07,
        nce_m: float = 0.5,
        negatives: str = "other_class",
        beta: float = 0.8,
        **kwargs,
    ) -> None:
        super().__init__(beta, **kwargs)
        for name, value in (("feat_dim", feat_dim), ("nce_k", nce_k)):
            if int(value) != value or int(value) < 1:
                raise ConfigError(f"distill.{name}={value} is invalid; it must be an integer >= 1.")
        self.feat_dim, self.nce_k = int(feat_dim), int(nce_k)
        self.nce_t = check_range("nce_t", nce_t, 0.0, low_open=True)
        self.nce_m = check_range("nce_m", nce_m, 0.0, 1.0)
        if self.nce_m == 1.0:
            raise ConfigError("distill.nce_m=1.0 is invalid; it must be in [0, 1).")
        if negatives not in NEGATIVES:
            raise ConfigError(
                f"distill.negatives={negatives!r} is invalid; valid values are {', '.join(NEGATIVES)}."
            )
        self.negatives = negatives
        self.needs_labels = self.needs_labels or negatives == "other_class"
        self._rows: tuple[int, torch.Tensor, torch.Tensor | None] | None = None
        self.embed_s: nn.Module | None = None
        self.embed_t: nn.Module | None = None

    def bind_data(self, num_rows, train_idx, train_labels) -> None:
        if self.negatives == "other_class" and train_labels is None:
            raise ConfigError(
                "distill.negatives=other_class draws negatives by label but the training data is "
                "unlabeled; set distill.negatives=any."
            )
        self._rows = (int(num_rows), train_idx.long().cpu(), train_labels)

    def build_heads(self, student, teacher) -> None:
        if self._rows is None:
            raise RuntimeError(
                "CRD needs the training rows before build(): fit with a kdlight data module or "
                "call bind_data(num_rows, train_idx, train_labels) first."
            )
        num_rows, train_idx, labels = self._rows
        n = train_idx.numel()
        if self.negatives == "other_class":
            # bank positions sorted by class: the negatives of a sample are the positions outside
            # its class's block [start, start + count)
            labels = labels.long().cpu()
            order = torch.sort(labels, stable=True).indices
            sorted_labels = labels[order]
            counts = torch.bincount(sorted_labels)
            starts = torch.cumsum(counts, 0) - counts
            start, count = starts[sorted_labels], counts[sorted_labels]
            if int(count.max()) >= n:
                raise ConfigError(
                    "distill.negatives=other_class needs two or more classes in the training "
                    "set; set distill.negatives=any."
                )
        else:
            order = torch.arange(n)
            start, count = torch.arange(n), torch.ones(n, dtype=torch.long)
            if n < 2:
                raise ConfigError("distill=crd needs at least two training samples.")
        position = torch.full((num_rows,), -1, dtype=torch.long)
        position[train_idx[order]] = torch.arange(n)
        self.register_buffer("position", position)
        self.register_buffer("block_start", start)
        self.register_buffer("block_count", count)
        stdv = 1.0 / math.sqrt(self.feat_dim / 3)
        for side in ("memory_s", "memory_t"):
            self.register_buffer(side, torch.rand(n, self.feat_dim).mul_(2 * stdv).sub_(stdv))
        self.register_buffer("z_s", torch.tensor(-1.0))
        self.register_buffer("z_t", torch.tensor(-1.0))
        self.embed_s = nn.Linear(flat(student[0]).shape[1], self.feat_dim)
        self.embed_t = nn.Linear(flat(teacher[0]).shape[1], self.feat_dim)
        if len(student) != 1:
            raise ConfigError(
                f"distill=crd contrasts one pair of layers but distill.student_layers names "
                f"{len(student)}; give one student and one teacher layer."
            )

    @property
    def num_data(self) -> int:
        return int(self.memory_s.shape[0])

    def sample(self, pos: torch.Tensor) -> torch.Tensor:
        """(B, K + 1) bank positions: each sample's own, then K negatives outside its block."""
        start, count = self.block_start[pos, None], self.block_count[pos, None]
        u = torch.rand(pos.shape[0], self.nce_k, device=pos.device)
        r = (u * (self.num_data - count)).long().clamp_(max=self.num_data - count - 1)
        neg = r + count * (r >= start)
        return torch.cat([pos[:, None], neg], dim=1)

    def feature_loss(self, student, teacher, ctx: Context) -> torch.Tensor:
        pos = self.position[ctx.idx.to(self.position.device)]
        if bool((pos < 0).any()):
            raise RuntimeError("a training index is not in CRD's memory bank (not a training row)")
        v_s = F.normalize(self.embed_s(flat(student[0])), dim=1)
        v_t = F.normalize(self.embed_t(flat(teacher[0])), dim=1)
        rank, world = _world()
        if world > 1:  # the union batch, in rank order: float64 holds positions < 2^53 exactly
            packed = torch.cat(
                [pos[:, None].double(), v_s.detach().double(), v_t.detach().double()], 1
            )
            union, counts = gather_rows(packed, world)
            start = sum(counts[:rank])
            rows = self.sample(union[:, 0].long())[start : start + pos.shape[0]]
        else:
            rows = self.sample(pos)
        out_s = torch.exp(bank_scores(self.memory_t, v_s, rows) / self.nce_t)
        out_t = torch.exp(bank_scores(self.memory_s, v_t, rows) / self.nce_t)
        with torch.no_grad():
            if self.z_s < 0 or self.z_t < 0:
                if world > 1:  # the mean over the union of the ranks' first batches
                    sums = torch.stack([out_s.sum(), out_t.sum()]).double()
                    sums = torch.cat([sums, sums.new_tensor([out_s.numel(), out_t.numel()])])
                    dist.all_reduce(sums)
                    mean_s, mean_t = (sums[0] / sums[2]).item(), (sums[1] / sums[3]).item()
                else:
                    mean_s, mean_t = out_s.mean().item(), out_t.mean().item()
                if self.z_s < 0:
                    self.z_s.fill_(mean_s * self.num_data)
                if self.z_t < 0:
                    self.z_t.fill_(mean_t * self.num_data)
        loss = nce_loss(out_s / self.z_s, self.num_data) + nce_loss(out_t / self.z_t, self.num_data)
        with torch.no_grad():
            if world > 1:
                pos, first = _first_occurrences(union[:, 0].long())
                d = self.feat_dim
                v_s, v_t = (
                    union[first, 1 : 1 + d].to(v_s.dtype),
                    union[first, 1 + d :].to(v_t.dtype),
                )
            for bank, v in ((self.memory_s, v_s), (self.memory_t, v_t)):
                moved = bank[pos] * self.nce_m + v.detach() * (1.0 - self.nce_m)
                bank[pos] = F.normalize(moved, dim=1)
        return loss
