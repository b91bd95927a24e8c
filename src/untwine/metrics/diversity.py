"""Diversity of a recommended list, as pure numpy functions.

* Intra-list distance (Ziegler, McNee, Konstan & Lausen, "Improving Recommendation Lists Through
  Topic Diversification", WWW 2005; with cosine distance as in most re-rank papers):

      ILD(v_1..v_n) = 2 / (n (n - 1)) * sum_{i < j} (1 - cos(v_i, v_j))

  the mean cosine distance over the n (n - 1) / 2 unordered pairs, in [0, 2]. It is ``nan`` for fewer
  than 2 vectors (no pair). A zero vector has no direction, so it raises ``ValueError`` rather than
  being given an arbitrary distance.
* Category coverage: ``|distinct categories in the list| / n_categories``. Without ``n_categories``
  the denominator is the list length, i.e. the share of slots that bring a category not seen
  earlier in the list (1 when all categories differ); it is ``nan`` for an empty list then.
* ``average_ild``: the mean ILD over many lists (e.g. one per request), lists shorter than 2 skipped.
"""
from __future__ import annotations

from collections.abc import Iterable

import numpy as np
from numpy.typing import ArrayLike

__all__ = ["average_ild", "category_coverage", "intra_list_distance"]


def intra_list_distance(vectors: ArrayLike) -> float:
    """Mean pairwise cosine distance ``1 - cos`` of the rows of ``vectors`` ((n, d))."""
    vecs = np.asarray(vectors, dtype=np.float64)
    if vecs.ndim != 2:
        raise ValueError(f"vectors must be 2-D (n, d), got shape {vecs.shape}")
    n = len(vecs)
    if n < 2:
        return float("nan")
    norms = np.linalg.norm(vecs, axis=1)
    if np.any(norms == 0):
        raise ValueError(f"{int(np.sum(norms == 0))} zero vectors: their cosine is undefined")
    unit = vecs / norms[:, None]
    cosine = unit @ unit.T
    upper = np.triu_indices(n, k=1)
    return float(np.mean(1.0 - cosine[upper]))


def category_coverage(categories: ArrayLike, n_categories: int | None = None) -> float:
    """Distinct categories of the list over ``n_categories`` (or over the list length if None)."""
    cats = np.asarray(categories)
    if cats.ndim != 1:
        raise ValueError(f"categories must be 1-D, got shape {cats.shape}")
    distinct = len(np.unique(cats))
    if n_categories is None:
        return distinct / len(cats) if len(cats) else float("nan")
    if n_categories < 1:
        raise ValueError(f"n_categories must be >= 1, got {n_categories}")
    if len(cats) and (not np.issubdtype(cats.dtype, np.integer) or cats.min() < 0 or cats.max() >= n_categories):
        raise ValueError(f"categories must be integers in [0, {n_categories}) when n_categories is given")
    return distinct / n_categories


def average_ild(lists: Iterable[ArrayLike]) -> float:
    """Mean of :func:`intra_list_distance` over ``lists`` of (n_i, d) vectors; ``nan`` if none has 2 rows."""
    values = [intra_list_distance(v) for v in lists]
    values = [v for v in values if not np.isnan(v)]
    return float(np.mean(values)) if values else float("nan")
