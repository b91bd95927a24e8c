"""AME: asymmetric multi-embedding, G tables of different widths, one expert each, a gate per task."""
from __future__ import annotations

from untwine.models.base import MODELS
from untwine.models.hetero_moe import ExpertConfig, HeteroMoE, HeteroMoEConfig


class AMEConfig(HeteroMoEConfig):
    """HeteroMoE's options with AME's defaults: tables 16 / 32 / 64, a FlatDNN expert per table, gated per task
    from every table's fields (sample-level routing); ``task_experts`` assigns tasks to tables statically."""

    tables: tuple[int, ...] | None = (16, 32, 64)
    experts: tuple[ExpertConfig, ...] = tuple(ExpertConfig(type="flat_dnn", table=k, hidden=(256,)) for k in range(3))
    expert_dim: int = 128
    hidden: tuple[int, ...] = (128,)


@MODELS.register("ame", config=AMEConfig,
                 paper="Pan et al., Ads Recommendation in a Collapsed and Entangled World, KDD 2024 (section 5, AME)",
                 inputs="categorical, multi-valued, sequence, numeric, vector (each table embeds every field)")
class AME(HeteroMoE):
    """Tables of asymmetric widths let tasks pick the capacity they need: task t's gate weighs the G
    experts per sample; unlike STEM no table belongs to a task."""
