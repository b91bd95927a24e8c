"""Full-ranking retrieval metrics: Recall@K, HitRate@K, NDCG@K with the user's seen items excluded.

For a user u with target set T_u (distinct items, e.g. the test positives) and the top-K list
R_u = (r_1, ..., r_K) of the catalogue ranked by score after the seen (train) items are removed:

* ``Recall@K   = |R_u ∩ T_u| / |T_u|``
* ``HitRate@K  = 1[|R_u ∩ T_u| > 0]``
* ``NDCG@K     = DCG@K / IDCG@K`` with binary gains and the log2 discount,
  ``DCG@K = Σ_{p=1..K} 1[r_p ∈ T_u] / log2(p + 1)`` and ``IDCG@K = Σ_{p=1..min(K, |T_u|)} 1 / log2(p + 1)``
  (Järvelin & Kekäläinen, "Cumulated gain-based evaluation of IR techniques", TOIS 2002).

Each metric is averaged over the users that have at least one target; users without targets are
skipped and counted (``n_skipped``). Targets are deduplicated per user and kept as given: a target that
is also a seen item can never be retrieved and still counts in |T_u| (the usual leave-out protocols
have none).

Entry points

* :func:`full_ranking_metrics` ranks the whole catalogue: ``scores`` is a (U, N) array or a callable
  ``scores(rows) -> (len(rows), N)`` evaluated on blocks of user rows, so that 6k x 4k or 10k x 100k
  never sit in memory at once. Seen items get ``-inf`` before the top-K.
* :func:`topk_metrics` takes the ranked lists of a channel that only returns its top-K
  (``-1`` pads short lists).

Top-K and ties (:func:`topk_indices`): ``np.argpartition`` selects the K largest scores per row, then
the K are ordered by score descending. Ties are broken deterministically by the LOWER item index,
including ties that straddle the K-th position (argpartition alone would pick an arbitrary subset
there). Items whose score is ``-inf`` (seen) are never retrieved: when fewer than K items have a
finite score the list is padded with ``-1``. NaN scores raise ``ValueError``.

Numpy and scipy only: this module must not import anything of untwine outside ``untwine.metrics``.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

__all__ = ["RetrievalMetrics", "full_ranking_metrics", "topk_metrics", "topk_indices"]

DEFAULT_KS: tuple[int, ...] = (20, 50, 100)

ScoreSource = np.ndarray | Callable[[np.ndarray], np.ndarray]
SeenItems = sp.spmatrix | sp.sparray | Sequence[np.ndarray] | None


@dataclass(frozen=True)
class RetrievalMetrics:
    """Means over the evaluated users; ``recall[k]`` etc. are keyed by K."""

    recall: dict[int, float]
    ndcg: dict[int, float]
    hit_rate: dict[int, float]
    n_users: int      # users with at least one target (the denominator of every mean)
    n_skipped: int    # users without targets

    def as_dict(self) -> dict[str, float | int]:
        """Flat ``{"recall@20": ..., "ndcg@20": ..., "hit_rate@20": ..., "n_users": ..., "n_skipped": ...}``."""
        out: dict[str, float | int] = {}
        for k in self.recall:
            out[f"recall@{k}"] = self.recall[k]
            out[f"ndcg@{k}"] = self.ndcg[k]
            out[f"hit_rate@{k}"] = self.hit_rate[k]
        out["n_users"] = self.n_users
        out["n_skipped"] = self.n_skipped
        return out


# --------------------------------------------------------------------------------------------
# top-K with deterministic ties
# --------------------------------------------------------------------------------------------
def topk_indices(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Row-wise top-k of a (B, N) score matrix: ((B, k) int64 item indices, (B, k) scores).

    Ordered by score descending, ties by lower index; ``-inf`` entries are not retrieved (index -1,
    score -inf). ``k`` larger than N is allowed (the tail is padding).
    """
    scores = np.asarray(scores)
    if scores.ndim != 2:
        raise ValueError(f"scores must be 2-D (rows, items), got shape {scores.shape}")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if not np.issubdtype(scores.dtype, np.floating):
        scores = scores.astype(np.float64)
    n_rows, n_items = scores.shape
    nan = np.isnan(scores)
    if nan.any():
        raise ValueError(f"scores contain {int(nan.sum())} NaN value(s)")
    kk = min(k, n_items)
    out_idx = np.full((n_rows, k), -1, dtype=np.int64)
    out_val = np.full((n_rows, k), -np.inf, dtype=scores.dtype)
    if n_rows == 0 or kk == 0:
        return out_idx, out_val
    if kk < n_items:
        cand = np.argpartition(scores, n_items - kk, axis=1)[:, n_items - kk:]
        cand_val = np.take_along_axis(scores, cand, axis=1)
        kth = cand_val.min(axis=1)
        n_above = (scores > kth[:, None]).sum(axis=1)
        n_tied = (scores == kth[:, None]).sum(axis=1)
        # argpartition picks an arbitrary subset of the items tied at the K-th score; rows where a tie
        # straddles the cut are redone so that the lowest indices among the tied items win
        straddle = np.flatnonzero(n_above + n_tied > kk)
        if len(straddle):
            s = scores[straddle]
            t = kth[straddle][:, None]
            tied = s == t
            keep = (s > t) | (tied & (np.cumsum(tied, axis=1) <= (kk - n_above[straddle])[:, None]))
            cand[straddle] = np.nonzero(keep)[1].reshape(len(straddle), kk)
            cand_val[straddle] = np.take_along_axis(s, cand[straddle], axis=1)
    else:
        cand = np.broadcast_to(np.arange(n_items, dtype=np.int64), (n_rows, n_items)).copy()
        cand_val = scores.copy()
    order = np.lexsort((cand, -cand_val), axis=1)  # score descending, then index ascending
    idx = np.take_along_axis(cand, order, axis=1).astype(np.int64, copy=False)
    val = np.take_along_axis(cand_val, order, axis=1)
    idx[np.isneginf(val)] = -1
    out_idx[:, :kk] = idx
    out_val[:, :kk] = val
    return out_idx, out_val


