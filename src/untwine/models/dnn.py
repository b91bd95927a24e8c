"""DNN: an MLP on the concatenated field embeddings (and raw numerics)."""
from __future__ import annotations

from torch import Tensor

from untwine.core.batch import Batch
from untwine.core.features import FeatureSpace
from untwine.models.base import MODELS, MLPConfig, RankingModel
from untwine.nn.mlp import MLP


@MODELS.register("dnn", config=MLPConfig, paper="Covington et al., Deep Neural Networks for YouTube Recommendations, RecSys 2016",
                 inputs="categorical, multi-valued, sequence (pooled), numeric, vector")
class DNN(RankingModel):
    def __init__(self, space: FeatureSpace, config: MLPConfig) -> None:
        super().__init__(space, config)
        self.embedding = self.field_embedding()
        self.mlp = MLP(self.embedding.output_dim, config.hidden, out_dim=len(self.tasks), **config.mlp_options())

    def forward(self, batch: Batch) -> dict[str, Tensor]:
        return self.as_tasks(self.mlp(self.embedding.flat(batch)))
