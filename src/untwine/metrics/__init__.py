"""Evaluation metrics (numpy only)."""
from untwine.metrics.classification import (
    GroupAUC,
    auc,
    binary_report,
    calibration,
    gauc,
    logloss,
    normalized_entropy,
    reliability_curve,
    rig,
    uauc,
)

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
