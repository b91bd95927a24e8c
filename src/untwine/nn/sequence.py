"""Behaviour-sequence encoders: pooling, DIN attention and the Temporal Interest Module (TIM).

Every encoder maps a padded history to one vector per sample::

    behaviour  (B, L, E)   embedded behaviours (item and side-field embeddings concatenated), oldest first
    mask       (B, L)      True where a behaviour exists (padding is False)
    target     (B, E)      the candidate, embedded like a behaviour (attention encoders only)

A sample with an empty history encodes to zeros, never NaN.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from untwine.nn.mlp import MLP
from untwine.nn.numeric import MNSE


def masked_pool(behaviour: Tensor, mask: Tensor, pooling: str = "mean") -> Tensor:
    """Sum or mean of (B, L, E) over the positions where ``mask`` (B, L) is True -> (B, E)."""
    m = mask.unsqueeze(-1).to(behaviour.dtype)
    total = (behaviour * m).sum(dim=1)
    if pooling == "sum":
        return total
    return total / m.sum(dim=1).clamp_min(1.0)


def log_gap_boundaries(buckets: int, base: float = 2.0, unit: float = 1.0) -> Tensor:
    """Upper edges of the time-gap buckets: bucket k (1 <= k < buckets) holds gaps in
    (unit * (base^(k-1) - 1), unit * (base^k - 1)]; bucket 0 holds gap 0 (the target itself, and
    behaviours in the same second); the last bucket is open-ended. Float64: gaps are seconds over years."""
    k = torch.arange(buckets - 1, dtype=torch.float64)
    return unit * (base ** k - 1.0)


def gap_buckets(gap: Tensor, boundaries: Tensor) -> Tensor:
    """Bucket index (B, L) int64 of non-negative time gaps (negative gaps, clock skew, count as 0)."""
    return torch.bucketize(gap.clamp_min(0).to(torch.float64), boundaries, right=False)


def recency_positions(mask: Tensor) -> Tensor:
    """Relative position of each behaviour counted from the most recent (1) backwards; 0 on padding.

    Sequences are stored oldest first, so a behaviour's position is the number of behaviours at or
    after it (n - j for index j of a right-padded history of length n)."""
    m = mask.long()
    return m.flip(1).cumsum(1).flip(1) * m


class DINAttention(nn.Module):
    """Deep Interest Network's local activation unit (Zhou et al., KDD 2018).

    w_i = MLP([b_i, a, b_i - a, b_i * a]) with no softmax (weights stay unnormalised so the intensity
    of the interest is kept); u = sum_i w_i b_i over non-padded behaviours.
    """

    def __init__(self, dim: int, hidden: tuple[int, ...] = (80, 40)) -> None:
        super().__init__()
        self.score = MLP(4 * dim, hidden, out_dim=1)

    def weights(self, target: Tensor, behaviour: Tensor, mask: Tensor) -> Tensor:  # -> (B, L)
        a = target.unsqueeze(1).expand_as(behaviour)
        w = self.score(torch.cat([behaviour, a, behaviour - a, behaviour * a], dim=-1)).squeeze(-1)
        return w * mask.to(w.dtype)

    def forward(self, target: Tensor, behaviour: Tensor, mask: Tensor) -> Tensor:  # -> (B, E)
        return torch.einsum("bl,ble->be", self.weights(target, behaviour, mask), behaviour)


class TemporalInterest(nn.Module):
    """The Temporal Interest Module of TIN (Zhou et al., WWW 2024), as in SPEC.md 2.1.

    - Target-aware temporal encoding: p(k) is a learned vector per time-gap bucket k (or per recency
      position when there are no timestamps); b~_i = b_i (+) p(k_i), a~ = a (+) p(0), where (+) is a sum
      (``combine="sum"``, width E) or a concatenation (``"concat"``, width E + time_dim).
    - Target-aware attention: alpha_i = softmax_i(<W_q a~, W_k b~_i> / sqrt(d)) over non-padded items.
    - Target-aware representation: u = sum_i alpha_i (b~_i * a~) = (sum_i alpha_i b~_i) * a~ (a~ does not
      depend on i, so the product is taken once after the weighted sum).

    Args:
        dim: behaviour width E.
        positions: number of time buckets (or max_len + 1 recency positions).
        temporal: add the temporal encoding (False: the "without temporal encoding" ablation).
        target_aware: multiply by a~ (False: the "without target-aware representation" ablation).
        combine: ``"sum"`` or ``"concat"``.
        time_dim: width of p(.) when concatenated (E when summed).
        normalise: layer-normalise a~ and b~ (no affine part) before W_q and W_k, so the attention
            logits do not shrink with the embeddings' scale (values and the representation stay raw).
        keep_history: output [u; sum_i alpha_i b~_i] (width 2 d): the attended history itself beside the
            target-aware product, as the TIN authors' code feeds both to its MLP.
    """

    def __init__(self, dim: int, positions: int, temporal: bool = True, target_aware: bool = True,
                 combine: str = "sum", time_dim: int | None = None, normalise: bool = False,
                 keep_history: bool = False) -> None:
        super().__init__()
        if combine not in ("sum", "concat"):
            raise ValueError(f"combine must be 'sum' or 'concat', got {combine!r}")
        self.temporal, self.target_aware, self.combine = temporal, target_aware, combine
        t_dim = dim if combine == "sum" else (time_dim or dim)
        self.out_dim = dim + (t_dim if temporal and combine == "concat" else 0)
        self.time = nn.Embedding(positions, t_dim) if temporal else None
        if self.time is not None:
            nn.init.normal_(self.time.weight, std=0.01)
        self.query = nn.Linear(self.out_dim, self.out_dim, bias=False)
        self.key = nn.Linear(self.out_dim, self.out_dim, bias=False)
        self.normalise = normalise
        self.keep_history = keep_history and target_aware
        self.repr_dim = self.out_dim * (2 if self.keep_history else 1)

    def _with_time(self, x: Tensor, p: Tensor) -> Tensor:
        return x + p if self.combine == "sum" else torch.cat([x, p], dim=-1)

    def encode(self, target: Tensor, behaviour: Tensor, buckets: Tensor | None) -> tuple[Tensor, Tensor]:
        """(a~ (B, d), b~ (B, L, d))."""
        if self.time is None:
            return target, behaviour
        if buckets is None:
            raise ValueError("TemporalInterest with temporal encoding needs time buckets or positions")
        p0 = self.time.weight[0].expand(target.shape[0], -1)
        return self._with_time(target, p0), self._with_time(behaviour, self.time(buckets))

    def attention(self, target_t: Tensor, behaviour_t: Tensor, mask: Tensor) -> Tensor:  # -> (B, L)
        if self.normalise:  # a tiny eps: embeddings start at std 1e-4, far below LayerNorm's usual 1e-5 variance
            target_t = nn.functional.layer_norm(target_t, (self.out_dim,), eps=1e-12)
            behaviour_t = nn.functional.layer_norm(behaviour_t, (self.out_dim,), eps=1e-12)
        scores = torch.einsum("bd,bld->bl", self.query(target_t), self.key(behaviour_t))
        scores = (scores / math.sqrt(self.out_dim)).masked_fill(~mask, float("-inf"))
        alpha = torch.softmax(scores, dim=1)
        return torch.nan_to_num(alpha, nan=0.0)  # an empty history: all -inf -> NaN -> no weight

    def forward(self, target: Tensor, behaviour: Tensor, mask: Tensor, buckets: Tensor | None = None,
                return_attention: bool = False) -> Tensor | tuple[Tensor, Tensor]:
        a, b = self.encode(target, behaviour, buckets)
        alpha = self.attention(a, b, mask)
        h = torch.einsum("bl,bld->bd", alpha, b)
        u = h * a if self.target_aware else h
        if self.keep_history:
            u = torch.cat([u, h], dim=-1)
        return (u, alpha) if return_attention else u


def cosine_to_target(target: Tensor, items: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """cos(target (B, d), items (B, L, d)) -> (B, L), and where it is defined (B, L): a real behaviour
    (``mask``) whose vector and the target's are both non-zero (a zero row is a value without a vector)."""
    tn, xn = target.norm(dim=-1), items.norm(dim=-1)
    cos = (items * target.unsqueeze(1)).sum(-1) / (xn * tn.unsqueeze(1)).clamp_min(1e-12)
    return cos.clamp(-1.0, 1.0), mask & (xn > 0) & (tn > 0).unsqueeze(1)


