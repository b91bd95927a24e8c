"""Registered models. Importing this package registers every built-in model."""
from untwine.models import (dcnv2, deepfm, din, dnn, fm, hetero_moe, lr, mmoe, ple, shared_bottom, stem,  # noqa: F401
                            tin)
from untwine.models.base import MODELS, RankingModel, build_model

__all__ = ["MODELS", "RankingModel", "build_model"]
