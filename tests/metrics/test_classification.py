"""Tests for untwine.metrics.classification against scikit-learn and hand-computed cases."""
from __future__ import annotations

import doctest
import math
from fractions import Fraction

import numpy as np
import pytest
from sklearn.calibration import calibration_curve
from sklearn.metrics import log_loss, roc_auc_score

import untwine.metrics as M
from untwine.metrics import classification as C


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------
def _random_binary(seed: int, n: int, decimals: int | None = 1):
    """Scores with many ties (rounded), labels correlated with scores, both classes present."""
    rng = np.random.default_rng(seed)
    scores = rng.random(n)
    labels = (rng.random(n) < 0.3 + 0.4 * scores).astype(int)
    labels[0], labels[1] = 0, 1
    if decimals is not None:
        scores = np.round(scores, decimals)
    return scores, labels


def _naive_group_aucs(scores, labels, groups):
    """Reference: loop over groups, sklearn per group; returns list of (auc, size), n_skipped."""
    used, skipped = [], 0
    for g in np.unique(groups):
        m = groups == g
        if len(np.unique(labels[m])) < 2:
            skipped += 1
            continue
        used.append((roc_auc_score(labels[m], scores[m]), int(m.sum())))
    return used, skipped


def _random_groups(seed: int, n: int, n_groups: int, as_str: bool = False):
    rng = np.random.default_rng(seed)
    groups = rng.integers(0, n_groups, size=n)
    scores = np.round(rng.random(n), 1)  # many ties within groups
    labels = (rng.random(n) < 0.2 + 0.6 * scores).astype(int)
    # force some one-class groups and a singleton group
    labels[groups == 0] = 1
    labels[groups == 1] = 0
    groups = np.append(groups, n_groups + 5)
    scores = np.append(scores, 0.5)
    labels = np.append(labels, 1)
    if as_str:
        groups = np.array([f"user_{g}" for g in groups])
    return scores, labels, groups


# --------------------------------------------------------------------------------------------
# auc
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", [0, 1, 2, 3])
@pytest.mark.parametrize("n", [2, 3, 10, 101, 5000])
@pytest.mark.parametrize("decimals", [0, 1, 2, None])
def test_auc_matches_sklearn_with_ties(seed, n, decimals):
    scores, labels = _random_binary(seed, n, decimals)
    assert M.auc(scores, labels) == pytest.approx(roc_auc_score(labels, scores), abs=1e-9)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("n", [2, 7, 100, 3000])
def test_weighted_auc_matches_sklearn(seed, n):
    scores, labels = _random_binary(seed, n, 1)
    rng = np.random.default_rng(100 + seed)
    weights = rng.exponential(size=n)
    if n > 10:
        weights[rng.random(n) < 0.1] = 0.0  # zero weights are ignored, as in sklearn
    expected = roc_auc_score(labels, scores, sample_weight=weights)
    assert M.auc(scores, labels, weights=weights) == pytest.approx(expected, abs=1e-9)


def test_auc_unit_weights_equal_unweighted():
    scores, labels = _random_binary(7, 500, 1)
    assert M.auc(scores, labels, weights=np.ones(500)) == pytest.approx(
        M.auc(scores, labels), abs=1e-12
    )


def test_auc_hand_computed_with_tie():
    # pos {0.8, 0.5}, neg {0.5, 0.2}: pairs 1 + 1 + 1/2 (tie) + 1 = 3.5 of 4
    assert M.auc([0.8, 0.5, 0.5, 0.2], [1, 1, 0, 0]) == float(Fraction(7, 8))
    # all tied -> 1/2; perfectly inverted -> 0
    assert M.auc([0.3, 0.3, 0.3], [1, 0, 1]) == 0.5
    assert M.auc([0.1, 0.9], [1, 0]) == 0.0


def test_weighted_auc_hand_computed():
    # weight 2 on the 0.8 positive: (2*1 + 2*1 + 1*0.5 + 1*1) / (3 * 2) = 5.5 / 6
    got = M.auc([0.8, 0.5, 0.5, 0.2], [1, 1, 0, 0], weights=[2, 1, 1, 1])
    assert got == pytest.approx(float(Fraction(11, 12)), abs=1e-15)


def test_auc_one_class_is_nan():
    assert math.isnan(M.auc([0.1, 0.2, 0.3], [1, 1, 1]))
    assert math.isnan(M.auc([0.1, 0.2, 0.3], [0, 0, 0]))
    # positives present but with zero weight
    assert math.isnan(M.auc([0.1, 0.2, 0.3], [0, 1, 0], weights=[1, 0, 1]))


