"""The shared protocol of the recall channels, and the sparse helpers they use.

Conventions (the serving layer and the neural channels plug into these)

* Items are catalogue indices ``0..N-1`` (int64), users are row indices ``0..U-1``. Train interactions
  are a scipy CSR ``user_item`` of shape (U, N), binary or counts, built by :func:`interaction_matrix`.
* A request is described by its history only: an int64 array of item indices, most recent LAST. An
  unknown user with a few clicks is served like any other, so channels never need a user id.
* ``retrieve(histories, k, exclude=None)`` returns ``(items, scores)``: (U_q, k) int64 padded with -1
  and (U_q, k) float32 with -inf on the padding, best first (ties: lower item index first).
  ``exclude=None`` removes each request's history items; an explicit ``exclude`` (one array per
  request) REPLACES that default (pass the union with the history to remove both, empty arrays to
  remove nothing).
* ``score_all(histories) -> (U_q, N) float32``, where cheap, for full-ranking evaluation.
* Persistence without pickle: ``state()`` is a flat ``dict[str, np.ndarray]`` (safetensors-ready),
  ``config_dict()`` a JSON-able dict (the pydantic config), and ``Channel.from_state(state, config)``
  rebuilds a channel whose ``retrieve`` output is identical.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, Generic, TypeVar

import numpy as np
import scipy.sparse as sp
from pydantic import BaseModel, ConfigDict, Field

from untwine.metrics.retrieval import topk_indices

__all__ = [
    "ChannelConfig",
    "RetrievalChannel",
    "interaction_matrix",
    "histories_from_matrix",
    "history_matrix",
    "recency_weights",
    "topk_dense",
    "topk_sparse",
    "sparse_row_topn",
    "row_blocks",
    "as_csr",
    "binarize",
    "csr_state",
    "csr_from_state",
    "check_state",
]


class ChannelConfig(BaseModel):
    """Base of the channel configs: frozen, unknown keys rejected; ``name`` labels the channel in a merge."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    name: str = Field(min_length=1)


ConfigT = TypeVar("ConfigT", bound=ChannelConfig)


class RetrievalChannel(ABC, Generic[ConfigT]):
    """One recall channel: fit on train interactions, retrieve for item-index histories."""

    kind: ClassVar[str]                 # stable type tag for bundles ("itemcf", "swing", ...)
    config_class: ClassVar[type[ChannelConfig]]

    def __init__(self, config: ConfigT | None = None):
        self.config: ConfigT = config if config is not None else self.config_class()  # type: ignore[assignment]
        if not isinstance(self.config, self.config_class):
            raise TypeError(f"{type(self).__name__} takes a {self.config_class.__name__}, "
                            f"got {type(self.config).__name__}")
        self._n_items: int | None = None

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def n_items(self) -> int:
        if self._n_items is None:
            raise RuntimeError(f"{type(self).__name__} is not fitted")
        return self._n_items

    @property
    def fitted(self) -> bool:
        return self._n_items is not None

    @abstractmethod
    def fit(self, user_item: sp.spmatrix | sp.sparray, **side: Any) -> "RetrievalChannel":
        ...

    @abstractmethod
    def retrieve(self, histories: Sequence[np.ndarray], k: int,
                 exclude: Sequence[np.ndarray] | None = None) -> tuple[np.ndarray, np.ndarray]:
        ...

    def score_all(self, histories: Sequence[np.ndarray]) -> np.ndarray:
        raise NotImplementedError(f"{type(self).__name__} has no full score vector; evaluate its retrieve() "
                                  f"lists with untwine.metrics.retrieval.topk_metrics")

    @abstractmethod
    def state(self) -> dict[str, np.ndarray]:
        ...

    def config_dict(self) -> dict:
        return self.config.model_dump(mode="json")

    @classmethod
    @abstractmethod
    def from_state(cls, state: Mapping[str, np.ndarray], config: Mapping | ChannelConfig) -> "RetrievalChannel":
        ...

    @classmethod
    def _config_from(cls, config: Mapping | ChannelConfig) -> ConfigT:
        if isinstance(config, cls.config_class):
            return config  # type: ignore[return-value]
        return cls.config_class.model_validate(dict(config))  # type: ignore[return-value]

    # ---- helpers shared by the subclasses
    def _histories(self, histories: Sequence[np.ndarray]) -> list[np.ndarray]:
        return [_as_items(h, self.n_items, f"history {q}") for q, h in enumerate(histories)]

    def _exclusions(self, histories: list[np.ndarray], exclude: Sequence[np.ndarray] | None) -> list[np.ndarray]:
        if exclude is None:
            return histories
        if len(exclude) != len(histories):
            raise ValueError(f"exclude has {len(exclude)} entries for {len(histories)} histories")
        return [_as_items(e, self.n_items, f"exclude {q}") for q, e in enumerate(exclude)]


