"""Numeric features as field embeddings: scaled vectors, equal-frequency buckets and MNSE.

MNSE (multiple numeral system encoding, Tencent's "Ads Recommendation in a Collapsed and Entangled
World", KDD 2024, a simplified NaryDis) maps a value to an integer v in [0, M], writes v in several
bases and gives every (field, base, position, digit) its own learned vector; a value's encoding is
the sum of its digits' vectors within a base, the bases then summed or concatenated and projected.
Values that share leading digits share vectors, so nearby values start alike and learn together,
while every value in [0, M] still gets a distinct encoding.

Every encoder gives a missing value its field's own learned vector. Each module is fused over
fields (one table, per-field row offsets), so a forward costs one embedding lookup, not one per field.
"""
from __future__ import annotations

import math
from typing import Literal, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from untwine.core.features import NumericStats
from untwine.core.schema import Feature, NumericEncoding

Transform = Literal["identity", "log1p", "quantile"]
Combine = Literal["sum", "concat"]


def num_positions(max_value: int, base: int) -> int:
    """Digits needed to write ``max_value`` in ``base`` (at least 1, so 0 has one digit).

    >>> num_positions(7, 2), num_positions(8, 2), num_positions(0, 10)
    (3, 4, 1)
    """
    if base < 2 or max_value < 0:
        raise ValueError(f"need base >= 2 and max_value >= 0, got base={base}, max_value={max_value}")
    positions, capacity = 1, base  # integer arithmetic: log(M) / log(b) misrounds at exact powers
    while capacity <= max_value:
        positions, capacity = positions + 1, capacity * base
    return positions


def mnse_digits(v: Tensor, base: int, positions: int) -> Tensor:
    """(...,) int64 >= 0 -> (..., positions) digits of ``v`` in ``base``, least significant first.

    Digits above ``positions`` are dropped (v is taken modulo base^positions).
    """
    powers = base ** torch.arange(positions, device=v.device, dtype=torch.long)
    return torch.div(v.unsqueeze(-1), powers, rounding_mode="floor") % base


