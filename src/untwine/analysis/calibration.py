"""Reliability diagrams of runs: raw model output against each run's fitted calibration (SPEC 5).

Bins are quantiles of the predictions (CTR-like probabilities crowd near 0, so uniform bins leave most
of them empty) and the axes are logarithmic for the same reason.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from untwine.analysis.collapse import pyplot, save_figure
from untwine.metrics.classification import calibration, reliability_curve


def reliability_summary(probs: np.ndarray, labels: np.ndarray, n_bins: int = 15) -> dict:
    """The curve (mean prediction, observed rate, count per quantile bin), the mean-over-rate calibration
    and the expected calibration error sum_b |B|/n |mean_p - rate|."""
    mean_p, rate, count = reliability_curve(probs, labels, n_bins=n_bins, strategy="quantile")
    return {"mean_prediction": mean_p.tolist(), "observed_rate": rate.tolist(), "count": count.tolist(),
            "calibration": calibration(probs, labels),
            "ece": float(np.sum(count * np.abs(mean_p - rate)) / np.sum(count))}


def plot_reliability(curves: dict[str, dict], path: str | Path, title: str = "") -> None:
    """One line per curve (name -> reliability_summary) against the diagonal, log-log."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 5))
    lo, hi = 1.0, 0.0
    for name, c in curves.items():
        p, r = np.asarray(c["mean_prediction"]), np.asarray(c["observed_rate"])
        ax.plot(p, np.maximum(r, 1e-6), marker="o", ms=3, label=f"{name} (cal {c['calibration']:.3f}, ECE {c['ece']:.4f})")
        lo, hi = min(lo, p.min(), r[r > 0].min() if (r > 0).any() else lo), max(hi, p.max(), r.max())
    lo, hi = max(lo * 0.8, 1e-6), min(hi * 1.2, 1.0)
    ax.plot([lo, hi], [lo, hi], color="grey", lw=1, ls="--", label="perfect")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("mean prediction in bin")
    ax.set_ylabel("observed rate in bin")
    ax.legend(fontsize=7)
    ax.set_title(title, fontsize=8)
    fig.tight_layout()
    save_figure(fig, path)