# --------------------------------------------------------------------------------------------
# interactions and histories
# --------------------------------------------------------------------------------------------
def _as_items(x, n_items: int, what: str) -> np.ndarray:
    arr = np.asarray(x)
    if arr.size == 0:
        return np.zeros(0, dtype=np.int64)
    if not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"{what}: item indices must be integers, got dtype {arr.dtype}")
    arr = arr.astype(np.int64, copy=False).ravel()
    if arr.min() < 0 or arr.max() >= n_items:
        raise ValueError(f"{what}: item indices outside [0, {n_items}): min {arr.min()}, max {arr.max()}")
    return arr


def interaction_matrix(users: np.ndarray, items: np.ndarray, n_users: int, n_items: int,
                       weights: np.ndarray | None = None) -> sp.csr_matrix:
    """(n_users, n_items) float32 CSR; repeated (user, item) pairs are summed (counts, or summed weights)."""
    users = np.asarray(users, dtype=np.int64).ravel()
    items = np.asarray(items, dtype=np.int64).ravel()
    if len(users) != len(items):
        raise ValueError(f"users and items must have the same length, got {len(users)} and {len(items)}")
    if len(users) and (users.min() < 0 or users.max() >= n_users):
        raise ValueError(f"user indices outside [0, {n_users})")
    if len(items) and (items.min() < 0 or items.max() >= n_items):
        raise ValueError(f"item indices outside [0, {n_items})")
    data = np.ones(len(users), np.float32) if weights is None else np.asarray(weights, np.float32).ravel()
    if len(data) != len(users):
        raise ValueError(f"weights has length {len(data)}, users {len(users)}")
    m = sp.csr_matrix((data, (users, items)), shape=(n_users, n_items), dtype=np.float32)
    m.sum_duplicates()
    m.sort_indices()
    return m


def as_csr(user_item, name: str = "user_item") -> sp.csr_matrix:
    """A float64 canonical CSR copy (duplicates summed, zeros dropped, sorted indices); negatives rejected."""
    if not sp.issparse(user_item):
        raise TypeError(f"{name} must be a scipy.sparse matrix (see interaction_matrix), "
                        f"got {type(user_item).__name__}")
    m = sp.csr_matrix(user_item, dtype=np.float64)
    m.sum_duplicates()
    m.eliminate_zeros()
    m.sort_indices()
    if m.nnz and m.data.min() < 0:
        raise ValueError(f"{name} has negative entries")
    return m


def binarize(user_item) -> sp.csr_matrix:
    """The (U, N) 0/1 float64 CSR pattern of the interactions."""
    m = as_csr(user_item)
    m.data[:] = 1.0
    return m


def histories_from_matrix(user_item) -> list[np.ndarray]:
    """Each user's items (ascending index: a CSR row has no time order) as the history arrays of requests."""
    m = sp.csr_matrix(user_item)
    m.sort_indices()
    return [m.indices[m.indptr[u]:m.indptr[u + 1]].astype(np.int64) for u in range(m.shape[0])]