def test_auc_accepts_lists_bools_and_columns():
    scores, labels = _random_binary(3, 50, 1)
    ref = roc_auc_score(labels, scores)
    assert M.auc(list(scores), list(labels)) == pytest.approx(ref, abs=1e-12)
    assert M.auc(scores.astype(np.float32), labels.astype(bool)) == pytest.approx(
        roc_auc_score(labels, scores.astype(np.float32)), abs=1e-9
    )
    assert M.auc(scores[:, None], labels.astype(float)) == pytest.approx(ref, abs=1e-12)


# --------------------------------------------------------------------------------------------
# gauc / uauc
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("n,n_groups", [(40, 5), (500, 30), (5000, 400)])
@pytest.mark.parametrize("as_str", [False, True])
def test_gauc_uauc_match_naive_reference(seed, n, n_groups, as_str):
    scores, labels, groups = _random_groups(seed, n, n_groups, as_str)
    used, skipped = _naive_group_aucs(scores, labels, groups)
    assert skipped >= 3  # groups 0 and 1 (one class) and the singleton group
    aucs = np.array([a for a, _ in used])
    sizes = np.array([s for _, s in used], dtype=float)

    g = M.gauc(scores, labels, groups)
    assert isinstance(g, M.GroupAUC)
    assert g.n_groups_used == len(used)
    assert g.n_groups_skipped == skipped
    assert g.value == pytest.approx(np.sum(aucs * sizes) / sizes.sum(), abs=1e-9)

    u = M.uauc(scores, labels, groups)
    assert (u.n_groups_used, u.n_groups_skipped) == (len(used), skipped)
    assert u.value == pytest.approx(aucs.mean(), abs=1e-9)


def test_gauc_hand_computed():
    # group 1: AUC 7/8 (tie), 4 rows; group 2: AUC 0, 2 rows; group 3: positives only -> skipped
    scores = [0.8, 0.5, 0.5, 0.2, 0.3, 0.6, 0.9, 0.1]
    labels = [1, 1, 0, 0, 1, 0, 1, 1]
    groups = ["a", "a", "a", "a", "b", "b", "c", "c"]
    g = M.gauc(scores, labels, groups)
    assert g.value == pytest.approx(float(Fraction(7, 12)), abs=1e-15)
    assert (g.n_groups_used, g.n_groups_skipped) == (2, 1)
    u = M.uauc(scores, labels, groups)
    assert u.value == pytest.approx(float(Fraction(7, 16)), abs=1e-15)
    assert (u.n_groups_used, u.n_groups_skipped) == (2, 1)


def test_gauc_rows_order_independent_and_single_group_equals_auc():
    scores, labels, groups = _random_groups(5, 800, 20)
    perm = np.random.default_rng(0).permutation(len(scores))
    assert M.gauc(scores, labels, groups).value == pytest.approx(
        M.gauc(scores[perm], labels[perm], groups[perm]).value, abs=1e-12
    )
    s, y = _random_binary(1, 300, 1)
    assert M.gauc(s, y, np.zeros(300, dtype=int)).value == pytest.approx(M.auc(s, y), abs=1e-12)


def test_gauc_all_groups_skipped_is_nan():
    g = M.gauc([0.1, 0.2, 0.3, 0.4], [1, 1, 0, 0], [1, 1, 2, 2])
    assert math.isnan(g.value)
    assert (g.n_groups_used, g.n_groups_skipped) == (0, 2)
    u = M.uauc([0.1, 0.2, 0.3, 0.4], [1, 1, 0, 0], [1, 1, 2, 2])
    assert math.isnan(u.value)


def test_group_auc_is_frozen():
    g = M.gauc([0.1, 0.2], [0, 1], [0, 0])
    with pytest.raises(Exception):
        g.value = 0.0  # type: ignore[misc]
    assert float(g) == 1.0


# --------------------------------------------------------------------------------------------
# logloss / NE / RIG / calibration
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("n", [2, 50, 2000])
def test_logloss_matches_sklearn(seed, n):
    rng = np.random.default_rng(seed)
    probs = rng.uniform(0.01, 0.99, n)
    labels = (rng.random(n) < probs).astype(int)
    assert M.logloss(probs, labels) == pytest.approx(log_loss(labels, probs, labels=[0, 1]), abs=1e-12)
    w = rng.exponential(size=n)
    assert M.logloss(probs, labels, weights=w) == pytest.approx(
        log_loss(labels, probs, sample_weight=w, labels=[0, 1]), abs=1e-12
    )


