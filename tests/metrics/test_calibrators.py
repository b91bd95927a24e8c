"""Calibrators: down-sampling correction recovers the true rate, mean / Platt / isotonic against references."""
import json

import numpy as np
import pytest

from untwine.metrics.calibrators import (IsotonicCalibrator, MeanCalibrator, PlattCalibrator, calibrator_from_dict,
                                         downsampling_correction, fit_calibrator)


def test_downsampling_correction_recovers_the_true_rate():
    """A Bayes-optimal model on data with negatives kept at rate w predicts p' = p / (p + w (1 - p));
    the correction maps it back to p, and on a sample the mean matches the full data's rate."""
    rng = np.random.default_rng(0)
    n, w = 400_000, 0.1
    p_true = 1 / (1 + np.exp(-(rng.normal(size=n) * 1.5 - 3)))
    y = rng.random(n) < p_true
    keep = y | (rng.random(n) < w)
    # the rate among kept rows, per true-probability level, is what a perfect model trained on them learns
    p_sampled = p_true / (p_true + w * (1 - p_true))
    assert y[keep].mean() == pytest.approx(p_sampled[keep].mean(), rel=0.02)
    q = downsampling_correction(p_sampled, w)
    np.testing.assert_allclose(q, p_true, rtol=1e-10)
    assert q.mean() == pytest.approx(y.mean(), rel=0.02)
    assert downsampling_correction([0.3], 1.0)[0] == pytest.approx(0.3)
    with pytest.raises(ValueError):
        downsampling_correction([0.3], 0.0)


def _miscalibrated(n=20_000, seed=0):
    rng = np.random.default_rng(seed)
    z = rng.normal(size=n) * 2
    y = (rng.random(n) < 1 / (1 + np.exp(-(0.5 * z - 1)))).astype(float)
    p = 1 / (1 + np.exp(-z))  # over-confident and biased
    return p, y


def test_mean_calibrator_matches_the_observed_rate():
    p, y = _miscalibrated()
    w = np.random.default_rng(1).random(len(p)) + 0.5
    c = MeanCalibrator().fit(p, y, w)
    assert np.sum(w * c(p)) / np.sum(w) == pytest.approx(np.sum(w * y) / np.sum(w), abs=1e-10)
    # a shift in logit space keeps the ranking
    assert (np.argsort(c(p), kind="stable") == np.argsort(p, kind="stable")).all()
    with pytest.raises(ValueError, match="both classes"):
        MeanCalibrator().fit(p, np.zeros_like(p))


def test_platt_matches_sklearn_logistic_regression_without_penalty():
    lm = pytest.importorskip("sklearn.linear_model")
    p, y = _miscalibrated()
    c = PlattCalibrator().fit(p, y)
    z = np.log(p / (1 - p))[:, None]
    ref = lm.LogisticRegression(C=np.inf, tol=1e-10, max_iter=1000).fit(z, y)
    assert c.a == pytest.approx(ref.coef_[0, 0], abs=1e-4) and c.b == pytest.approx(ref.intercept_[0], abs=1e-4)
    assert c.a == pytest.approx(0.5, abs=0.05) and c.b == pytest.approx(-1.0, abs=0.08)  # the generating map


@pytest.mark.parametrize("ties", [False, True])
def test_isotonic_matches_sklearn(ties):
    iso = pytest.importorskip("sklearn.isotonic")
    p, y = _miscalibrated(3000, seed=2)
    if ties:
        p = np.round(p, 2)
    w = np.random.default_rng(3).random(len(p)) + 0.1
    c = IsotonicCalibrator().fit(p, y, w)
    ref = iso.IsotonicRegression(out_of_bounds="clip").fit(p, y, sample_weight=w)
    grid = np.concatenate([np.linspace(-0.1, 1.1, 500), p])
    np.testing.assert_allclose(c(grid), ref.predict(grid), atol=1e-9)
    assert (np.diff(c(np.sort(grid))) >= -1e-12).all()


def test_calibrators_round_trip_through_json():
    p, y = _miscalibrated(2000)
    for name in ("mean", "platt", "isotonic"):
        c = fit_calibrator(name, p, y)
        back = calibrator_from_dict(json.loads(json.dumps(c.to_dict())))
        np.testing.assert_allclose(back(p), c(p))
    with pytest.raises(ValueError, match="unknown calibration"):
        fit_calibrator("beta", p, y)


def test_the_calibration_metric_is_not_shadowed_by_the_calibrators_module():
    import types

    import untwine.metrics as metrics
    import untwine.metrics.calibrators  # noqa: F401

    assert callable(metrics.calibration) and not isinstance(metrics.calibration, types.ModuleType)