def recency_weights(length: int, half_life: float | None) -> np.ndarray:
    """Weights of the positions of a history (most recent last): ``0.5 ** (age / half_life)``, age 0 = last."""
    if half_life is None:
        return np.ones(length, dtype=np.float64)
    age = np.arange(length - 1, -1, -1, dtype=np.float64)
    return 0.5 ** (age / half_life)


def history_matrix(histories: Sequence[np.ndarray], n_items: int, half_life: float | None = None) -> sp.csr_matrix:
    """(U_q, N) float64 CSR of the histories with recency weights; a repeated item sums its weights."""
    lengths = [len(h) for h in histories]
    rows = np.repeat(np.arange(len(histories), dtype=np.int64), lengths)
    cols = np.concatenate(histories).astype(np.int64) if rows.size else np.zeros(0, np.int64)
    data = (np.concatenate([recency_weights(n, half_life) for n in lengths]) if rows.size
            else np.zeros(0, np.float64))
    m = sp.csr_matrix((data, (rows, cols)), shape=(len(histories), n_items), dtype=np.float64)
    m.sum_duplicates()
    return m


# --------------------------------------------------------------------------------------------
# top-k selection
# --------------------------------------------------------------------------------------------
def _pair_keys(lists: Sequence[np.ndarray], n_items: int) -> np.ndarray:
    rows = np.repeat(np.arange(len(lists), dtype=np.int64), [len(x) for x in lists])
    if not rows.size:
        return np.zeros(0, np.int64)
    return rows * n_items + np.concatenate(lists).astype(np.int64)


def topk_dense(scores: np.ndarray, k: int, exclude: Sequence[np.ndarray] | None = None
               ) -> tuple[np.ndarray, np.ndarray]:
    """Top-k of dense (U_q, N) scores with the excluded items removed; (items int64, scores float32)."""
    s = np.array(scores, dtype=np.float64)
    if exclude is not None:
        rows = np.repeat(np.arange(len(exclude)), [len(e) for e in exclude])
        if rows.size:
            s[rows, np.concatenate(exclude)] = -np.inf
    items, vals = topk_indices(s, k)
    return items, vals.astype(np.float32)


def topk_sparse(scores: sp.csr_matrix, k: int, exclude: Sequence[np.ndarray] | None = None
                ) -> tuple[np.ndarray, np.ndarray]:
    """Top-k over the STORED entries of a (U_q, N) CSR (absent items are not candidates), excluded removed.

    Order: score descending, then item index ascending; rows with fewer than k candidates are padded.
    """
    m = sp.csr_matrix(scores)
    m.sum_duplicates()
    m.sort_indices()
    n_rows, n_items = m.shape
    rows = np.repeat(np.arange(n_rows, dtype=np.int64), np.diff(m.indptr))
    cols = m.indices.astype(np.int64)
    vals = m.data.astype(np.float64)
    keep = np.ones(len(cols), dtype=bool)
    if exclude is not None:
        keep &= ~np.isin(rows * n_items + cols, _pair_keys(exclude, n_items))
    rows, cols, vals = rows[keep], cols[keep], vals[keep]
    order = np.lexsort((cols, -vals, rows))
    rows, cols, vals = rows[order], cols[order], vals[order]
    starts = np.searchsorted(rows, np.arange(n_rows))
    rank = np.arange(len(rows)) - starts[rows]
    sel = rank < k
    items = np.full((n_rows, k), -1, dtype=np.int64)
    out = np.full((n_rows, k), -np.inf, dtype=np.float32)
    items[rows[sel], rank[sel]] = cols[sel]
    out[rows[sel], rank[sel]] = vals[sel]
    return items, out


_DENSE_TOPN_ENTRIES = 16_000_000  # largest block densified by sparse_row_topn (128 MB of float64)


