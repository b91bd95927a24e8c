"""Shared-bottom multi-task model: one MLP over the embeddings shared by all tasks, a tower per task."""
from __future__ import annotations

from torch import Tensor

from untwine.core.batch import Batch
from untwine.core.features import FeatureSpace
from untwine.models.base import MODELS, RankingModel
from untwine.models.multitask import MultiTaskConfig
from untwine.nn.experts import TaskTowers
from untwine.nn.mlp import MLP


@MODELS.register("shared_bottom", config=MultiTaskConfig, paper="Caruana, Multitask Learning, Machine Learning 1997",
                 inputs="categorical, multi-valued, sequence, numeric, vector")
class SharedBottom(RankingModel):
    """logit_t = tower_t(bottom([v_1; ...; v_F])); ``expert_hidden`` is the bottom."""

    def __init__(self, space: FeatureSpace, config: MultiTaskConfig) -> None:
        super().__init__(space, config)
        self.embedding = self.field_embedding()
        self.bottom = MLP(self.embedding.output_dim, config.expert_hidden, **config.mlp_options())
        self.towers = TaskTowers(self.bottom.out_dim, config.hidden, len(self.tasks), **config.mlp_options())

    def forward(self, batch: Batch) -> dict[str, Tensor]:
        return self.as_tasks(self.towers(self.bottom(self.embedding.flat(batch)).unsqueeze(1)))
