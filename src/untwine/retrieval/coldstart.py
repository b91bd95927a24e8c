"""Cold-start channel: new items reach users through their content neighbours, with guaranteed exposure.

New items: fewer than ``min_exposures`` train interactions (column sums of ``user_item``). They have
too little behaviour for ItemCF or a learned embedding, so each borrows one from its content:

1. Content neighbours: for a new item j, the ``n_neighbours`` well-exposed items i with the largest
   positive cosine ``c(j, i) = cos(x_j, x_i)`` of their attribute vectors (multi-hot genres, category /
   advertiser one-hots, or an external text/image embedding); ties by lower item index.
2. Neighbour-mean representation: ``e_j = (1 / |N(j)|) Σ_{i ∈ N(j)} v̂_i`` where ``v_i`` is the item's
   interaction-based vector, unit-normalised: the given ``item_vectors`` (e.g. two-tower item
   embeddings), else its user-incidence column ``A[:, i]`` of the binarised interactions. These are
   what an ANN index needs to serve new items (:meth:`ColdStartChannel.new_item_vectors`).
3. Matching a history: ``score(j) = Σ_p r_p cos(v_{h_p}, e_j)`` (``r_p`` recency weights as in the
   other channels). With the default vectors, ``cos(v_h, e_j)`` is the mean cosine co-occurrence of h
   with j's neighbours, i.e. "users who consumed h also consumed items like j". Each new item keeps its
   ``max_links`` largest positive ``cos(v_h, e_j)`` as a sparse (N, n_new) table.

Guaranteed exposure (the exact rule): every new item has a quota of ``guaranteed_impressions``. The
serving layer reports what it actually showed with :meth:`record_impressions` (retrieval is not an
impression); the counters are guarded by a lock, so concurrent requests may report at once. A
request's candidates are the new items with ``served < quota`` that are not excluded; they are ranked
by score descending, then by remaining quota (``quota - served``) descending, then by lower item index.
With ``fill_unmatched`` (default) candidates with score 0 are returned too (after the matched ones, so
that the quota is spent even when no history links to them); without it only score > 0 is returned.
An item stops being returned as soon as its ``served`` reaches the quota; a later ``fit`` on newer
interactions (where it has enough exposures) makes it a regular item.
"""
from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence

import numpy as np
import scipy.sparse as sp
from pydantic import Field

from untwine.metrics.retrieval import topk_indices
from untwine.retrieval.channel import (ChannelConfig, RetrievalChannel, as_csr, binarize, check_state,
                                       csr_from_state, csr_state, history_matrix)

__all__ = ["ColdStartConfig", "ColdStartChannel"]

_BLOCK_ENTRIES = 4_000_000  # dense entries per similarity block (32 MB of float64)


class ColdStartConfig(ChannelConfig):
    name: str = "coldstart"
    min_exposures: int = Field(default=10, ge=1)
    n_neighbours: int = Field(default=20, ge=1)
    max_links: int = Field(default=500, ge=1)
    guaranteed_impressions: int = Field(default=100, ge=1)
    fill_unmatched: bool = True
    recency_half_life: float | None = Field(default=None, gt=0)


def _unit_rows(x: np.ndarray | sp.csr_matrix) -> np.ndarray | sp.csr_matrix:
    if sp.issparse(x):
        x = sp.csr_matrix(x, dtype=np.float64)
        norm = np.sqrt(np.asarray(x.multiply(x).sum(axis=1)).ravel())
        inv = np.divide(1.0, norm, out=np.zeros_like(norm), where=norm > 0)
        return sp.csr_matrix(sp.diags(inv) @ x)
    x = np.asarray(x, dtype=np.float64)
    norm = np.linalg.norm(x, axis=1)
    inv = np.divide(1.0, norm, out=np.zeros_like(norm), where=norm > 0)
    return x * inv[:, None]


def _gram(a, b) -> np.ndarray:
    """Dense a @ b.T for dense or sparse operands."""
    if sp.issparse(a) or sp.issparse(b):
        out = sp.csr_matrix(a) @ sp.csr_matrix(b).T
        return out.toarray() if sp.issparse(out) else np.asarray(out)
    return a @ b.T


