"""Repeated exposures: how often the same (user, item) was shown before, inside a time window (SPEC 5, REW).

Counted over the splits in time order (train, then valid, then test), so the first validation rows see
the exposures of the end of training. Rows whose user or item is out of vocabulary (id OOV) get 0: their
raw values are unknown after encoding, and one OOV id stands for many values.
"""
from __future__ import annotations

import numpy as np

from untwine.data.vocab import OOV


def exposure_counts(users: np.ndarray, items: np.ndarray, timestamps: np.ndarray,
                    window_seconds: int | None = None) -> np.ndarray:
    """For each row, the number of earlier rows (by time, ties by row order) with the same (user, item)
    and a timestamp in [t - window, t]; every earlier row when ``window_seconds`` is None.

    Vectorised: rows sorted by (pair, time, row); the window start of each row is one searchsorted on
    the key pair * span + time, which cannot cross pairs because span exceeds any time gap plus the window."""
    users, items, ts = (np.asarray(a) for a in (users, items, timestamps))
    n = len(ts)
    if not (len(users) == len(items) == n):
        raise ValueError(f"users, items and timestamps must have one value per row, got {len(users)}, "
                         f"{len(items)}, {n}")
    if n == 0:
        return np.zeros(0, np.int64)
    _, pair = np.unique(np.stack([users.astype(np.int64), items.astype(np.int64)], axis=1), axis=0,
                        return_inverse=True)
    pair = pair.reshape(-1).astype(np.int64)
    t = ts.astype(np.int64) - int(ts.min())
    order = np.lexsort((np.arange(n), t, pair))
    if window_seconds is None:
        # rank inside the pair: position minus the pair's first position
        p_sorted = pair[order]
        first = np.searchsorted(p_sorted, p_sorted, side="left")
        counts_sorted = np.arange(n) - first
    else:
        w = int(window_seconds)
        if w < 0:
            raise ValueError(f"window_seconds must be >= 0, got {w}")
        span = int(t.max()) + w + 1
        if int(pair.max()) + 1 > np.iinfo(np.int64).max // span:
            raise OverflowError("too many (user, item) pairs x time span for an int64 key")
        key = pair[order] * span + t[order]
        counts_sorted = np.arange(n) - np.searchsorted(key, key - w, side="left")
    out = np.empty(n, np.int64)
    out[order] = counts_sorted
    out[(users == OOV) | (items == OOV)] = 0
    return out


def split_exposure_counts(splits: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]],
                          window_seconds: int | None) -> dict[str, np.ndarray]:
    """``exposure_counts`` over the concatenation of the splits (in the dict's order), cut back per split."""
    names = list(splits)
    cat = [np.concatenate([splits[s][k] for s in names]) for k in range(3)]
    counts = exposure_counts(*cat, window_seconds=window_seconds)
    out, start = {}, 0
    for s in names:
        n = len(splits[s][2])
        out[s] = counts[start:start + n]
        start += n
    return out
