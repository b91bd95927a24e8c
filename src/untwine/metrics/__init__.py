"""Evaluation metrics (numpy only)."""
from untwine.metrics.classification import *  # noqa: F401,F403  (the public names are classification.__all__)
from untwine.metrics.classification import __all__  # noqa: F401
