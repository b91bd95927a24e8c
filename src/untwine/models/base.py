"""The ranking-model contract and the registry.

A ranking model is built as ``Model(space, config)`` and maps a Batch to a dict of logits, one
float32 tensor of shape (B,) per task, in schema order. Sigmoid and losses live outside the model.
"""
from __future__ import annotations

from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor, nn

from untwine.core.batch import Batch
from untwine.core.features import FeatureSpace
from untwine.core.registry import Registry
from untwine.core.schema import NumericEncoding, SequenceEncoding, VectorEncoding
from untwine.nn.embedding import FieldEmbedding


class RankingConfig(BaseModel):
    """Options shared by every ranking model."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    embedding_dim: int = Field(10, ge=1)
    embedding_init_std: float = Field(1e-4, gt=0)
    numeric: Literal["embed", "raw"] = "embed"
    # encoders for features whose schema entry sets no ``encoding`` (a name or a full mapping)
    numeric_encoder: NumericEncoding = NumericEncoding(name="scaled")
    sequence_encoder: SequenceEncoding = SequenceEncoding(name="pool")
    vector_encoder: VectorEncoding = VectorEncoding(name="project")


class MLPConfig(RankingConfig):
    hidden: tuple[int, ...] = (400, 400, 400)
    dropout: float = Field(0.0, ge=0, lt=1)
    batch_norm: bool = False
    layer_norm: bool = False
    xavier_init: bool = True  # FuxiCTR (best P2 peer) does this: +0.0016 test AUC on P2 DNN

    def mlp_options(self) -> dict:
        return {"dropout": self.dropout, "batch_norm": self.batch_norm, "layer_norm": self.layer_norm,
                "xavier_init": self.xavier_init}


class RankingModel(nn.Module):
    """Base: holds the task names and turns a (B, T) logit block into the per-task dict."""

    def __init__(self, space: FeatureSpace, config: RankingConfig) -> None:
        super().__init__()
        self.space, self.config = space, config
        self.tasks = space.schema.task_names

    def field_embedding(self, dim: int | None = None, numeric: str | None = None) -> FieldEmbedding:
        c = self.config
        return FieldEmbedding(self.space, dim or c.embedding_dim, numeric_mode=numeric or c.numeric,
                              init_std=c.embedding_init_std, numeric_encoding=c.numeric_encoder,
                              sequence_encoding=c.sequence_encoder, vector_encoding=c.vector_encoder)

    def as_tasks(self, logits: Tensor) -> dict[str, Tensor]:  # (B, T) -> {task: (B,)}
        return {t: logits[:, i] for i, t in enumerate(self.tasks)}

    def forward(self, batch: Batch) -> dict[str, Tensor]:  # pragma: no cover - abstract
        raise NotImplementedError


MODELS: Registry[RankingModel] = Registry("model")


def build_model(name: str, space: FeatureSpace, config: dict | BaseModel | None = None) -> RankingModel:
    """Build a registered model by name from its config (a dict is validated strictly)."""
    import untwine.models  # noqa: F401  (registers the built-in models)

    return MODELS.build(name, space, config=config)


class FirstOrder(nn.Module):
    """w_0 + sum_i w_{x_i} + w_num . x_num, one output per task: the LR part of LR/FM/DeepFM."""

    def __init__(self, space: FeatureSpace, num_tasks: int, init_std: float) -> None:
        super().__init__()
        self.emb = FieldEmbedding(space, num_tasks, numeric_mode="raw", init_std=init_std, linear=True)
        self.dense = nn.Linear(self.emb.dense_dim, num_tasks) if self.emb.dense_dim else None
        self.bias = nn.Parameter(torch.zeros(num_tasks))

    def forward(self, batch: Batch) -> Tensor:  # -> (B, T)
        fields, raw = self.emb(batch)  # (B, F, T), (B, F_num) or None
        out = fields.sum(dim=1) + self.bias
        return out if self.dense is None else out + self.dense(raw)
