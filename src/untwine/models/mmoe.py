"""MMoE: experts shared by all tasks, one softmax gate per task over them, a tower per task."""
from __future__ import annotations

from torch import Tensor

from untwine.core.batch import Batch
from untwine.core.features import FeatureSpace
from untwine.models.base import MODELS, RankingModel
from untwine.models.multitask import MMoEConfig
from untwine.nn.experts import ExpertBank, ExpertGate, TaskTowers, mix


@MODELS.register("mmoe", config=MMoEConfig,
                 paper="Ma et al., Modeling Task Relationships in Multi-task Learning with Multi-gate Mixture-of-Experts, "
                       "KDD 2018", inputs="categorical, multi-valued, sequence, numeric, vector")
class MMoE(RankingModel):
    """x = [v_1; ...; v_F]; logit_t = tower_t(sum_e softmax(W_t x)_e expert_e(x))."""

    def __init__(self, space: FeatureSpace, config: MMoEConfig) -> None:
        super().__init__(space, config)
        self.embedding = self.field_embedding()
        d = self.embedding.output_dim
        self.experts = ExpertBank(d, config.num_experts, config.expert_hidden, **config.mlp_options())
        self.gate = ExpertGate(d, config.num_experts, len(self.tasks))
        self.towers = TaskTowers(self.experts.out_dim, config.hidden, len(self.tasks), **config.mlp_options())

    def gate_weights(self, batch: Batch) -> Tensor:
        """(B, T, E) gate weights, for the analysis of how tasks share experts."""
        return self.gate(self.embedding.flat(batch))

    def forward(self, batch: Batch) -> dict[str, Tensor]:
        x = self.embedding.flat(batch)
        return self.as_tasks(self.towers(mix(self.experts(x), self.gate(x))))
