"""Item-to-item channels: ItemCF (cosine co-occurrence) and Swing, both served from a top-N neighbour table.

Both fit a sparse (N, N) table ``S`` whose row i holds the ``top_n`` most similar items of i (positive
similarity, i itself excluded) and retrieve with

    score(j) = Σ_{p} r_p · S[h_p, j]            (h_p = the p-th history item, r_p its recency weight)

``r_p = 0.5 ** (age_p / recency_half_life)`` with age 0 for the most recent item (1 everywhere when
``recency_half_life`` is None); the history items are excluded; only items that are a neighbour of some
history item are candidates, so a list can be shorter than k (padded with -1).

ItemCF (Sarwar et al., "Item-based collaborative filtering recommendation algorithms", WWW 2001)
    A = the binarised (U, N) interactions, n_i = |U_i| the number of users of item i, and
    C = Aᵀ W A with W = diag(w_u): w_u = 1, or the inverse user frequency w_u = 1 / log(1 + |I_u|)
    (Breese, Heckerman & Kadie, UAI 1998: an active user's co-occurrences say less about each pair).
    ``similarity="cosine"``: sim(i, j) = C_ij / sqrt(n_i n_j) (n_i unweighted, also with IUF);
    ``similarity="cooccurrence"``: sim(i, j) = C_ij. ``normalize=True`` divides each item's kept
    neighbour row by its maximum (Karypis, "Evaluation of item-based top-N recommendation algorithms",
    CIKM 2001), so that the history items contribute on one scale.
    Computed by row blocks of items: block = Aᵀ[lo:hi] (W A), blocks sized so that the number of
    multiply-adds (= an upper bound on the block's non-zeros), Σ_{i in block} Σ_{u ∈ U_i} |I_u|, stays
    within ``max_block_products``; each block is cut to its rows' top-N at once, so memory is bounded
    by the block plus the N x top_n table. Total work Σ_u |I_u|² (the SpGEMM).

Swing (Yang et al., "Large Scale Product Graph Construction for Recommendation in E-commerce", 2020)
    swing(i, j) = Σ_{u ∈ U_i ∩ U_j} Σ_{v ∈ U_i ∩ U_j, v ≠ u} w_u w_v / (α + |I_u ∩ I_v|)
    over ORDERED user pairs (each unordered pair counts twice, as the double sum is written), with
    w_u = (|I_u| + α₁)^(-β) (``user_weight_offset`` α₁ = 5 and ``user_weight_power`` β = 0.5 by
    default; w_u = 1 with ``user_weighting=False``). Two users who co-clicked i and j are strong evidence
    when they otherwise have little in common. For item i with users P (sampled down to
    ``max_users_per_item`` with ``seed`` when larger; None = exact) and B = A[P] restricted to the
    items J those users touched (dense 0/1, |P| x |J|):
        O = B Bᵀ                                    (|I_u ∩ I_v| for u, v ∈ P)
        K = (w_P w_Pᵀ) / (α + O),  diag(K) = 0
        swing(i, J) = colsum(B ∘ (K B))             (= Σ_{u,v ∈ P ∩ U_j} K_uv for every j ∈ J)
    i.e. two BLAS products per item (a |P|² |J| SYRK and a GEMM; column chunks of
    ``max_dense_columns`` bound the memory), float32 unless ``float64``. Total
    O(Σ_i min(n_i, cap)² |J_i|). Uncapped, swing is symmetric; with the cap, row i uses the sample of
    U_i, so it is no longer exactly symmetric.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Literal

import numpy as np
import scipy.sparse as sp
from pydantic import Field

from untwine.metrics.retrieval import topk_indices
from untwine.retrieval.channel import (ChannelConfig, RetrievalChannel, binarize, check_state, csr_from_state,
                                       csr_state, history_matrix, recency_weights, row_blocks, sparse_row_topn,
                                       topk_sparse)

__all__ = ["ItemCFConfig", "ItemCFChannel", "SwingConfig", "SwingChannel", "itemcf_similarity",
           "swing_similarity"]


class _NeighbourConfig(ChannelConfig):
    top_n: int = Field(default=200, ge=1)                           # neighbours kept per item
    recency_half_life: float | None = Field(default=None, gt=0)    # in history positions


class ItemCFConfig(_NeighbourConfig):
    name: str = "itemcf"
    similarity: Literal["cosine", "cooccurrence"] = "cosine"
    iuf: bool = False
    normalize: bool = False
    max_block_products: int = Field(default=20_000_000, ge=1)


class SwingConfig(_NeighbourConfig):
    name: str = "swing"
    alpha: float = Field(default=1.0, ge=0)
    user_weighting: bool = True
    user_weight_offset: float = Field(default=5.0, ge=0)
    user_weight_power: float = Field(default=0.5, ge=0)
    max_users_per_item: int | None = Field(default=300, ge=2)
    seed: int = 0
    max_dense_columns: int = Field(default=16_384, ge=1)  # column chunk of the dense |P| x |J| block
    float64: bool = False  # float32 BLAS by default (the table is stored as float32 either way)


# --------------------------------------------------------------------------------------------
# similarity tables
# --------------------------------------------------------------------------------------------
def _assemble(n_items: int, counts: list[np.ndarray], cols: list[np.ndarray], vals: list[np.ndarray]
              ) -> sp.csr_matrix:
    counts_all = np.concatenate(counts) if counts else np.zeros(n_items, np.int64)
    indptr = np.concatenate([[0], np.cumsum(counts_all)]).astype(np.int64)
    indices = np.concatenate(cols).astype(np.int64) if cols else np.zeros(0, np.int64)
    data = np.concatenate(vals).astype(np.float32) if vals else np.zeros(0, np.float32)
    return sp.csr_matrix((data, indices, indptr), shape=(n_items, n_items))


def itemcf_similarity(user_item, config: ItemCFConfig = ItemCFConfig()) -> sp.csr_matrix:
    """The (N, N) float32 CSR top-N ItemCF table (rows: items, columns sorted)."""
    a = binarize(user_item)
    n_items = a.shape[1]
    items_per_user = np.diff(a.indptr).astype(np.float64)
    user_w = np.zeros_like(items_per_user)
    active = items_per_user > 0
    user_w[active] = 1.0 / np.log1p(items_per_user[active]) if config.iuf else 1.0
    weighted = sp.diags(user_w) @ a  # W A
    at = a.T.tocsr()
    users_per_item = np.diff(at.indptr).astype(np.float64)
    inv_sqrt = np.zeros(n_items)
    inv_sqrt[users_per_item > 0] = users_per_item[users_per_item > 0] ** -0.5
    costs = at @ items_per_user  # multiply-adds of each item's row of C
    counts, cols, vals = [], [], []
    for lo, hi in row_blocks(costs, config.max_block_products):
        block = sp.csr_matrix(at[lo:hi] @ weighted)
        if config.similarity == "cosine":
            rows = np.repeat(np.arange(lo, hi), np.diff(block.indptr))
            block.data *= inv_sqrt[rows] * inv_sqrt[block.indices]
        c, j, v = sparse_row_topn(block, config.top_n, drop_diagonal_offset=lo)
        if config.normalize and len(v):
            row_of = np.repeat(np.arange(len(c)), c)
            row_max = np.zeros(len(c))
            np.maximum.at(row_max, row_of, v)
            v = v / row_max[row_of]
        counts.append(c)
        cols.append(j)
        vals.append(v)
    return _assemble(n_items, counts, cols, vals)


def swing_similarity(user_item, config: SwingConfig = SwingConfig()) -> sp.csr_matrix:
    """The (N, N) float32 CSR top-N Swing table (rows: items, columns sorted)."""
    dtype = np.float64 if config.float64 else np.float32
    a = binarize(user_item).astype(dtype)
    n_items = a.shape[1]
    items_per_user = np.diff(a.indptr).astype(np.float64)
    if config.user_weighting:
        user_w = np.zeros_like(items_per_user)
        active = items_per_user > 0  # inactive users are in no U_i; this avoids 0 ** -beta
        user_w[active] = (items_per_user[active] + config.user_weight_offset) ** -config.user_weight_power
    else:
        user_w = np.ones_like(items_per_user)
    at = a.T.tocsr()
    rng = np.random.default_rng(config.seed)
    cap = config.max_users_per_item
    width = config.max_dense_columns
    counts = np.zeros(n_items, dtype=np.int64)
    cols, vals = [], []
    seen_col = np.zeros(n_items, dtype=bool)
    for i in range(n_items):
        users = at.indices[at.indptr[i]:at.indptr[i + 1]]
        if cap is not None and len(users) > cap:
            users = np.sort(rng.choice(users, size=cap, replace=False))
        if len(users) < 2:
            continue
        sub = a[users]
        seen_col[sub.indices] = True  # the items J touched by these users (a mask: cheaper than np.unique)
        touched = np.flatnonzero(seen_col)
        seen_col[touched] = False
        bounds = [(lo, min(lo + width, len(touched))) for lo in range(0, len(touched), width)]
        first = sub[:, touched[:bounds[0][1]]].toarray()  # with a single chunk, built once for both passes

        def chunk(c: int) -> np.ndarray:
            return first if c == 0 else sub[:, touched[bounds[c][0]:bounds[c][1]]].toarray()

        # |I_u ∩ I_v| = (B Bᵀ)_uv over all touched columns: exact integers, also in float32 (< 2^24)
        overlap = np.zeros((len(users), len(users)), dtype=dtype)
        for c in range(len(bounds)):
            b = chunk(c)
            overlap += b @ b.T
        w = user_w[users]
        pair = (np.outer(w, w) / (config.alpha + overlap)).astype(dtype)
        np.fill_diagonal(pair, 0.0)
        row = np.empty(len(touched))
        for c, (lo, hi) in enumerate(bounds):
            b = chunk(c)
            row[lo:hi] = np.einsum("uj,uj->j", b, pair @ b)
        row[touched == i] = 0.0
        idx, v = topk_indices(np.where(row > 0, row, -np.inf)[None, :], config.top_n)
        ok = idx[0] >= 0
        j, v = touched[idx[0][ok]], v[0][ok]
        order = np.argsort(j)
        counts[i] = len(j)
        cols.append(j[order])
        vals.append(v[order])
    return _assemble(n_items, [counts], cols, vals)


# --------------------------------------------------------------------------------------------
# channels
# --------------------------------------------------------------------------------------------
class _NeighbourChannel(RetrievalChannel):
    """Retrieval from a top-N neighbour table S: score = (recency-weighted history) @ S."""

    neighbours: sp.csr_matrix

    def _set(self, neighbours: sp.csr_matrix) -> None:
        if neighbours.shape[0] != neighbours.shape[1]:
            raise ValueError(f"the neighbour table must be square, got {neighbours.shape}")
        self.neighbours = sp.csr_matrix(neighbours, dtype=np.float32)
        self._n_items = neighbours.shape[0]

    def _scores(self, histories: list[np.ndarray]) -> sp.csr_matrix:
        h = history_matrix(histories, self.n_items, self.config.recency_half_life)
        return sp.csr_matrix(h @ self.neighbours)

    def retrieve(self, histories: Sequence[np.ndarray], k: int,
                 exclude: Sequence[np.ndarray] | None = None) -> tuple[np.ndarray, np.ndarray]:
        hist = self._histories(histories)
        excl = self._exclusions(hist, exclude)
        if len(hist) == 1:  # one request (serving): gather the history's neighbour rows, no sparse product
            return self._retrieve_one(hist[0], k, excl[0])
        return topk_sparse(self._scores(hist), k, excl)

    def _retrieve_one(self, history: np.ndarray, k: int, exclude: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``topk_sparse(history_matrix([h]) @ S)`` for one history, from S's rows of the history items."""
        s = self.neighbours
        weights = recency_weights(len(history), self.config.recency_half_life)
        starts, ends = s.indptr[history], s.indptr[history + 1]
        counts = ends - starts
        pos = np.repeat(starts - np.concatenate([[0], np.cumsum(counts)[:-1]]), counts) + np.arange(counts.sum())
        cols = s.indices[pos].astype(np.int64)
        vals = np.repeat(weights, counts) * s.data[pos].astype(np.float64)
        items, inverse = np.unique(cols, return_inverse=True)  # ascending: the tie order of topk_sparse
        scores = np.bincount(inverse, weights=vals, minlength=len(items))
        keep = ~np.isin(items, exclude)
        items, scores = items[keep], scores[keep]
        order = np.lexsort((items, -scores))[:k]
        out_items = np.full((1, k), -1, dtype=np.int64)
        out_scores = np.full((1, k), -np.inf, dtype=np.float32)
        out_items[0, :len(order)] = items[order]
        out_scores[0, :len(order)] = scores[order]
        return out_items, out_scores

    def score_all(self, histories: Sequence[np.ndarray]) -> np.ndarray:
        return self._scores(self._histories(histories)).toarray().astype(np.float32)

    def state(self) -> dict[str, np.ndarray]:
        return csr_state("neighbours", self.neighbours)

    @classmethod
    def from_state(cls, state: Mapping[str, np.ndarray], config):
        check_state(state, [f"neighbours_{p}" for p in ("indptr", "indices", "data", "shape")], cls.__name__)
        ch = cls(cls._config_from(config))
        ch._set(csr_from_state(state, "neighbours"))
        return ch


class ItemCFChannel(_NeighbourChannel):
    kind = "itemcf"
    config_class = ItemCFConfig

    def fit(self, user_item, **side) -> "ItemCFChannel":
        if side:
            raise TypeError(f"ItemCFChannel.fit takes no side data, got {sorted(side)}")
        self._set(itemcf_similarity(user_item, self.config))
        return self


class SwingChannel(_NeighbourChannel):
    kind = "swing"
    config_class = SwingConfig

    def fit(self, user_item, **side) -> "SwingChannel":
        if side:
            raise TypeError(f"SwingChannel.fit takes no side data, got {sorted(side)}")
        self._set(swing_similarity(user_item, self.config))
        return self