# --------------------------------------------------------------------------------------------
# metric core
# --------------------------------------------------------------------------------------------
def _check_ks(ks: Sequence[int]) -> tuple[int, ...]:
    ks = tuple(int(k) for k in ks)
    if not ks:
        raise ValueError("ks is empty")
    if any(k < 1 for k in ks):
        raise ValueError(f"every K must be >= 1, got {ks}")
    return tuple(sorted(set(ks)))


def _targets(targets: Sequence[np.ndarray], n_items: int | None) -> list[np.ndarray]:
    out = []
    for u, t in enumerate(targets):
        t = np.unique(np.asarray(t, dtype=np.int64).ravel())
        if len(t) and (t[0] < 0 or (n_items is not None and t[-1] >= n_items)):
            raise ValueError(f"targets of user {u} has item indices outside [0, {n_items})")
        out.append(t)
    return out


def _hits(topk: np.ndarray, rows: np.ndarray, targets: list[np.ndarray]) -> np.ndarray:
    """(B, L) bool: is topk[b, p] a target of user rows[b]? Padding (-1) and repeats are never hits."""
    b, width = topk.shape
    tgt_items = np.concatenate([targets[r] for r in rows]) if b else np.zeros(0, np.int64)
    tgt_rows = np.repeat(np.arange(b, dtype=np.int64), [len(targets[r]) for r in rows])
    # one key per (block row, item): the sets are disjoint across rows, so one isin tests all rows at once
    stride = int(max(topk.max(initial=0), tgt_items.max(initial=0))) + 1
    hits = np.isin(np.arange(b, dtype=np.int64)[:, None] * stride + topk, tgt_rows * stride + tgt_items)
    hits &= topk >= 0
    if width > 1:
        # an item repeated in a list counts once (at its first position)
        order = np.argsort(topk, axis=1, kind="stable")
        srt = np.take_along_axis(topk, order, axis=1)
        repeat_sorted = np.zeros_like(hits)
        repeat_sorted[:, 1:] = srt[:, 1:] == srt[:, :-1]
        repeat = np.zeros_like(hits)
        np.put_along_axis(repeat, order, repeat_sorted, axis=1)
        hits &= ~repeat
    return hits


class _Accumulator:
    """Per-K sums of recall, ndcg and hit rate over blocks of users."""

    def __init__(self, ks: tuple[int, ...]):
        self.ks = ks
        self.sums = {name: {k: 0.0 for k in ks} for name in ("recall", "ndcg", "hit_rate")}
        self.n_users = 0
        kmax = max(ks)
        discount = 1.0 / np.log2(np.arange(2, kmax + 2, dtype=np.float64))
        self.discount = discount
        self.ideal = np.concatenate([[0.0], np.cumsum(discount)])  # ideal[m] = IDCG with m relevant items

    def add(self, hits: np.ndarray, n_targets: np.ndarray) -> None:
        """hits (B, L) for ranks 1..L (L may be < max K: shorter lists), n_targets (B,) >= 1."""
        width = hits.shape[1]
        gains = hits * self.discount[:width]
        for k in self.ks:
            w = min(k, width)
            n_hit = hits[:, :w].sum(axis=1)
            self.sums["recall"][k] += float((n_hit / n_targets).sum())
            self.sums["hit_rate"][k] += float((n_hit > 0).sum())
            idcg = self.ideal[np.minimum(k, n_targets)]
            self.sums["ndcg"][k] += float((gains[:, :w].sum(axis=1) / idcg).sum())
        self.n_users += len(n_targets)

    def result(self, n_skipped: int) -> RetrievalMetrics:
        n = self.n_users
        mean = {name: {k: (v / n if n else float("nan")) for k, v in per_k.items()}
                for name, per_k in self.sums.items()}
        return RetrievalMetrics(recall=mean["recall"], ndcg=mean["ndcg"], hit_rate=mean["hit_rate"],
                                n_users=n, n_skipped=n_skipped)