def test_logloss_clipping():
    assert M.logloss([0.0], [1], eps=1e-7) == pytest.approx(-math.log(1e-7), rel=1e-12)
    assert M.logloss([1.0], [0], eps=1e-3) == pytest.approx(-math.log(1e-3), rel=1e-9)
    assert M.logloss([1.0, 0.0], [1, 0]) == pytest.approx(-math.log(1 - 1e-7), rel=1e-9)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ne_of_base_rate_is_one_and_rig_zero(seed):
    rng = np.random.default_rng(seed)
    labels = (rng.random(1000) < 0.2).astype(int)
    probs = np.full(1000, labels.mean())
    assert M.normalized_entropy(probs, labels) == pytest.approx(1.0, abs=1e-12)
    assert M.rig(probs, labels) == pytest.approx(0.0, abs=1e-12)
    # an informative model beats the base rate
    p_good = np.where(labels == 1, 0.7, 0.1)
    assert M.normalized_entropy(p_good, labels) < 1.0
    assert M.rig(p_good, labels) > 0.0


def test_ne_hand_computed():
    # base rate 1/4, H = -(1/4 ln 1/4 + 3/4 ln 3/4); LL of p = 1/2 everywhere = ln 2
    h = -(0.25 * math.log(0.25) + 0.75 * math.log(0.75))
    ne = M.normalized_entropy([0.5] * 4, [1, 0, 0, 0])
    assert ne == pytest.approx(math.log(2) / h, rel=1e-12)
    assert M.rig([0.5] * 4, [1, 0, 0, 0]) == pytest.approx(1 - math.log(2) / h, rel=1e-12)
    assert math.isnan(M.normalized_entropy([0.5, 0.5], [1, 1]))


def test_calibration():
    rng = np.random.default_rng(0)
    labels = (rng.random(500) < 0.3).astype(int)
    assert M.calibration(np.full(500, labels.mean()), labels) == pytest.approx(1.0, abs=1e-12)
    assert M.calibration([0.25, 0.5], [1, 0]) == pytest.approx(0.75, abs=1e-15)
    assert M.calibration([0.2, 0.4, 0.6], [1, 1, 0]) == pytest.approx(0.6, abs=1e-15)
    assert math.isnan(M.calibration([0.2, 0.4], [0, 0]))


# --------------------------------------------------------------------------------------------
# binary_report
# --------------------------------------------------------------------------------------------
def test_binary_report_keys_and_values():
    scores, labels, groups = _random_groups(11, 1000, 50)
    probs = np.clip(scores, 0.05, 0.95)
    rep = M.binary_report(probs, labels)
    assert set(rep) == {"auc", "logloss", "ne", "rig", "calibration"}
    rep = M.binary_report(probs, labels, groups)
    assert set(rep) == {
        "auc", "logloss", "ne", "rig", "calibration",
        "gauc", "uauc", "gauc_groups_used", "gauc_groups_skipped",
    }
    assert rep["auc"] == pytest.approx(roc_auc_score(labels, probs), abs=1e-9)
    assert rep["logloss"] == pytest.approx(log_loss(labels, probs), abs=1e-12)
    assert rep["ne"] == pytest.approx(M.normalized_entropy(probs, labels), abs=1e-15)
    assert rep["rig"] == pytest.approx(1 - rep["ne"], abs=1e-15)
    assert rep["calibration"] == pytest.approx(probs.sum() / labels.sum(), rel=1e-12)
    g = M.gauc(probs, labels, groups)
    assert rep["gauc"] == g.value
    assert rep["uauc"] == M.uauc(probs, labels, groups).value
    assert rep["gauc_groups_used"] == g.n_groups_used
    assert rep["gauc_groups_skipped"] == g.n_groups_skipped
    assert all(isinstance(v, float) for v in rep.values())


# --------------------------------------------------------------------------------------------
# reliability_curve
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("strategy", ["uniform", "quantile"])
@pytest.mark.parametrize("n_bins", [1, 5, 10, 37])
@pytest.mark.parametrize("seed", [0, 1])
def test_reliability_curve_counts_and_sklearn(strategy, n_bins, seed):
    rng = np.random.default_rng(seed)
    n = 1234
    probs = rng.beta(2, 5, n)
    probs[:20] = 0.0
    probs[20:30] = 1.0
    probs[30:40] = 0.5  # exactly on an interior uniform edge for even n_bins
    labels = (rng.random(n) < probs).astype(int)
    mean_pred, observed, counts = M.reliability_curve(probs, labels, n_bins, strategy)
    assert counts.sum() == n
    assert len(mean_pred) == len(observed) == len(counts) <= n_bins
    assert np.all(counts > 0)
    assert np.all(np.diff(mean_pred) > 0)
    prob_true, prob_pred = calibration_curve(labels, probs, n_bins=n_bins, strategy=strategy)
    np.testing.assert_allclose(observed, prob_true, atol=1e-12)
    np.testing.assert_allclose(mean_pred, prob_pred, atol=1e-12)


