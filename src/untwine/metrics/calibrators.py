"""Post-hoc calibrators of predicted probabilities, fitted on validation data (SPEC 5); the calibration
*metric* (mean prediction / observed rate) is ``untwine.metrics.calibration``.

* :func:`downsampling_correction` -- negatives kept at rate w during training inflate the odds by 1/w;
  q = p / (p + (1 - p) / w) restores them (003:2417).
* :class:`MeanCalibrator` -- one logit shift b with mean(sigmoid(z + b)) = observed rate: the "global
  calibration" after repeated-exposure weighting, which changes the base rate but not the ranking.
* :class:`PlattCalibrator` -- sigmoid(a z + b), maximum likelihood (Newton's method).
* :class:`IsotonicCalibrator` -- the monotone step function of least squared error (pool adjacent
  violators), interpolated linearly between block centres and clipped outside the fitted range, as
  ``sklearn.isotonic.IsotonicRegression(out_of_bounds="clip")``.

Calibrators map probabilities to probabilities, are fitted with optional sample weights and round-trip
through plain JSON (``to_dict`` / :func:`calibrator_from_dict`): no pickles.
"""
from __future__ import annotations

import numpy as np

__all__ = ["downsampling_correction", "MeanCalibrator", "PlattCalibrator", "IsotonicCalibrator",
           "CALIBRATORS", "fit_calibrator", "calibrator_from_dict"]

_EPS = 1e-12


def downsampling_correction(p, keep_rate: float) -> np.ndarray:
    """True-rate probability of a model trained with negatives kept at ``keep_rate`` (0 < w <= 1)."""
    if not 0 < keep_rate <= 1:
        raise ValueError(f"keep_rate must be in (0, 1], got {keep_rate}")
    p = np.asarray(p, dtype=np.float64)
    return p / (p + (1 - p) / keep_rate)


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(p, dtype=np.float64), 1e-7, 1 - 1e-7)
    return np.log(p) - np.log1p(-p)


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1 + np.tanh(0.5 * z))  # no overflow warnings for large |z|


def _prepare(p, y, w):
    p = np.asarray(p, dtype=np.float64).reshape(-1)
    y = np.asarray(y, dtype=np.float64).reshape(-1)
    if len(p) != len(y) or len(p) == 0:
        raise ValueError(f"probs and labels must be non-empty and of one length, got {len(p)} and {len(y)}")
    w = np.ones_like(p) if w is None else np.asarray(w, dtype=np.float64).reshape(-1)
    if len(w) != len(p):
        raise ValueError(f"weights must have one value per row, got {len(w)} for {len(p)} rows")
    return p, y, w


class MeanCalibrator:
    """p -> sigmoid(logit(p) + shift), the shift making the weighted mean prediction equal the observed rate."""

    name = "mean"

    def __init__(self, shift: float = 0.0) -> None:
        self.shift = float(shift)

    def fit(self, p, y, w=None) -> "MeanCalibrator":
        p, y, w = _prepare(p, y, w)
        z, target = _logit(p), float(np.sum(w * y) / np.sum(w))
        if not 0 < target < 1:
            raise ValueError(f"observed rate is {target}: a mean calibration needs both classes")
        lo, hi, b = -50.0, 50.0, 0.0
        for _ in range(100):  # Newton's method on a monotone function, kept inside a shrinking bracket
            q = _sigmoid(z + b)
            f = float(np.sum(w * q) / np.sum(w)) - target
            if abs(f) < 1e-12:
                break
            lo, hi = (b, hi) if f < 0 else (lo, b)
            d = float(np.sum(w * q * (1 - q)) / np.sum(w))
            b_new = b - f / d if d > _EPS else (lo + hi) / 2
            b = b_new if lo < b_new < hi else (lo + hi) / 2
        self.shift = b
        return self

    def __call__(self, p) -> np.ndarray:
        return _sigmoid(_logit(p) + self.shift)

    def to_dict(self) -> dict:
        return {"name": self.name, "shift": self.shift}