def _row_topn(a, b, n: int, candidates: np.ndarray | None = None) -> sp.csr_matrix:
    """(len(a), n_b) CSR keeping, per row of a, the n columns of b with the largest positive a·b.

    ``candidates`` restricts the columns (others are never kept).
    """
    n_rows, n_cols = a.shape[0], b.shape[0]
    cols_all = np.arange(n_cols) if candidates is None else np.asarray(candidates, dtype=np.int64)
    bb = b[cols_all]
    block = max(1, _BLOCK_ENTRIES // max(1, len(cols_all)))
    indptr, indices, data = [0], [], []
    for lo in range(0, n_rows, block):
        g = _gram(a[lo:lo + block], bb)
        idx, val = topk_indices(np.where(g > 0, g, -np.inf), n)
        for r in range(g.shape[0]):
            ok = idx[r] >= 0
            c = cols_all[idx[r][ok]]
            order = np.argsort(c)
            indices.append(c[order])
            data.append(val[r][ok][order])
            indptr.append(indptr[-1] + int(ok.sum()))
    return sp.csr_matrix((np.concatenate(data) if data else np.zeros(0),
                          np.concatenate(indices) if indices else np.zeros(0, np.int64),
                          np.asarray(indptr, dtype=np.int64)), shape=(n_rows, n_cols))


class ColdStartChannel(RetrievalChannel[ColdStartConfig]):
    kind = "coldstart"
    config_class = ColdStartConfig

    def __init__(self, config: ColdStartConfig | None = None):
        super().__init__(config)
        self._lock = threading.Lock()

    def fit(self, user_item, *, item_attributes, item_vectors: np.ndarray | None = None) -> "ColdStartChannel":
        """``item_attributes``: (N, d) dense or sparse content vectors; ``item_vectors``: optional (N, e)
        interaction-based vectors (default: the items' user-incidence columns)."""
        ui = as_csr(user_item)
        n_items = ui.shape[1]
        attrs = item_attributes if sp.issparse(item_attributes) else np.asarray(item_attributes)
        if attrs.ndim != 2 or attrs.shape[0] != n_items:
            raise ValueError(f"item_attributes has shape {attrs.shape}, expected ({n_items}, d)")
        exposures = np.asarray(ui.sum(axis=0)).ravel()
        new_items = np.flatnonzero(exposures < self.config.min_exposures).astype(np.int64)
        exposed = np.flatnonzero(exposures >= self.config.min_exposures).astype(np.int64)
        x = _unit_rows(attrs)
        # content neighbours among the well-exposed items, as an (n_new, N) CSR of c(j, i)
        neighbours = _row_topn(x[new_items], x, self.config.n_neighbours, candidates=exposed)
        if item_vectors is None:
            v = _unit_rows(binarize(ui).T.tocsr())
        else:
            iv = np.asarray(item_vectors, dtype=np.float64)
            if iv.ndim != 2 or iv.shape[0] != n_items:
                raise ValueError(f"item_vectors has shape {iv.shape}, expected ({n_items}, e)")
            v = _unit_rows(iv)
        pattern = neighbours.copy()
        pattern.data[:] = 1.0
        size = np.diff(pattern.indptr).astype(np.float64)
        mean = sp.diags(np.divide(1.0, size, out=np.zeros_like(size), where=size > 0)) @ pattern
        representation = mean @ v
        representation = sp.csr_matrix(representation) if sp.issparse(representation) else np.asarray(representation)
        # links (N, n_new): cos(v_h, e_j), the max_links largest per new item
        links = _row_topn(_unit_rows(representation), v, self.config.max_links).T.tocsr()
        self._set(n_items, new_items, neighbours, sp.csr_matrix(representation), links,
                  np.zeros(len(new_items), dtype=np.int64))
        return self

    def _set(self, n_items: int, new_items: np.ndarray, neighbours: sp.csr_matrix, representation: sp.csr_matrix,
             links: sp.csr_matrix, served: np.ndarray) -> None:
        self._n_items = int(n_items)
        self.new_items = np.asarray(new_items, dtype=np.int64)
        self.neighbours = sp.csr_matrix(neighbours, dtype=np.float32)
        self.representation = sp.csr_matrix(representation, dtype=np.float32)
        self.links = sp.csr_matrix(links, dtype=np.float32)
        self._position = np.full(self._n_items, -1, dtype=np.int64)  # catalogue index -> new-item position
        self._position[self.new_items] = np.arange(len(self.new_items))
        with self._lock:
            self._served = np.asarray(served, dtype=np.int64).copy()

    # ---- exposure accounting
    def record_impressions(self, items: np.ndarray | Sequence[int]) -> int:
        """Count impressions of catalogue items (repeats count; non-new items are ignored); returns how many
        were new-item impressions."""
        items = np.asarray(items, dtype=np.int64).ravel()
        if len(items) and (items.min() < 0 or items.max() >= self.n_items):
            raise ValueError(f"impressions of item indices outside [0, {self.n_items})")
        pos = self._position[items]
        pos = pos[pos >= 0]
        with self._lock:
            np.add.at(self._served, pos, 1)
        return len(pos)

    def served(self) -> np.ndarray:
        """Impressions recorded per new item (aligned with ``new_items``)."""
        with self._lock:
            return self._served.copy()

    def remaining(self) -> np.ndarray:
        """Impressions still guaranteed per new item (aligned with ``new_items``), >= 0."""
        return np.maximum(self.config.guaranteed_impressions - self.served(), 0)

    def new_item_vectors(self) -> np.ndarray:
        """(n_new, e) neighbour-mean representation e_j, e.g. to insert the new items into an ANN index."""
        return self.representation.toarray()

    # ---- retrieval
    def new_item_scores(self, histories: Sequence[np.ndarray]) -> np.ndarray:
        """(U_q, n_new) float64 scores Σ_p r_p cos(v_{h_p}, e_j), before quotas and exclusions."""
        h = history_matrix(self._histories(histories), self.n_items, self.config.recency_half_life)
        return np.asarray((h @ self.links).toarray(), dtype=np.float64)

    def retrieve(self, histories: Sequence[np.ndarray], k: int,
                 exclude: Sequence[np.ndarray] | None = None) -> tuple[np.ndarray, np.ndarray]:
        hist = self._histories(histories)
        excl = self._exclusions(hist, exclude)
        scores_new = self.new_item_scores(hist)
        remaining = self.remaining()
        items = np.full((len(hist), k), -1, dtype=np.int64)
        scores = np.full((len(hist), k), -np.inf, dtype=np.float32)
        active = remaining > 0
        for q in range(len(hist)):
            ok = active.copy()
            pos = self._position[excl[q]]
            ok[pos[pos >= 0]] = False
            if not self.config.fill_unmatched:
                ok &= scores_new[q] > 0
            cand = np.flatnonzero(ok)
            order = np.lexsort((self.new_items[cand], -remaining[cand], -scores_new[q, cand]))[:k]
            chosen = cand[order]
            items[q, :len(chosen)] = self.new_items[chosen]
            scores[q, :len(chosen)] = scores_new[q, chosen]
        return items, scores

    def score_all(self, histories: Sequence[np.ndarray]) -> np.ndarray:
        """(U_q, N) float32: the new items' scores, -inf for every other item (quotas not applied)."""
        out = np.full((len(histories), self.n_items), -np.inf, dtype=np.float32)
        out[:, self.new_items] = self.new_item_scores(histories)
        return out

    # ---- persistence
    def state(self) -> dict[str, np.ndarray]:
        return {"n_items": np.asarray([self.n_items], dtype=np.int64), "new_items": self.new_items.copy(),
                "served": self.served(), **csr_state("neighbours", self.neighbours),
                **csr_state("representation", self.representation), **csr_state("links", self.links)}

    @classmethod
    def from_state(cls, state: Mapping[str, np.ndarray], config) -> "ColdStartChannel":
        parts = [f"{m}_{p}" for m in ("neighbours", "representation", "links")
                 for p in ("indptr", "indices", "data", "shape")]
        check_state(state, ["n_items", "new_items", "served"] + parts, cls.__name__)
        ch = cls(cls._config_from(config))
        ch._set(int(np.asarray(state["n_items"])[0]), np.asarray(state["new_items"]),
                csr_from_state(state, "neighbours"), csr_from_state(state, "representation"),
                csr_from_state(state, "links"), np.asarray(state["served"]))
        return ch