def sparse_row_topn(block: sp.csr_matrix, n: int, drop_diagonal_offset: int | None = None,
                    dense: bool | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Keep the n largest positive entries of each row of a CSR block: (row counts, cols, values).

    ``drop_diagonal_offset``: the block holds rows ``offset..`` of a square matrix; their diagonal
    entries (an item with itself) are dropped. Ties: lower column first. Within a row the kept
    entries are returned by ascending column (canonical CSR). ``dense`` forces the dense
    (argpartition) or the sparse (sort) path; None picks dense when the block is at least 1/4 full
    and small enough.
    """
    m = sp.csr_matrix(block)
    m.sum_duplicates()
    n_rows, n_cols = m.shape
    if dense is None:
        dense = n_rows * n_cols <= min(4 * m.nnz, _DENSE_TOPN_ENTRIES)
    if dense:
        # a dense-ish block (ML-1m's co-occurrence is ~75% full): argpartition beats sorting the entries
        full = m.toarray()
        full[full <= 0] = -np.inf
        if drop_diagonal_offset is not None:
            r = np.arange(n_rows)
            c = r + drop_diagonal_offset
            ok = c < n_cols
            full[r[ok], c[ok]] = -np.inf
        idx, val = topk_indices(full, n)
        keep = idx >= 0
        idx = np.where(keep, idx, n_cols)  # padding sorts last
        order = np.argsort(idx, axis=1, kind="stable")
        idx = np.take_along_axis(idx, order, axis=1)
        val = np.take_along_axis(val, order, axis=1)
        keep = idx < n_cols
        return keep.sum(axis=1).astype(np.int64), idx[keep].astype(np.int64), val[keep]
    m.sort_indices()
    rows = np.repeat(np.arange(m.shape[0], dtype=np.int64), np.diff(m.indptr))
    cols = m.indices.astype(np.int64)
    vals = m.data
    keep = vals > 0
    if drop_diagonal_offset is not None:
        keep &= cols != rows + drop_diagonal_offset
    rows, cols, vals = rows[keep], cols[keep], vals[keep]
    order = np.lexsort((cols, -vals, rows))
    rows, cols, vals = rows[order], cols[order], vals[order]
    starts = np.searchsorted(rows, np.arange(m.shape[0]))
    sel = (np.arange(len(rows)) - starts[rows]) < n
    rows, cols, vals = rows[sel], cols[sel], vals[sel]
    order = np.lexsort((cols, rows))
    counts = np.bincount(rows, minlength=m.shape[0])
    return counts, cols[order], vals[order]


def row_blocks(costs: np.ndarray, budget: float) -> list[tuple[int, int]]:
    """Consecutive [lo, hi) blocks whose summed cost stays within budget (a block has at least one row)."""
    blocks = []
    lo, acc = 0, 0.0
    for i, c in enumerate(np.asarray(costs, dtype=np.float64)):
        if i > lo and acc + c > budget:
            blocks.append((lo, i))
            lo, acc = i, 0.0
        acc += c
    if lo < len(costs):
        blocks.append((lo, len(costs)))
    return blocks


def csr_state(prefix: str, m: sp.csr_matrix) -> dict[str, np.ndarray]:
    """A CSR as flat arrays ``{prefix}_indptr/_indices/_data/_shape`` (int64 / int64 / float32 / int64)."""
    return {f"{prefix}_indptr": m.indptr.astype(np.int64), f"{prefix}_indices": m.indices.astype(np.int64),
            f"{prefix}_data": m.data.astype(np.float32), f"{prefix}_shape": np.asarray(m.shape, dtype=np.int64)}


def csr_from_state(state: Mapping[str, np.ndarray], prefix: str) -> sp.csr_matrix:
    shape = tuple(int(x) for x in np.asarray(state[f"{prefix}_shape"]))
    m = sp.csr_matrix((np.asarray(state[f"{prefix}_data"], dtype=np.float32),
                       np.asarray(state[f"{prefix}_indices"], dtype=np.int64),
                       np.asarray(state[f"{prefix}_indptr"], dtype=np.int64)), shape=shape)
    return m


def check_state(state: Mapping[str, np.ndarray], required: Sequence[str], owner: str) -> None:
    missing = [k for k in required if k not in state]
    if missing:
        raise KeyError(f"{owner} state lacks {missing}; it has {sorted(state)}")
