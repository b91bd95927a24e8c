"""DeepFM: first-order + FM + MLP sharing one set of field embeddings."""
from __future__ import annotations

from torch import Tensor

from untwine.core.batch import Batch
from untwine.core.features import FeatureSpace
from untwine.models.base import MODELS, FirstOrder, MLPConfig, RankingModel
from untwine.nn.interaction import FactorizationMachine
from untwine.nn.mlp import MLP


@MODELS.register("deepfm", config=MLPConfig, paper="Guo et al., DeepFM, IJCAI 2017",
                 inputs="categorical, multi-valued, sequence (pooled), numeric (embedded), vector")
class DeepFM(RankingModel):
    def __init__(self, space: FeatureSpace, config: MLPConfig) -> None:
        super().__init__(space, config)
        self.linear = FirstOrder(space, len(self.tasks), config.embedding_init_std)
        self.embedding = self.field_embedding(numeric="embed")
        self.fm = FactorizationMachine()
        self.mlp = MLP(self.embedding.output_dim, config.hidden, out_dim=len(self.tasks), **config.mlp_options())

    def forward(self, batch: Batch) -> dict[str, Tensor]:
        fields, _ = self.embedding(batch)
        logits = self.linear(batch) + self.fm(fields).unsqueeze(1) + self.mlp(fields.flatten(1))
        return self.as_tasks(logits)