class MNSE(nn.Module):
    """Multiple numeral system encoding: (B, F) integers in [0, M] -> (B, F, D).

    One learnable vector per (field, base, position, digit value), summed within a base; the bases are
    combined by ``sum``, or by ``concat`` followed by a per-field linear map (n_bases * D -> D). The
    position is part of the key: with a table per base indexed by digit alone, 51 = 110011b and
    60 = 111100b would encode identically. A missing value (mask True) gets its field's own learned
    missing vector instead. Values outside [0, M] are clamped.

    All rows live in one ``nn.Embedding`` (per field: every base's positions x digits, then the
    missing row), so a forward is one lookup of a (B, F, P_total) id tensor.

    Args:
        num_fields: F.
        max_value: M; base b uses ``num_positions(M, b)`` positions.
        dim: D.
        bases: the numeral systems, each >= 2.
        combine: ``"sum"`` or ``"concat"``.
        init_std: std of the normal initialisation of the rows (as FieldEmbedding).
    """

    def __init__(self, num_fields: int, max_value: int, dim: int, bases: Sequence[int] = (2, 3, 10),
                 combine: Combine = "sum", init_std: float = 1e-4) -> None:
        super().__init__()
        if combine not in ("sum", "concat"):
            raise ValueError(f"combine must be 'sum' or 'concat', got {combine!r}")
        if not bases:
            raise ValueError("MNSE needs at least one base")
        self.num_fields, self.max_value, self.dim = num_fields, max_value, dim
        self.bases, self.combine = tuple(bases), combine
        self.positions = [num_positions(max_value, b) for b in self.bases]
        divisors, moduli, starts = [], [], []  # per position across all bases: b^k, b, first row of its digits
        row = 0
        for b, p in zip(self.bases, self.positions):
            for k in range(p):
                divisors.append(b ** k)
                moduli.append(b)
                starts.append(row)
                row += b
        self.rows_per_field = row + 1  # + the missing row, last
        field_start = torch.arange(num_fields).unsqueeze(1) * self.rows_per_field
        self.register_buffer("divisors", torch.tensor(divisors), persistent=False)
        self.register_buffer("moduli", torch.tensor(moduli), persistent=False)
        self.register_buffer("row_offsets", field_start + torch.tensor(starts), persistent=False)  # (F, P)
        self.register_buffer("missing_rows", field_start + row, persistent=False)  # (F, 1)
        self.table = nn.Embedding(num_fields * self.rows_per_field, dim)
        nn.init.normal_(self.table.weight, std=init_std)
        if combine == "concat":
            width = len(self.bases) * dim
            self.weight = nn.Parameter(torch.empty(num_fields, width, dim))
            nn.init.uniform_(self.weight, -1 / math.sqrt(width), 1 / math.sqrt(width))  # nn.Linear's bound
            # zero bias: a random one would swamp the tiny initial encodings with a value-independent offset
            self.bias = nn.Parameter(torch.zeros(num_fields, dim))

    def _ids(self, v: Tensor, fields: slice) -> Tensor:
        """(N, F') integers in [0, M] of the fields ``fields`` -> (N, F', P_total) table rows of their digits."""
        return (v.unsqueeze(-1) // self.divisors) % self.moduli + self.row_offsets[fields]

    def _combine(self, emb: Tensor, fields: slice) -> Tensor:
        """(N, F', P_total, D) digit vectors of the fields ``fields`` -> (N, F', D)."""
        if self.combine == "sum":
            return emb.sum(dim=-2)
        per_base = torch.cat([e.sum(dim=-2) for e in emb.split(self.positions, dim=-2)], dim=-1)  # (N, F', nb*D)
        return torch.einsum("nfi,fio->nfo", per_base, self.weight[fields]) + self.bias[fields]

    def forward(self, v: Tensor, missing: Tensor | None = None) -> Tensor:
        """(B, F) int64 values, optional (B, F) bool missing mask -> (B, F, D)."""
        ids = self._ids(v.clamp(0, self.max_value), slice(None))  # (B, F, P)
        if missing is not None:
            # missing cells look up only their missing row, so the one lookup serves both cases
            ids = torch.where(missing.unsqueeze(-1), self.missing_rows, ids)
        emb = self.table(ids)  # (B, F, P, D)
        out = self._combine(emb, slice(None))
        if missing is not None:
            out = torch.where(missing.unsqueeze(-1), emb[..., 0, :], out)
        return out

    def value_table(self, field: int) -> Tensor:
        """(M + 1, D): the encoding of every value 0..M of field ``field`` (differentiable; detach to plot)."""
        v = torch.arange(self.max_value + 1, device=self.divisors.device).unsqueeze(1)  # (M + 1, 1)
        fields = slice(field, field + 1)
        return self._combine(self.table(self._ids(v, fields)), fields)[:, 0]


def _raw_range(st: NumericStats) -> tuple[float, float]:
    """The training min and max on the raw scale (the stats hold them after the feature's pre-transform)."""
    lo, hi = st.min, st.max
    if st.transform == "log1p_standard":  # stored as sign(x) * log1p(|x|): invert it
        lo, hi = (math.copysign(math.expm1(abs(y)), y) for y in (lo, hi))
    return lo, hi


class NumericToInteger(nn.Module):
    """Raw values (B, F), NaN = missing -> (integers in [0, M] (B, F) int64, missing mask (B, F) bool).

    Per-field parameters come from the training :class:`NumericStats` (held as buffers); with min and
    max the raw training range:

    - ``identity``: v = x - min, scaled by M / (max - min) when the range exceeds M (an integer feature
      with a range within M keeps its exact values);
    - ``log1p``: v = M * log1p(max(x - min, 0)) / log1p(max - min), for heavy-tailed values;
    - ``quantile``: v = M * F(x), F the training CDF read off ``quantiles`` (values at probabilities
      k / Q, k = 0..Q): a value equal to one or more quantiles gets the midpoint of their probabilities
      (the mid-rank, so a value repeated across many quantiles, e.g. 0 of a sparse count, sits in the
      middle of its atom), a value between two quantiles is interpolated linearly, a value below the
      first or above the last gets 0 or 1.

    v is then rounded (half to even) and clamped to [0, M]. Degenerate fields do not give NaN: a range
    with max == min counts as a unit range; a field without quantiles (no training values) maps to 0.
    """

    def __init__(self, stats: Sequence[NumericStats], max_value: int, transform: Transform) -> None:
        super().__init__()
        if transform not in ("identity", "log1p", "quantile"):
            raise ValueError(f"transform must be identity, log1p or quantile, got {transform!r}")
        self.max_value, self.transform = max_value, transform
        if transform == "quantile":
            sizes = [len(st.quantiles) for st in stats]
            # pad to a common width with +inf (never below a finite value, so ranks stay within each field's
            # own quantiles); at least 2 columns so the interpolation's right neighbour always exists
            q = torch.full((len(stats), max([2, *sizes])), math.inf)
            for f, st in enumerate(stats):
                q[f, :len(st.quantiles)] = torch.tensor(st.quantiles, dtype=torch.float32)
            self.register_buffer("quantiles", q, persistent=False)  # (F, K)
            self.register_buffer("sizes", torch.tensor(sizes).unsqueeze(1), persistent=False)  # (F, 1)
        else:
            lo_hi = [_raw_range(st) for st in stats]
            lo = torch.tensor([a for a, _ in lo_hi], dtype=torch.float32)
            span = torch.tensor([b - a for a, b in lo_hi], dtype=torch.float32)
            self.register_buffer("lo", lo, persistent=False)
            self.register_buffer("span", torch.where(span > 0, span, torch.ones_like(span)), persistent=False)

    def _cdf(self, x: Tensor) -> Tensor:
        """(B, F) finite raw values -> (B, F) training CDF in [0, 1]."""
        q, n = self.quantiles, self.sizes
        x = x.to(q.dtype).T.contiguous()  # (F, B): searchsorted takes one sorted row per field, same dtype
        first, last = q[:, :1], q.gather(1, (n - 1).clamp_min(0))
        inside = torch.minimum(torch.maximum(x, first), last)
        left = torch.searchsorted(q, inside)  # quantiles < x
        right = torch.searchsorted(q, inside, right=True)  # quantiles <= x
        steps = (n - 1).clamp_min(1)  # Q
        tied = (left + right - 1) / (2 * steps)
        k = (left - 1).clamp(0, q.shape[1] - 2)  # x in (q_k, q_k+1) when no quantile equals it
        q0, q1 = q.gather(1, k), q.gather(1, k + 1)
        gap = q1 - q0
        between = (k + (inside - q0) / torch.where(gap > 0, gap, torch.ones_like(gap))) / steps
        cdf = torch.where(right > left, tied, between)
        cdf = torch.where(x < first, 0.0, torch.where(x > last, 1.0, cdf))
        return torch.where(n > 0, cdf, 0.0).T

    def forward(self, raw: Tensor) -> tuple[Tensor, Tensor]:
        """(B, F) float raw values -> ((B, F) int64 in [0, M], (B, F) bool missing)."""
        missing = torch.isnan(raw)
        x = torch.where(missing, 0.0, raw)
        m = self.max_value
        if self.transform == "quantile":
            v = m * self._cdf(x)
        elif self.transform == "log1p":
            v = m * torch.log1p((x - self.lo).clamp_min(0)) / torch.log1p(self.span)
        else:
            v = (x - self.lo) * torch.where(self.span > m, m / self.span, torch.ones_like(self.span))
        return torch.round(v).clamp(0, m).long(), missing


def _bucket_boundaries(quantiles: Sequence[float], buckets: int) -> np.ndarray:
    """Unique values at probabilities k / buckets, k = 1..buckets-1, interpolated between the quantiles."""
    if not quantiles:
        return np.empty(0, dtype=np.float32)
    probs = np.linspace(0.0, 1.0, len(quantiles))
    return np.unique(np.interp(np.arange(1, buckets) / buckets, probs, quantiles).astype(np.float32))


class BucketEmbedding(nn.Module):
    """Equal-frequency bins fitted on train: raw (B, F), NaN = missing -> (B, F, D).

    Field f's boundaries are the unique values of its training quantiles at probabilities k / buckets,
    k = 1..buckets-1 (ties merge bins, so a sparse feature gets fewer); bin i holds b_(i-1) < x <= b_i,
    which keeps an atom at the minimum (e.g. zero counts) in the first bin. One fused table: per field,
    row 0 is the missing vector and rows 1.. the bins.

    Args:
        stats: per field, in column order.
        buckets: bins per field before merging ties.
        dim: D.
        init_std: std of the normal initialisation of the rows.
    """

    def __init__(self, stats: Sequence[NumericStats], buckets: int, dim: int, init_std: float = 1e-4) -> None:
        super().__init__()
        bounds = [_bucket_boundaries(st.quantiles, buckets) for st in stats]
        # +inf padding is never below a value, so one batched searchsorted serves fields of any bin count
        padded = torch.full((len(stats), max([1, *map(len, bounds)])), math.inf)
        for f, b in enumerate(bounds):
            padded[f, :len(b)] = torch.from_numpy(b)
        rows = [len(b) + 2 for b in bounds]  # missing row + len(b) + 1 bins
        self.num_bins = [r - 1 for r in rows]
        self.register_buffer("boundaries", padded, persistent=False)  # (F, K)
        self.register_buffer("offsets", torch.tensor([0, *np.cumsum(rows)[:-1].tolist()]), persistent=False)
        self.table = nn.Embedding(sum(rows), dim)
        nn.init.normal_(self.table.weight, std=init_std)

    def forward(self, raw: Tensor) -> Tensor:
        """(B, F) raw values -> (B, F, D)."""
        missing = torch.isnan(raw)
        x = torch.where(missing, 0.0, raw).to(self.boundaries.dtype).T.contiguous()  # (F, B)
        bins = torch.searchsorted(self.boundaries, x).T  # (B, F): boundaries < x
        return self.table(torch.where(missing, self.offsets, self.offsets + 1 + bins))


class ScaledNumeric(nn.Module):
    """The baseline (FuxiCTR's numeric embedding): normalised value times a learned vector per field,
    and a learned missing vector per field for missing values.

    Args:
        num_fields: F.
        dim: D.
        init_std: std of the normal initialisation of both vectors.
    """

    def __init__(self, num_fields: int, dim: int, init_std: float = 1e-4) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(num_fields, dim))
        self.missing = nn.Parameter(torch.empty(num_fields, dim))
        nn.init.normal_(self.weight, std=init_std)
        nn.init.normal_(self.missing, std=init_std)

    def forward(self, normalised: Tensor, missing: Tensor) -> Tensor:
        """(B, F) normalised values, (B, F) bool missing -> (B, F, D)."""
        return torch.where(missing.unsqueeze(-1), self.missing, normalised.unsqueeze(-1) * self.weight)


