"""Two-tower retrieval model (DSSM, Huang et al. CIKM 2013; YouTube's sampled-softmax form, Yi et al. RecSys 2019).

The user tower reads the user- and context-group features (the behaviour history included), the
item tower the item-group features; each ends in a linear layer to ``output_dim`` and, by default,
L2 normalisation, so the score <u, v> / temperature is a scaled cosine. Both towers read one shared
embedding table: a history of item ids and the target item id look up the same rows, which is what
lets a short click history place a user near the items it clicked.

As a ranking model (``forward``) it returns the scaled dot product of the row's user and item, through a
per-task scale and bias, as each task's logit, so the same weights can pre-rank candidates or be trained with BCE. Retrieval
training (in-batch sampled softmax with log-Q correction) lives in ``untwine.retrieval.two_tower``;
serving computes the user vector once per request and item vectors offline into an ANN index.

A target-aware sequence encoder (DIN, TIM) would leak the candidate item into the user tower and
cannot be precomputed per request, so user-side sequences must use pooling.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from untwine.core.batch import Batch
from untwine.core.features import FeatureSpace
from untwine.core.schema import FieldGroup
from untwine.models.base import MODELS, RankingConfig, RankingModel
from untwine.nn.mlp import MLP


class TwoTowerConfig(RankingConfig):
    embedding_dim: int = Field(32, ge=1)
    embedding_init_std: float = Field(0.05, gt=0)  # tiny inits stall the dot product of two near-zero towers
    user_hidden: tuple[int, ...] = (256,)
    item_hidden: tuple[int, ...] = (256,)
    output_dim: int = Field(64, ge=1)
    temperature: float = Field(0.05, gt=0)
    normalize: bool = True
    dropout: float = Field(0.0, ge=0, lt=1)


@MODELS.register("two_tower", config=TwoTowerConfig,
                 paper="Yi et al., Sampling-Bias-Corrected Neural Modeling for Large Corpus Item Recommendations, RecSys 2019",
                 inputs="categorical, multi-valued, sequence (pooled), numeric, vector; user+context vs item groups")
class TwoTower(RankingModel):
    def __init__(self, space: FeatureSpace, config: TwoTowerConfig) -> None:
        super().__init__(space, config)
        schema = space.schema
        for f in schema.sequences:
            enc = f.encoding or config.sequence_encoder
            if f.group != FieldGroup.ITEM and enc.name != "pool":
                raise ValueError(f"two_tower: user-side sequence {f.name!r} uses {enc.name!r}; the user tower "
                                 f"cannot see the candidate item, use encoding pool")
        self.embedding = self.field_embedding()
        groups = [schema.feature(name).group for name in self.embedding.field_features()]
        item_fields = [j for j, g in enumerate(groups) if g == FieldGroup.ITEM]
        user_fields = [j for j, g in enumerate(groups) if g != FieldGroup.ITEM]
        if not item_fields or not user_fields:
            raise ValueError(f"two_tower needs item-group and user/context-group features; the schema has "
                             f"{len(user_fields)} user-side and {len(item_fields)} item-side fields")
        # raw numerics (numeric: raw) join their own group's tower input
        dense_groups = [f.group for f in schema.numeric] if self.embedding.dense_dim else []
        user_dense = [j for j, g in enumerate(dense_groups) if g != FieldGroup.ITEM]
        item_dense = [j for j, g in enumerate(dense_groups) if g == FieldGroup.ITEM]
        for name, idx in (("user_fields", user_fields), ("item_fields", item_fields),
                          ("user_dense", user_dense), ("item_dense", item_dense)):
            self.register_buffer(name, torch.tensor(idx, dtype=torch.long), persistent=False)
        d = config.embedding_dim
        opts = {"dropout": config.dropout, "xavier_init": True}
        self.user_tower = MLP(len(user_fields) * d + len(user_dense), config.user_hidden, out_dim=config.output_dim, **opts)
        self.item_tower = MLP(len(item_fields) * d + len(item_dense), config.item_hidden, out_dim=config.output_dim, **opts)
        # per-task affine head on the shared score: CTR-style tasks differ in base rate and sharpness,
        # while retrieval (softmax over items) is invariant to both and uses the raw score
        self.task_scale = nn.Parameter(torch.ones(len(self.tasks)))
        self.task_bias = nn.Parameter(torch.zeros(len(self.tasks)))

    def _tower(self, embedded: tuple[Tensor, Tensor | None], side: str) -> Tensor:
        fields, dense = embedded
        x = fields.index_select(1, getattr(self, f"{side}_fields")).flatten(1)
        if dense is not None:
            x = torch.cat([x, dense.index_select(1, getattr(self, f"{side}_dense"))], dim=1)
        out = getattr(self, f"{side}_tower")(x)
        return F.normalize(out, dim=-1) if self.config.normalize else out

    def towers(self, batch: Batch) -> tuple[Tensor, Tensor]:
        """(user vectors (B, d), item vectors (B, d)) of the batch's rows, one embedding pass."""
        embedded = self.embedding(batch)
        return self._tower(embedded, "user"), self._tower(embedded, "item")

    def user_vectors(self, batch: Batch) -> Tensor:
        return self._tower(self.embedding(batch), "user")

    def item_vectors(self, batch: Batch) -> Tensor:
        return self._tower(self.embedding(batch), "item")

    def forward(self, batch: Batch) -> dict[str, Tensor]:
        u, v = self.towers(batch)
        score = (u * v).sum(dim=-1, keepdim=True) / self.config.temperature
        return self.as_tasks(score * self.task_scale + self.task_bias)