class HistorySimilarity(nn.Module):
    """Fields from the similarities s_i between the target and each history item, one per vector table
    (SPEC 2.3): (sims (B, L, P), valid (B, L, P), mask (B, L)) -> (B, P, D).

    - ``mnse``: s_i -> round((s_i + 1) / 2 * M) in [0, M], MNSE-encoded (a missing vector's s_i gets the
      missing code), mean over the real behaviours; an empty history gives the missing code's vector;
    - ``simtier``: the histogram of the defined s_i over ``bins`` equal bins of [-1, 1], as fractions
      of the real behaviours, through a linear layer per table (SimTier).
    """

    def __init__(self, num_tables: int, dim: int, kind: str, bins: int = 10, max_value: int = 100,
                 init_std: float = 1e-4) -> None:
        super().__init__()
        self.kind, self.bins, self.num_tables = kind, bins, num_tables
        if kind == "mnse":
            self.mnse = MNSE(num_tables, max_value, dim, init_std=init_std)
        elif kind == "simtier":
            self.weight = nn.Parameter(torch.empty(num_tables, bins, dim))
            nn.init.uniform_(self.weight, -1 / math.sqrt(bins), 1 / math.sqrt(bins))
            self.bias = nn.Parameter(torch.zeros(num_tables, dim))
        else:
            raise ValueError(f"unknown history similarity {kind!r}; expected mnse or simtier")

    def codes(self, sims: Tensor) -> Tensor:
        return torch.round((sims + 1) / 2 * self.mnse.max_value).long()

    def histogram(self, sims: Tensor, valid: Tensor, mask: Tensor) -> Tensor:
        """(B, P, bins): fraction of the real behaviours whose similarity falls in each bin."""
        idx = ((sims + 1) / 2 * self.bins).floor().long().clamp(0, self.bins - 1)  # s = 1 goes to the top bin
        onehot = nn.functional.one_hot(idx, self.bins).to(sims.dtype) * valid.unsqueeze(-1)
        count = mask.sum(dim=1).clamp_min(1).to(sims.dtype).view(-1, 1, 1)
        return onehot.sum(dim=1) / count

    def forward(self, sims: Tensor, valid: Tensor, mask: Tensor) -> Tensor:
        b, l, p = sims.shape
        if self.kind == "simtier":
            return torch.einsum("bpk,pkd->bpd", self.histogram(sims, valid, mask), self.weight) + self.bias
        # the mean of MNSE(code_i) over the history is (code histogram) @ (encoding of every code): one
        # (M + 2)-row table per field (codes 0..M, then missing) instead of a lookup per behaviour
        m = self.mnse.max_value
        codes = torch.where(valid, self.codes(sims).clamp(0, m), m + 1)  # (B, L, P)
        counts = sims.new_zeros(b, p, m + 2).scatter_add_(2, codes.transpose(1, 2), mask.unsqueeze(1).expand(b, p, l)
                                                             .to(sims.dtype))
        n = mask.sum(dim=1).to(sims.dtype).view(-1, 1, 1)
        missing = self.mnse(sims.new_zeros(1, p, dtype=torch.long), torch.ones(1, p, dtype=torch.bool,
                                                                                 device=sims.device))[0]  # (P, D)
        values = torch.stack([torch.cat([self.mnse.value_table(k), missing[k:k + 1]]) for k in range(p)])
        pooled = torch.einsum("bpc,pcd->bpd", counts / n.clamp_min(1), values)
        return torch.where((n == 0).view(-1, 1, 1), missing.unsqueeze(0), pooled)