class PlattCalibrator:
    """p -> sigmoid(a logit(p) + b), fitted by weighted maximum likelihood (Newton, damped)."""

    name = "platt"

    def __init__(self, a: float = 1.0, b: float = 0.0) -> None:
        self.a, self.b = float(a), float(b)

    def fit(self, p, y, w=None) -> "PlattCalibrator":
        p, y, w = _prepare(p, y, w)
        x = np.stack([_logit(p), np.ones_like(p)], axis=1)
        theta = np.array([1.0, 0.0])

        def nll(th):
            z = x @ th
            return float(np.sum(w * (np.logaddexp(0, z) - y * z)))

        cur = nll(theta)
        for _ in range(100):
            q = _sigmoid(x @ theta)
            grad = x.T @ (w * (q - y))
            hess = (x * (w * q * (1 - q))[:, None]).T @ x + 1e-9 * np.eye(2)
            step = np.linalg.solve(hess, grad)
            t = 1.0
            while t > 1e-8 and nll(theta - t * step) > cur + 1e-12:  # backtracking keeps every step downhill
                t /= 2
            theta_new = theta - t * step
            new = nll(theta_new)
            done = abs(cur - new) <= 1e-12 * max(1.0, abs(cur))
            theta, cur = theta_new, new
            if done:
                break
        self.a, self.b = float(theta[0]), float(theta[1])
        return self

    def __call__(self, p) -> np.ndarray:
        return _sigmoid(self.a * _logit(p) + self.b)

    def to_dict(self) -> dict:
        return {"name": self.name, "a": self.a, "b": self.b}


class IsotonicCalibrator:
    """The non-decreasing step function of least weighted squared error, by pool adjacent violators."""

    name = "isotonic"

    def __init__(self, x: list[float] | None = None, y: list[float] | None = None) -> None:
        self.x = np.asarray(x if x is not None else [0.0, 1.0], dtype=np.float64)
        self.y = np.asarray(y if y is not None else [0.0, 1.0], dtype=np.float64)

    def fit(self, p, y, w=None) -> "IsotonicCalibrator":
        p, y, w = _prepare(p, y, w)
        order = np.lexsort((y, p))
        p, y, w = p[order], y[order], w[order]
        # equal scores first pool into one point (their weighted mean label), as sklearn does
        ux, start = np.unique(p, return_index=True)
        sw = np.add.reduceat(w, start)
        sy = np.add.reduceat(w * y, start) / sw
        # PAV over the unique points: a stack of blocks (mean, weight, count)
        means, weights, counts = [], [], []
        for v, wt in zip(sy.tolist(), sw.tolist()):
            m, c = v, 1
            while means and means[-1] >= m:
                pm, pw, pc = means.pop(), weights.pop(), counts.pop()
                m = (pm * pw + m * wt) / (pw + wt)
                wt, c = pw + wt, pc + c
            means.append(m)
            weights.append(wt)
            counts.append(c)
        block_y = np.repeat(means, counts)
        # keep only the knots where the fitted value changes (both ends of each block), like sklearn
        keep = np.ones(len(ux), dtype=bool)
        if len(ux) > 2:
            keep[1:-1] = (block_y[1:-1] != block_y[:-2]) | (block_y[1:-1] != block_y[2:])
        self.x, self.y = ux[keep], block_y[keep]
        return self

    def __call__(self, p) -> np.ndarray:
        return np.interp(np.asarray(p, dtype=np.float64), self.x, self.y)

    def to_dict(self) -> dict:
        return {"name": self.name, "x": self.x.tolist(), "y": self.y.tolist()}


CALIBRATORS = {c.name: c for c in (MeanCalibrator, PlattCalibrator, IsotonicCalibrator)}


def fit_calibrator(name: str, p, y, w=None):
    if name not in CALIBRATORS:
        raise ValueError(f"unknown calibration {name!r}; choose from {sorted(CALIBRATORS)}")
    return CALIBRATORS[name]().fit(p, y, w)


def calibrator_from_dict(d: dict):
    d = dict(d)
    name = d.pop("name")
    if name not in CALIBRATORS:
        raise ValueError(f"unknown calibration {name!r}; choose from {sorted(CALIBRATORS)}")
    return CALIBRATORS[name](**d)
