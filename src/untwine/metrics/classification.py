"""Binary classification metrics for ranking / CTR models, as pure numpy functions.

Every function accepts anything :func:`numpy.asarray` accepts (lists, numpy arrays, CPU torch
tensors) as 1-D arrays (an ``(n, 1)`` column is accepted and flattened). Scores/probabilities are
cast to float64, labels must be in ``{0, 1}`` (bool, int or float), groups may be any integer or
string array. All computations are vectorised (sorts, ``np.bincount``, ``np.add.reduceat``,
cumulative sums): there is no Python loop over rows or over groups, so they run on millions of
rows with ~100k groups.

Conventions

* ``auc`` returns ``nan`` when only one class is present; ``gauc``/``uauc`` skip (and count)
  groups with one class only and return ``nan`` when every group is skipped.
* ``normalized_entropy``/``rig`` return ``nan`` when the base rate is 0 or 1 (zero entropy);
  ``calibration`` returns ``nan`` when there are no positives.
* Invalid input raises ``ValueError``: different lengths (both lengths are named), labels outside
  ``{0, 1}``, NaN scores (the count is given), probabilities outside ``[0, 1]``, empty input.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

__all__ = [
    "GroupAUC",
    "auc",
    "gauc",
    "uauc",
    "logloss",
    "normalized_entropy",
    "rig",
    "calibration",
    "binary_report",
    "reliability_curve",
]


# --------------------------------------------------------------------------------------------
# validation
# --------------------------------------------------------------------------------------------
def _as_1d(x, name: str) -> np.ndarray:
    arr = np.asarray(x)
    if arr.ndim == 2 and arr.shape[1] == 1:
        arr = arr[:, 0]
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {arr.shape}")
    return arr


def _check_same_length(arrays: list[tuple[str, np.ndarray]]) -> None:
    (name0, a0), rest = arrays[0], arrays[1:]
    for name, a in rest:
        if len(a) != len(a0):
            raise ValueError(
                f"{name0} and {name} must have the same length, got {len(a0)} and {len(a)}"
            )
    if len(a0) == 0:
        raise ValueError(f"{name0} is empty")


def _scores(x: np.ndarray, name: str, probability: bool) -> np.ndarray:
    try:
        s = x.astype(np.float64, copy=False)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{name} must be numeric, got dtype {x.dtype}") from e
    n_nan = int(np.count_nonzero(np.isnan(s)))
    if n_nan:
        raise ValueError(f"{name} contain {n_nan} NaN value(s) out of {len(s)}")
    if probability:
        n_out = int(np.count_nonzero((s < 0.0) | (s > 1.0)))
        if n_out:
            raise ValueError(f"{name} must lie in [0, 1]; {n_out} value(s) out of {len(s)} do not")
    return s


def _labels(y: np.ndarray) -> np.ndarray:
    if y.dtype == np.bool_:
        return y.astype(np.float64)
    try:
        bad = ~((y == 0) | (y == 1))
    except (TypeError, ValueError):
        bad = np.ones(len(y), dtype=bool)
    bad = np.asarray(bad, dtype=bool)
    if bad.shape != y.shape:  # e.g. string labels compared elementwise to an int
        bad = np.ones(len(y), dtype=bool)
    n_bad = int(np.count_nonzero(bad))
    if n_bad:
        examples = np.unique(y[bad])[:5].tolist()
        raise ValueError(
            f"labels must be in {{0, 1}}; {n_bad} value(s) out of {len(y)} are not "
            f"(e.g. {examples})"
        )
    return y.astype(np.float64)


def _weights(w: np.ndarray) -> np.ndarray:
    w = w.astype(np.float64, copy=False)
    if not np.all(np.isfinite(w)):
        raise ValueError("weights must be finite")
    if np.any(w < 0):
        raise ValueError("weights must be non-negative")
    if not w.sum() > 0:
        raise ValueError("weights must have a positive sum")
    return w


def _validate(
    scores,
    labels,
    *,
    score_name: str = "scores",
    probability: bool = False,
    weights=None,
    groups=None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray | None]:
    s = _as_1d(scores, score_name)
    y = _as_1d(labels, "labels")
    arrays = [(score_name, s), ("labels", y)]
    w = g = None
    if weights is not None:
        w = _as_1d(weights, "weights")
        arrays.append(("weights", w))
    if groups is not None:
        g = _as_1d(groups, "groups")
        arrays.append(("groups", g))
    _check_same_length(arrays)
    s = _scores(s, score_name, probability)
    y = _labels(y)
    if w is not None:
        w = _weights(w)
    return s, y, w, g


# --------------------------------------------------------------------------------------------
# AUC
# --------------------------------------------------------------------------------------------
def _auc(s: np.ndarray, y: np.ndarray, w: np.ndarray | None) -> float:
    order = np.argsort(s, kind="stable")
    ss = s[order]
    wp = y[order] if w is None else (w * y)[order]
    wn = (1.0 - y)[order] if w is None else (w * (1.0 - y))[order]
    total_p, total_n = wp.sum(), wn.sum()
    if not (total_p > 0 and total_n > 0):
        return float("nan")
    # runs of tied scores
    starts = np.flatnonzero(np.concatenate(([True], ss[1:] != ss[:-1])))
    pos_run = np.add.reduceat(wp, starts)
    neg_run = np.add.reduceat(wn, starts)
    neg_below = np.cumsum(neg_run) - neg_run  # negative weight strictly below each run
    num = np.sum(pos_run * (neg_below + 0.5 * neg_run))
    return float(num / (total_p * total_n))


def auc(scores, labels, weights=None) -> float:
    r"""ROC AUC, tie-aware (the Mann-Whitney U statistic with average ranks).

    .. math::
        \mathrm{AUC} = \frac{\sum_{i \in P} \sum_{j \in N} w_i w_j
            \left([s_i > s_j] + \tfrac12 [s_i = s_j]\right)}{\sum_{i\in P} w_i \sum_{j\in N} w_j}

    with unit weights when ``weights`` is None. Computed in O(n log n) by one sort and a sum over
    runs of tied scores, with float64 accumulation; matches
    ``sklearn.metrics.roc_auc_score(labels, scores, sample_weight=weights)``.
    Returns ``nan`` when only one class (or one class with positive weight) is present.

    Reference: Hanley & McNeil (1982), "The meaning and use of the area under a receiver
    operating characteristic (ROC) curve", Radiology 143(1); Mann & Whitney (1947).

    Example:
    >>> auc([0.8, 0.5, 0.5, 0.2], [1, 1, 0, 0])
    0.875
    """
    s, y, w, _ = _validate(scores, labels, weights=weights)
    return _auc(s, y, w)


@dataclass(frozen=True)
class GroupAUC:
    """Result of :func:`gauc` / :func:`uauc`.

    ``value`` is the (weighted) mean per-group AUC over the ``n_groups_used`` groups having both
    classes; ``n_groups_skipped`` groups had one class only (``value`` is nan if all skipped).
    """

    value: float
    n_groups_used: int
    n_groups_skipped: int

    def __float__(self) -> float:
        return float(self.value)


def _group_aucs(s: np.ndarray, y: np.ndarray, g: np.ndarray):
    """Per-group tie-aware AUC, vectorised across groups.

    Returns ``(auc_per_group, size_per_group, valid_mask)``; ``auc`` is nan where invalid.
    """
    _, codes = np.unique(g, return_inverse=True)
    codes = codes.reshape(-1)
    n_groups = int(codes.max()) + 1
    order = np.lexsort((s, codes))  # primary: group, secondary: score
    gs, ss, ys = codes[order], s[order], y[order]
    n = len(ss)
    # a run = maximal block of equal (group, score)
    new_run = np.empty(n, dtype=bool)
    new_run[0] = True
    new_run[1:] = (gs[1:] != gs[:-1]) | (ss[1:] != ss[:-1])
    run_starts = np.flatnonzero(new_run)
    run_len = np.diff(np.append(run_starts, n))
    run_group = gs[run_starts]
    size = np.bincount(codes, minlength=n_groups)
    group_start = np.cumsum(size) - size
    # 1-based average rank within the group of every member of the run
    run_rank = (run_starts - group_start[run_group]) + (run_len + 1) / 2.0
    pos_run = np.add.reduceat(ys, run_starts)
    rank_sum_pos = np.bincount(run_group, weights=pos_run * run_rank, minlength=n_groups)
    n_pos = np.bincount(codes, weights=y, minlength=n_groups)
    n_neg = size - n_pos
    valid = (n_pos > 0) & (n_neg > 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        aucs = (rank_sum_pos - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg)
    aucs = np.where(valid, aucs, np.nan)
    return aucs, size, valid


def _gauc_from(aucs, size, valid) -> GroupAUC:
    used, skipped = int(valid.sum()), int((~valid).sum())
    if used == 0:
        return GroupAUC(float("nan"), 0, skipped)
    sw = size[valid].astype(np.float64)
    return GroupAUC(float(np.sum(aucs[valid] * sw) / sw.sum()), used, skipped)


def _uauc_from(aucs, size, valid) -> GroupAUC:
    used, skipped = int(valid.sum()), int((~valid).sum())
    if used == 0:
        return GroupAUC(float("nan"), 0, skipped)
    return GroupAUC(float(np.mean(aucs[valid])), used, skipped)


def gauc(scores, labels, groups) -> GroupAUC:
    r"""Group AUC: per-group tie-aware AUC, averaged with weights = group impressions (rows).

    .. math::
        \mathrm{GAUC} = \frac{\sum_{g \in G'} n_g \,\mathrm{AUC}_g}{\sum_{g \in G'} n_g}

    where :math:`G'` are the groups containing both classes (the others are skipped and counted
    in ``n_groups_skipped``) and :math:`\mathrm{AUC}_g = (R_g - n^+_g(n^+_g+1)/2)/(n^+_g n^-_g)`
    with :math:`R_g` the sum of the positives' average ranks within the group. Vectorised: one
    lexsort by (group, score), tie-averaged ranks from run boundaries, rank sums by bincount.

    Reference: Zhu et al. (2017), "Optimized Cost per Click in Taobao Display Advertising",
    KDD; Zhou et al. (2018), "Deep Interest Network for Click-Through Rate Prediction", KDD.

    Example:
    >>> gauc([0.8, 0.5, 0.5, 0.2, 0.3, 0.6, 0.9], [1, 1, 0, 0, 1, 0, 1], [1, 1, 1, 1, 2, 2, 3])
    GroupAUC(value=0.5833333333333334, n_groups_used=2, n_groups_skipped=1)
    """
    s, y, _, g = _validate(scores, labels, groups=groups)
    return _gauc_from(*_group_aucs(s, y, g))


def uauc(scores, labels, groups) -> GroupAUC:
    r"""User AUC: per-group tie-aware AUC, unweighted mean over the groups having both classes.

    .. math::
        \mathrm{UAUC} = \frac{1}{|G'|} \sum_{g \in G'} \mathrm{AUC}_g

    Groups with one class only are skipped and counted (see :func:`gauc`).

    Reference: Zhou et al. (2018), "Deep Interest Network for Click-Through Rate Prediction",
    KDD (user-weighted AUC); Zhu et al. (2017), KDD.

    Example:
    >>> uauc([0.8, 0.5, 0.5, 0.2, 0.3, 0.6, 0.9], [1, 1, 0, 0, 1, 0, 1], [1, 1, 1, 1, 2, 2, 3])
    GroupAUC(value=0.4375, n_groups_used=2, n_groups_skipped=1)
    """
    s, y, _, g = _validate(scores, labels, groups=groups)
    return _uauc_from(*_group_aucs(s, y, g))


# --------------------------------------------------------------------------------------------
# probability metrics
# --------------------------------------------------------------------------------------------
def _logloss(p: np.ndarray, y: np.ndarray, eps: float, w: np.ndarray | None) -> float:
    p = np.clip(p, eps, 1.0 - eps)
    losses = np.where(y == 1.0, -np.log(p), -np.log1p(-p))
    if w is None:
        return float(np.mean(losses))
    return float(np.sum(w * losses) / np.sum(w))


def logloss(probs, labels, eps: float = 1e-7, weights=None) -> float:
    r"""Mean binary cross-entropy with probabilities clipped to ``[eps, 1 - eps]``.

    .. math::
        \mathrm{LL} = -\frac{\sum_i w_i \left(y_i \log p_i + (1-y_i)\log(1-p_i)\right)}
                          {\sum_i w_i}

    with unit weights when ``weights`` is None; matches ``sklearn.metrics.log_loss``.

    Reference: Bishop (2006), "Pattern Recognition and Machine Learning", sec. 4.3.2.

    Example:
    >>> round(logloss([0.5, 0.5], [1, 0]), 6)
    0.693147
    """
    if not 0.0 <= eps < 0.5:
        raise ValueError(f"eps must be in [0, 0.5), got {eps}")
    p, y, w, _ = _validate(probs, labels, score_name="probs", probability=True, weights=weights)
    return _logloss(p, y, eps, w)


def _base_entropy(y: np.ndarray) -> float:
    r = float(np.mean(y))
    if r <= 0.0 or r >= 1.0:
        return 0.0
    return float(-(r * np.log(r) + (1.0 - r) * np.log1p(-r)))


def _ne(ll: float, y: np.ndarray) -> float:
    h = _base_entropy(y)
    return ll / h if h > 0.0 else float("nan")


def normalized_entropy(probs, labels, eps: float = 1e-7) -> float:
    r"""Normalized entropy: log loss divided by the entropy of the empirical base rate.

    .. math::
        \mathrm{NE} = \frac{\mathrm{LL}(p, y)}{-\left(\bar y \log \bar y + (1-\bar y)\log(1-\bar y)\right)},
        \qquad \bar y = \tfrac1n \textstyle\sum_i y_i

    NE = 1 for a model that always predicts the base rate, lower is better. ``nan`` when the
    base rate is 0 or 1. ``eps`` is the log loss clipping (see :func:`logloss`).

    Reference: He et al. (2014), "Practical Lessons from Predicting Clicks on Ads at Facebook",
    ADKDD.

    Example:
    >>> normalized_entropy([0.25, 0.25, 0.25, 0.25], [1, 0, 0, 0])
    1.0
    """
    p, y, _, _ = _validate(probs, labels, score_name="probs", probability=True)
    return _ne(_logloss(p, y, eps, None), y)


def rig(probs, labels, eps: float = 1e-7) -> float:
    r"""Relative information gain, ``RIG = 1 - NE`` (see :func:`normalized_entropy`).

    .. math::
        \mathrm{RIG} = 1 - \frac{\mathrm{LL}(p, y)}{H(\bar y)}

    Higher is better; 0 for predicting the base rate. ``nan`` when the base rate is 0 or 1.

    Reference: He et al. (2014), "Practical Lessons from Predicting Clicks on Ads at Facebook",
    ADKDD; Yi et al. (2013), "Predictive model performance: offline and online evaluations", KDD.

    Example:
    >>> rig([0.25, 0.25, 0.25, 0.25], [1, 0, 0, 0])
    0.0
    """
    return 1.0 - normalized_entropy(probs, labels, eps=eps)


def _calibration(p: np.ndarray, y: np.ndarray) -> float:
    pos = float(np.sum(y))
    if pos == 0.0:
        return float("nan")
    return float(np.sum(p) / pos)


def calibration(probs, labels) -> float:
    r"""Calibration ratio PCOC: mean predicted probability over observed positive rate.

    .. math::
        \mathrm{PCOC} = \frac{\tfrac1n \sum_i p_i}{\tfrac1n \sum_i y_i}
                      = \frac{\sum_i p_i}{\sum_i y_i}

    1 is perfectly calibrated on average, > 1 over-predicts. ``nan`` when there are no positives.

    Reference: He et al. (2014), "Practical Lessons from Predicting Clicks on Ads at Facebook",
    ADKDD (sec. 3, calibration).

    Example:
    >>> calibration([0.25, 0.5], [1, 0])
    0.75
    """
    p, y, _, _ = _validate(probs, labels, score_name="probs", probability=True)
    return _calibration(p, y)


def binary_report(probs, labels, groups=None) -> dict[str, float]:
    """All binary metrics at once, validating and sorting the inputs once.

    Keys: ``auc``, ``logloss``, ``ne``, ``rig``, ``calibration`` and, when ``groups`` is given,
    ``gauc``, ``uauc``, ``gauc_groups_used``, ``gauc_groups_skipped`` (counts as floats). See the
    individual functions for formulas and references (logloss uses the default ``eps=1e-7``).

    Example:
    >>> binary_report([0.8, 0.5, 0.5, 0.2], [1, 1, 0, 0])["auc"]
    0.875
    """
    p, y, _, g = _validate(probs, labels, score_name="probs", probability=True, groups=groups)
    ll = _logloss(p, y, 1e-7, None)
    ne = _ne(ll, y)
    out: dict[str, float] = {
        "auc": _auc(p, y, None),
        "logloss": ll,
        "ne": ne,
        "rig": 1.0 - ne,
        "calibration": _calibration(p, y),
    }
    if g is not None:
        per_group = _group_aucs(p, y, g)
        ga, ua = _gauc_from(*per_group), _uauc_from(*per_group)
        out["gauc"] = ga.value
        out["uauc"] = ua.value
        out["gauc_groups_used"] = float(ga.n_groups_used)
        out["gauc_groups_skipped"] = float(ga.n_groups_skipped)
    return out


def reliability_curve(
    probs,
    labels,
    n_bins: int = 10,
    strategy: Literal["uniform", "quantile"] = "uniform",
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    r"""Reliability (calibration) curve: per bin, mean prediction, observed rate and count.

    Bin edges are ``linspace(0, 1, n_bins + 1)`` (``"uniform"``) or the quantiles of ``probs``
    (``"quantile"``); bins are right-closed ``(e_k, e_{k+1}]`` except the first, which also holds
    its left edge. For each non-empty bin :math:`B`:

    .. math::
        \bar p_B = \frac{1}{|B|}\sum_{i \in B} p_i, \qquad
        \bar y_B = \frac{1}{|B|}\sum_{i \in B} y_i, \qquad |B|

    Empty bins are dropped (so the counts sum to n), like ``sklearn.calibration.calibration_curve``
    (whose ``(prob_true, prob_pred)`` equal ``(observed, mean_pred)`` here).

    Reference: DeGroot & Fienberg (1983), "The Comparison and Evaluation of Forecasters",
    The Statistician 32; Niculescu-Mizil & Caruana (2005), "Predicting Good Probabilities
    with Supervised Learning", ICML.

    Example:
    >>> reliability_curve([0.1, 0.2, 0.7, 0.9], [0, 1, 1, 1], n_bins=2)[2]
    array([2, 2])
    """
    if isinstance(n_bins, bool) or not isinstance(n_bins, (int, np.integer)) or n_bins < 1:
        raise ValueError(f"n_bins must be a positive integer, got {n_bins!r}")
    if strategy not in ("uniform", "quantile"):
        raise ValueError(f"strategy must be 'uniform' or 'quantile', got {strategy!r}")
    p, y, _, _ = _validate(probs, labels, score_name="probs", probability=True)
    if strategy == "uniform":
        edges = np.linspace(0.0, 1.0, n_bins + 1)
    else:
        edges = np.quantile(p, np.linspace(0.0, 1.0, n_bins + 1))
    bin_ids = np.searchsorted(edges[1:-1], p)
    counts = np.bincount(bin_ids, minlength=n_bins)
    sum_p = np.bincount(bin_ids, weights=p, minlength=n_bins)
    sum_y = np.bincount(bin_ids, weights=y, minlength=n_bins)
    nz = counts > 0
    return sum_p[nz] / counts[nz], sum_y[nz] / counts[nz], counts[nz].astype(np.int64)
