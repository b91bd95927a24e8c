"""Reusable layers: tensor in, tensor out, shapes in the docstrings."""
from untwine.nn.embedding import FieldEmbedding, MultiEmbedding
from untwine.nn.interaction import (BiInteraction, CrossNetV2, FactorizationMachine, GroupwisePFM, InnerProduct,
                                   LowRankCrossNet)
from untwine.nn.experts import ExpertGate, TaskTowers
from untwine.nn.mlp import MLP

__all__ = ["FieldEmbedding", "MultiEmbedding", "MLP", "FactorizationMachine", "BiInteraction", "InnerProduct",
           "GroupwisePFM", "CrossNetV2", "LowRankCrossNet", "ExpertGate", "TaskTowers"]
