"""Registered models. Importing this package registers every built-in model."""
from untwine.models import (ame, dcnv2, deepfm, din, dnn, esmm, fm, hetero_moe, lr, mmoe, ple, shared_bottom, stem,  # noqa: F401
                            stem_al, tin, two_tower)
from untwine.models.base import MODELS, RankingModel, build_model

__all__ = ["MODELS", "RankingModel", "build_model"]
