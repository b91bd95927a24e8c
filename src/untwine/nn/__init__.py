"""Reusable layers: tensor in, tensor out, shapes in the docstrings."""
from untwine.nn.embedding import FieldEmbedding
from untwine.nn.interaction import CrossNetV2, FactorizationMachine, LowRankCrossNet
from untwine.nn.mlp import MLP

__all__ = ["FieldEmbedding", "MLP", "FactorizationMachine", "CrossNetV2", "LowRankCrossNet"]
