"""PLE: progressive layered extraction, task-specific and shared experts over several extraction layers."""
from __future__ import annotations

import torch
from pydantic import Field
from torch import Tensor, nn

from untwine.core.batch import Batch
from untwine.core.features import FeatureSpace
from untwine.models.base import MODELS, RankingModel
from untwine.models.multitask import TaskExpertsConfig
from untwine.nn.experts import ExtractionLayer, TaskTowers


class PLEConfig(TaskExpertsConfig):
    levels: int = Field(2, ge=1)  # extraction layers; 1 is CGC


@MODELS.register("ple", config=PLEConfig,
                 paper="Tang et al., Progressive Layered Extraction (PLE), RecSys 2020",
                 inputs="categorical, multi-valued, sequence, numeric, vector")
class PLE(RankingModel):
    """Every extraction layer starts from the previous layer's task and shared outputs (the embeddings
    [v_1; ...; v_F] for the first); towers read the last layer's task outputs."""

    def __init__(self, space: FeatureSpace, config: PLEConfig) -> None:
        super().__init__(space, config)
        self.embedding = self.field_embedding()
        t, d = len(self.tasks), self.embedding.output_dim
        self.layers = nn.ModuleList()
        for level in range(config.levels):
            layer = ExtractionLayer(d, t, config.task_experts, config.shared_experts, config.expert_hidden,
                                    last=level == config.levels - 1, **config.mlp_options())
            self.layers.append(layer)
            d = layer.out_dim
        self.towers = TaskTowers(d, config.hidden, t, **config.mlp_options())

    def forward(self, batch: Batch) -> dict[str, Tensor]:
        x = self.embedding.flat(batch)
        task_inputs, shared = [x] * len(self.tasks), x
        for layer in self.layers:
            task_inputs, shared = layer(task_inputs, shared)
        return self.as_tasks(self.towers(torch.stack(task_inputs, dim=1)))