class _IntegerMNSE(nn.Module):
    """Raw values -> integers -> MNSE, for one group of fields sharing an encoding."""

    def __init__(self, stats: Sequence[NumericStats], enc: NumericEncoding, dim: int, init_std: float) -> None:
        super().__init__()
        self.to_integer = NumericToInteger(stats, enc.max_value, enc.transform)
        self.mnse = MNSE(len(stats), enc.max_value, dim, enc.bases, enc.combine, init_std)

    def forward(self, raw: Tensor) -> Tensor:  # (B, F) -> (B, F, D)
        return self.mnse(*self.to_integer(raw))


class NumericFieldEncoder(nn.Module):
    """Every numeric field of a schema -> (B, F_num, D) in feature order, each with its own encoding.

    Fields sharing an identical :class:`NumericEncoding` form one fused module (one lookup per group,
    not per field): a :class:`ScaledNumeric`, a :class:`BucketEmbedding`, or a
    :class:`NumericToInteger` + :class:`MNSE`; the group outputs are put back in feature order.

    Args:
        features: the numeric features, in the order of the numeric block's columns.
        stats: training stats by feature name.
        encodings: ``encodings[i]`` is the encoding of ``features[i]``.
        dim: D.
        init_std: std of the normal initialisation of every embedding row.
    """

    def __init__(self, features: Sequence[Feature], stats: dict[str, NumericStats],
                 encodings: Sequence[NumericEncoding], dim: int, init_std: float = 1e-4) -> None:
        super().__init__()
        if len(features) != len(encodings):
            raise ValueError(f"{len(features)} numeric features but {len(encodings)} encodings")
        groups: dict[NumericEncoding, list[int]] = {}
        for i, enc in enumerate(encodings):
            groups.setdefault(enc, []).append(i)
        self.num_fields, self.dim = len(features), dim
        self.encodings = list(groups)
        self.groups = nn.ModuleList()
        order: list[int] = []
        for g, (enc, cols) in enumerate(groups.items()):
            self.groups.append(self._group(enc, [features[i] for i in cols], stats, dim, init_std))
            self.register_buffer(f"cols_{g}", torch.tensor(cols), persistent=False)
            order += cols
        # the groups' outputs concatenated hold the fields in grouped order; this gather restores feature order
        self.register_buffer("restore", torch.tensor(np.argsort(order, kind="stable")), persistent=False)
        # one encoding for every field (the common case): no column gather, concatenation or reordering
        self.single_group = len(groups) == 1

    @staticmethod
    def _group(enc: NumericEncoding, features: list[Feature], stats: dict[str, NumericStats], dim: int,
               init_std: float) -> nn.Module:
        if enc.name == "scaled":  # reads the normalised block: needs no statistics
            return ScaledNumeric(len(features), dim, init_std)
        missing = [f.name for f in features if f.name not in stats]
        if missing:
            raise ValueError(f"numeric encoding {enc.name!r} needs training statistics for {missing}")
        st = [stats[f.name] for f in features]
        if enc.name == "bucket":
            return BucketEmbedding(st, enc.buckets, dim, init_std)
        return _IntegerMNSE(st, enc, dim, init_std)

    def forward(self, numeric: Tensor, numeric_raw: Tensor | None) -> Tensor:
        """(B, F_num) normalised (missing -> 0), (B, F_num) raw (missing -> NaN) -> (B, F_num, D).

        Without the raw block (a hand-built batch) scaled fields see no missing values; the other
        encodings need it."""
        parts = []
        for g, module in enumerate(self.groups):
            cols = slice(None) if self.single_group else getattr(self, f"cols_{g}")
            if isinstance(module, ScaledNumeric):
                missing = torch.isnan(numeric_raw[:, cols]) if numeric_raw is not None else \
                    torch.zeros_like(numeric[:, cols], dtype=torch.bool)
                parts.append(module(numeric[:, cols], missing))
            elif numeric_raw is None:
                raise ValueError("bucket and mnse numeric encodings read batch.numeric_raw, which this batch lacks")
            else:
                parts.append(module(numeric_raw[:, cols]))
        if not parts:
            return numeric.new_zeros(numeric.shape[0], 0, self.dim)
        if self.single_group:
            return parts[0]
        return torch.cat(parts, dim=1)[:, self.restore]
