"""AUC, GAUC and logloss from predictions, tie-aware, numpy only (untwine is not importable here).

Every peer's predictions go through these same functions, so metrics compare across libraries.
"""
from __future__ import annotations

import numpy as np


def _average_ranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks of ``x``; tied values share the mean of their ranks."""
    order = np.argsort(x, kind="mergesort")
    xs = x[order]
    # start index of each run of equal values
    starts = np.flatnonzero(np.r_[True, xs[1:] != xs[:-1]])
    ends = np.r_[starts[1:], len(xs)]  # exclusive
    run_rank = (starts + ends + 1) / 2.0  # mean of ranks starts+1 .. ends
    ranks = np.empty(len(x), dtype=np.float64)
    ranks[order] = np.repeat(run_rank, ends - starts)
    return ranks


def auc(y_true, y_score) -> float:
    """Area under the ROC curve; a tie between a positive and a negative counts one half.

    Returns nan when only one class is present.
    """
    y = np.asarray(y_true, dtype=np.float64).ravel() > 0.5
    s = np.asarray(y_score, dtype=np.float64).ravel()
    n_pos = int(y.sum())
    n_neg = len(y) - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    r = _average_ranks(s)
    return float((r[y].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def logloss(y_true, y_score, eps: float = 1e-7) -> float:
    y = np.asarray(y_true, dtype=np.float64).ravel()
    p = np.clip(np.asarray(y_score, dtype=np.float64).ravel(), eps, 1.0 - eps)
    return float(-np.mean(y * np.log(p) + (1.0 - y) * np.log(1.0 - p)))


def gauc(y_true, y_score, groups) -> dict:
    """Impression-weighted mean of per-group AUC; groups with one class only are skipped and counted.

    Returns ``{"gauc", "groups_used", "groups_skipped", "rows_used"}``.
    """
    y = np.asarray(y_true, dtype=np.float64).ravel() > 0.5
    s = np.asarray(y_score, dtype=np.float64).ravel()
    _, g = np.unique(np.asarray(groups), return_inverse=True)
    order = np.argsort(g, kind="mergesort")
    g_sorted = g[order]
    bounds = np.flatnonzero(np.r_[True, g_sorted[1:] != g_sorted[:-1], True])
    total, weight, used, skipped = 0.0, 0, 0, 0
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        idx = order[lo:hi]
        yy = y[idx]
        k = int(yy.sum())
        if k == 0 or k == len(idx):
            skipped += 1
            continue
        total += auc(yy, s[idx]) * len(idx)
        weight += len(idx)
        used += 1
    return {"gauc": total / weight if weight else float("nan"), "groups_used": used,
            "groups_skipped": skipped, "rows_used": weight}


def evaluate(y_true, y_score, groups=None) -> dict:
    out = {"n": int(np.asarray(y_true).size), "auc": auc(y_true, y_score), "logloss": logloss(y_true, y_score),
           "positive_rate": float(np.mean(np.asarray(y_true, dtype=np.float64) > 0.5)),
           "mean_prediction": float(np.mean(y_score))}
    if groups is not None:
        out.update(gauc(y_true, y_score, groups))
    return out