# --------------------------------------------------------------------------------------------
# entry points
# --------------------------------------------------------------------------------------------
def _mask_seen(block: np.ndarray, rows: np.ndarray, seen: SeenItems) -> None:
    if seen is None:
        return
    if sp.issparse(seen):
        sub = sp.csr_matrix(seen[rows])
        r = np.repeat(np.arange(len(rows)), np.diff(sub.indptr))
        block[r, sub.indices] = -np.inf
        return
    items = [np.asarray(seen[r], dtype=np.int64).ravel() for r in rows]
    r = np.repeat(np.arange(len(rows)), [len(x) for x in items])
    if len(r):
        block[r, np.concatenate(items)] = -np.inf


def full_ranking_metrics(scores: ScoreSource, seen: SeenItems, targets: Sequence[np.ndarray],
                         ks: Sequence[int] = DEFAULT_KS, *, block_size: int = 1024) -> RetrievalMetrics:
    """Recall/NDCG/HitRate@K over the whole catalogue, the seen items excluded.

    ``scores``: (U, N) array, or a callable taking an int64 array of user rows and returning their
    (len(rows), N) scores (called on blocks of at most ``block_size`` rows, only for users with
    targets). ``seen``: CSR (U, N), a list of U item-index arrays, or None. ``targets``: a list of U
    item-index arrays (its length defines U). The inputs are never modified.
    """
    ks = _check_ks(ks)
    if block_size < 1:
        raise ValueError(f"block_size must be >= 1, got {block_size}")
    n_users = len(targets)
    dense = None if callable(scores) else np.asarray(scores)
    if dense is not None:
        if dense.ndim != 2 or dense.shape[0] != n_users:
            raise ValueError(f"scores has shape {dense.shape}, expected ({n_users}, n_items) for "
                             f"{n_users} target lists")
    n_items = None if dense is None else dense.shape[1]
    if seen is not None:
        n_seen = seen.shape[0] if sp.issparse(seen) else len(seen)
        if n_seen != n_users:
            raise ValueError(f"seen has {n_seen} rows, targets has {n_users}")
        if sp.issparse(seen) and n_items is not None and seen.shape[1] != n_items:
            raise ValueError(f"seen has {seen.shape[1]} columns, scores has {n_items}")
    tgt = _targets(targets, n_items)
    n_tgt = np.array([len(t) for t in tgt], dtype=np.int64)
    rows_all = np.flatnonzero(n_tgt > 0)
    acc = _Accumulator(ks)
    kmax = max(ks)
    for lo in range(0, len(rows_all), block_size):
        rows = rows_all[lo:lo + block_size]
        block = dense[rows] if dense is not None else np.asarray(scores(rows))
        if block.ndim != 2 or block.shape[0] != len(rows):
            raise ValueError(f"the score callable returned shape {block.shape} for {len(rows)} rows")
        if n_items is None:
            n_items = block.shape[1]
        elif block.shape[1] != n_items:
            raise ValueError(f"score blocks disagree on the number of items: {block.shape[1]} vs {n_items}")
        # a private float copy: -inf is written into it
        block = np.array(block, dtype=block.dtype if np.issubdtype(block.dtype, np.floating) else np.float64)
        _mask_seen(block, rows, seen)
        if max(int(tgt[r][-1]) for r in rows) >= n_items:
            raise ValueError(f"targets contain item indices >= n_items = {n_items}")
        topk, _ = topk_indices(block, kmax)
        acc.add(_hits(topk, rows, tgt), n_tgt[rows])
    return acc.result(n_skipped=int(n_users - len(rows_all)))


def topk_metrics(topk_items: np.ndarray | Sequence[np.ndarray], targets: Sequence[np.ndarray],
                 ks: Sequence[int] = DEFAULT_KS) -> RetrievalMetrics:
    """The same metrics for ranked lists a channel already produced: (U, L) item indices, best first.

    ``-1`` pads short lists; an item repeated in a list counts once. A K larger than L evaluates the
    whole list (so Recall@K for K > L equals Recall@L: the channel returned no more).
    """
    ks = _check_ks(ks)
    if isinstance(topk_items, np.ndarray):
        lists = topk_items
    else:
        width = max((len(x) for x in topk_items), default=0)
        lists = np.full((len(topk_items), max(width, 1)), -1, dtype=np.int64)
        for u, x in enumerate(topk_items):
            lists[u, :len(x)] = x
    lists = np.asarray(lists, dtype=np.int64)
    if lists.ndim != 2 or lists.shape[0] != len(targets):
        raise ValueError(f"topk_items has shape {lists.shape}, expected ({len(targets)}, L)")
    if (lists < -1).any():
        raise ValueError("topk_items may hold item indices >= 0 and -1 (padding) only")
    lists = lists[:, :max(ks)]  # ranks beyond the largest K never count
    tgt = _targets(targets, None)
    n_tgt = np.array([len(t) for t in tgt], dtype=np.int64)
    rows = np.flatnonzero(n_tgt > 0)
    acc = _Accumulator(ks)
    block = 4096
    for lo in range(0, len(rows), block):
        r = rows[lo:lo + block]
        acc.add(_hits(lists[r], r, tgt), n_tgt[r])
    return acc.result(n_skipped=int(len(targets) - len(rows)))
