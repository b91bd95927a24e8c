"""DCN-V2: a cross network and an MLP over the same embeddings, in parallel or stacked."""
from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field
from torch import Tensor, nn

from untwine.core.batch import Batch
from untwine.core.features import FeatureSpace
from untwine.models.base import MODELS, MLPConfig, RankingModel
from untwine.nn.interaction import CrossNetV2, LowRankCrossNet
from untwine.nn.mlp import MLP


class DCNv2Config(MLPConfig):
    cross_layers: int = Field(3, ge=1)
    structure: Literal["parallel", "stacked"] = "parallel"
    low_rank: int | None = Field(None, ge=1)  # set for the mixture of low-rank experts (DCN-Mix)
    num_experts: int = Field(4, ge=1)


@MODELS.register("dcnv2", config=DCNv2Config, paper="Wang et al., DCN V2, WWW 2021",
                 inputs="categorical, multi-valued, sequence (pooled), numeric, vector")
class DCNv2(RankingModel):
    def __init__(self, space: FeatureSpace, config: DCNv2Config) -> None:
        super().__init__(space, config)
        self.embedding = self.field_embedding()
        d = self.embedding.output_dim
        self.cross = (CrossNetV2(d, config.cross_layers) if config.low_rank is None
                      else LowRankCrossNet(d, config.cross_layers, config.low_rank, config.num_experts))
        mlp_in = d
        self.mlp = MLP(mlp_in, config.hidden, **config.mlp_options())
        head_in = self.mlp.out_dim + (d if config.structure == "parallel" else 0)
        self.head = nn.Linear(head_in, len(self.tasks))

    def forward(self, batch: Batch) -> dict[str, Tensor]:
        x0 = self.embedding.flat(batch)
        if self.config.structure == "parallel":
            deep = self.mlp(x0)
            # under bf16 autocast the cross output is fp32 and the MLP's bf16: the head would cast the fp32
            # concatenation to bf16 anyway, so casting first gives the same values with half the copying
            h = torch.cat([self.cross(x0).to(deep.dtype), deep], dim=1)
        else:
            h = self.mlp(self.cross(x0))
        return self.as_tasks(self.head(h))
