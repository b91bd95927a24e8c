"""Logistic regression on one-hot ids and numeric values."""
from __future__ import annotations

from torch import Tensor

from untwine.core.batch import Batch
from untwine.core.features import FeatureSpace
from untwine.models.base import MODELS, FirstOrder, RankingConfig, RankingModel


@MODELS.register("lr", config=RankingConfig, paper="logistic regression (McMahan et al., KDD 2013 for ads)",
                 inputs="categorical, multi-valued, sequence (pooled), numeric, vector")
class LR(RankingModel):
    def __init__(self, space: FeatureSpace, config: RankingConfig) -> None:
        super().__init__(space, config)
        self.linear = FirstOrder(space, len(self.tasks), config.embedding_init_std)

    def forward(self, batch: Batch) -> dict[str, Tensor]:
        return self.as_tasks(self.linear(batch))