def test_reliability_curve_hand_computed():
    mean_pred, observed, counts = M.reliability_curve(
        [0.1, 0.2, 0.7, 0.9, 0.95], [0, 1, 1, 0, 1], n_bins=2
    )
    np.testing.assert_allclose(mean_pred, [0.15, (0.7 + 0.9 + 0.95) / 3], atol=1e-15)
    np.testing.assert_allclose(observed, [0.5, 2 / 3], atol=1e-15)
    np.testing.assert_array_equal(counts, [2, 3])


def test_reliability_curve_bad_args():
    with pytest.raises(ValueError, match="n_bins"):
        M.reliability_curve([0.1, 0.2], [0, 1], n_bins=0)
    with pytest.raises(ValueError, match="strategy"):
        M.reliability_curve([0.1, 0.2], [0, 1], strategy="kmeans")  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------
# validation
# --------------------------------------------------------------------------------------------
_CALLS = {
    "auc": lambda s, y: M.auc(s, y),
    "auc_w": lambda s, y: M.auc(s, y, weights=np.ones(len(y))),
    "gauc": lambda s, y: M.gauc(s, y, np.zeros(len(y), dtype=int)),
    "uauc": lambda s, y: M.uauc(s, y, np.zeros(len(y), dtype=int)),
    "logloss": lambda s, y: M.logloss(s, y),
    "ne": lambda s, y: M.normalized_entropy(s, y),
    "rig": lambda s, y: M.rig(s, y),
    "calibration": lambda s, y: M.calibration(s, y),
    "report": lambda s, y: M.binary_report(s, y, np.zeros(len(y), dtype=int)),
    "reliability": lambda s, y: M.reliability_curve(s, y),
}


@pytest.mark.parametrize("fn", list(_CALLS.values()), ids=list(_CALLS))
def test_length_mismatch_names_both_lengths(fn):
    with pytest.raises(ValueError, match=r"same length.*\b5\b.*\b4\b"):
        fn(np.full(5, 0.5), [0, 1, 0, 1])


@pytest.mark.parametrize("fn", list(_CALLS.values()), ids=list(_CALLS))
@pytest.mark.parametrize("bad", [[0, 1, 2, 0], [0, 1, -1, 0], [0, 1, 0.5, 0], [0, 1, np.nan, 0]])
def test_labels_outside_01_raise(fn, bad):
    with pytest.raises(ValueError, match=r"labels must be in \{0, 1\}"):
        fn(np.array([0.1, 0.2, 0.3, 0.4]), bad)


@pytest.mark.parametrize("fn", list(_CALLS.values()), ids=list(_CALLS))
def test_nan_scores_raise_with_count(fn):
    with pytest.raises(ValueError, match=r"\b2 NaN"):
        fn(np.array([0.1, np.nan, 0.3, np.nan, 0.5]), [0, 1, 0, 1, 1])


def test_other_length_mismatches_and_bad_inputs():
    with pytest.raises(ValueError, match=r"groups.*3.*2"):
        M.gauc([0.1, 0.2, 0.3], [0, 1, 0], [1, 2])
    with pytest.raises(ValueError, match=r"weights.*3.*4"):
        M.auc([0.1, 0.2, 0.3], [0, 1, 0], weights=[1, 1, 1, 1])
    with pytest.raises(ValueError, match="non-negative"):
        M.auc([0.1, 0.2, 0.3], [0, 1, 0], weights=[1, -1, 1])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        M.logloss([0.1, 1.2, 0.3], [0, 1, 0])
    with pytest.raises(ValueError, match="empty"):
        M.auc([], [])
    with pytest.raises(ValueError, match="1-D"):
        M.auc(np.zeros((3, 2)), [0, 1, 0])


# --------------------------------------------------------------------------------------------
# docs
# --------------------------------------------------------------------------------------------
def test_docstring_examples_run():
    result = doctest.testmod(C, verbose=False)
    assert result.attempted >= 9
    assert result.failed == 0


def test_every_public_function_documented():
    for name in M.__all__:
        doc = getattr(M, name).__doc__
        assert doc, name
        if name != "GroupAUC":
            assert "Example" in doc and ">>>" in doc, name
