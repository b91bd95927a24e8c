"""Factorization machine: first-order terms plus pairwise field interactions."""
from __future__ import annotations

from torch import Tensor

from untwine.core.batch import Batch
from untwine.core.features import FeatureSpace
from untwine.models.base import MODELS, FirstOrder, RankingConfig, RankingModel
from untwine.nn.interaction import FactorizationMachine


@MODELS.register("fm", config=RankingConfig, paper="Rendle, Factorization Machines, ICDM 2010",
                 inputs="categorical, multi-valued, sequence (pooled), numeric (embedded), vector")
class FM(RankingModel):
    def __init__(self, space: FeatureSpace, config: RankingConfig) -> None:
        super().__init__(space, config)
        self.linear = FirstOrder(space, len(self.tasks), config.embedding_init_std)
        self.embedding = self.field_embedding(numeric="embed")
        self.fm = FactorizationMachine()

    def forward(self, batch: Batch) -> dict[str, Tensor]:
        fields, _ = self.embedding(batch)
        return self.as_tasks(self.linear(batch) + self.fm(fields).unsqueeze(1))
