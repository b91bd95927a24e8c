"""Maximal Marginal Relevance (Carbonell & Goldstein, "The Use of MMR, Diversity-Based Reranking for
Reordering Documents and Producing Summaries", SIGIR 1998), with an optional sliding window.

Items are selected one at a time; with ``Y`` the items selected so far and ``Y_w`` the last ``window``
of them (all of ``Y`` when ``window`` is None), the next item is

    argmax_{i not in Y}  lam * rel_i - (1 - lam) * max_{j in Y_w} sim(i, j)

and the max-term is 0 while ``Y_w`` is empty, so the first pick is the most relevant item.

* ``lam`` in [0, 1] is the relevance / diversity trade-off: 1 is the relevance order, 0 pure novelty.
* ``sim`` is the cosine of the item embeddings, or any given symmetric similarity matrix.
* ``rel`` is min-max scaled to [0, 1] by default (``normalize_relevance``), so that it lives on the
  scale of a cosine and a given ``lam`` means the same for logits, probabilities or eCPM.
* The window is a display concern: with ``window = w`` an item is only compared with the ``w`` items
  shown just before it, so a near-duplicate may come back once ``w`` other items separate them.

Cost: one similarity row per selected item, O(N d) each. Without a window the max-term is kept as a
running maximum (O(N) per step, O(K N) in all); with a window it is the max over the last ``w`` cached
rows (O(w N) per step). Ties go to the lowest index.
"""
from __future__ import annotations

from typing import Literal

import numpy as np
from numpy.typing import ArrayLike
from pydantic import BaseModel, ConfigDict, Field

from untwine.rerank._inputs import SimilarityRows, check_k, min_max_scale, relevance_vector

__all__ = ["MMRConfig", "mmr"]


class MMRConfig(BaseModel):
    """MMR options (the ``diversity`` block of a re-rank config with ``method: mmr``)."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    method: Literal["mmr"] = "mmr"
    lam: float = Field(0.5, ge=0.0, le=1.0)
    window: int | None = Field(None, ge=1)  # compare with the last `window` selected; None = all selected
    normalize_relevance: bool = True


def mmr(relevance: ArrayLike, k: int, *, embeddings: ArrayLike | None = None,
        similarity: ArrayLike | None = None, lam: float = 0.5, window: int | None = None,
        normalize_relevance: bool = True) -> np.ndarray:
    """Indices of the ``min(k, N)`` items MMR selects, in selection order.

    Pass exactly one of ``embeddings`` ((N, d), cosine similarity) or ``similarity`` ((N, N)).
    """
    rel = relevance_vector(relevance)
    check_k(k)
    if not 0.0 <= lam <= 1.0:
        raise ValueError(f"lam must be in [0, 1], got {lam}")
    if window is not None and window < 1:
        raise ValueError(f"window must be >= 1 or None, got {window}")
    sims = SimilarityRows(len(rel), embeddings, similarity)
    if normalize_relevance:
        rel = min_max_scale(rel)
    n_select = min(k, len(rel))
    # -inf, not 0: cosines can be negative and the max over the selected items must not be clipped
    running_max = np.full(len(rel), -np.inf)
    recent_rows: list[np.ndarray] = []
    chosen = np.empty(n_select, dtype=np.int64)
    # lam * rel - (1 - lam) * penalty, written into one buffer per step (the same values as computing it
    # afresh): the loop runs per request, over ~100 candidates, where numpy's per-call cost dominates
    lam_rel, weight, score = lam * rel, 1.0 - lam, np.empty_like(rel)
    for step in range(n_select):
        if step == 0:
            score[:] = lam_rel  # nothing selected: no redundancy
        else:
            np.multiply(_redundancy(running_max, recent_rows, window, has_selection=True), weight, out=score)
            np.subtract(lam_rel, score, out=score)
        score[chosen[:step]] = -np.inf
        j = int(score.argmax())
        chosen[step] = j
        row = sims.row(j)
        if window is None:
            np.maximum(running_max, row, out=running_max)
        else:
            recent_rows.append(row)
            del recent_rows[:-window]  # only the last `window` rows can ever matter again
    return chosen


def _redundancy(running_max: np.ndarray, recent_rows: list[np.ndarray], window: int | None,
                has_selection: bool) -> np.ndarray:
    """max_{j in Y_w} sim(i, j) for every i; 0 before anything is selected."""
    if not has_selection:
        return np.zeros_like(running_max)
    if window is None:
        return running_max
    return np.max(recent_rows, axis=0)
