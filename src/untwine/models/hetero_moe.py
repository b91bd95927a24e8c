"""Heterogeneous mixture of experts with multiple embeddings (Tencent, KDD 2024, section 4.2).

K independent embedding tables (:class:`untwine.nn.MultiEmbedding`, a width per table); a list of
interaction experts, each reading one table: ``flat_dnn`` (an MLP on the concatenated fields), ``cross``
(DCN-V2's cross network), ``ipnn`` (inner products of all field pairs beside the fields), ``fm`` (FM's
pairwise term per dimension) and ``gwpfm`` (group-wise field-pair interactions). Each expert's output goes
through its non-linear projection (ReLU MLP ``hidden`` then ``expert_dim``): without it, experts that are
linear in their table would add up to a single table. The projected experts are mixed by one softmax gate
per task (or their mean) and fed to a tower per task.

Shapes that ship as configs (``configs/<protocol>/``):

- ``moments_pctr``, the deployed Moments pCTR: table 1 -> GwPFM + FlatDNN, table 2 -> IPNN, gated;
- ``me_dcnv2``, the multi-embedding DCN-V2 of Guo et al. (ICML 2024): K tables, a cross network per
  table with no projection, their mean, a shared MLP. With one table it is DCN-V2 (stacked), parameter
  for parameter and, under the same seed, bit for bit;
- ``me_dnn``: K tables, an MLP layer per table (the projection), mean, then the rest of the MLP.
"""
from __future__ import annotations

from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import Tensor, nn

from untwine.core.batch import Batch
from untwine.core.features import FeatureSpace
from untwine.core.schema import FieldGroup
from untwine.models.base import MODELS, MLPConfig, RankingModel
from untwine.nn.embedding import FieldEmbedding, MultiEmbedding
from untwine.nn.experts import ExpertGate, TaskTowers, mix
from untwine.nn.interaction import BiInteraction, CrossNetV2, GroupwisePFM, InnerProduct
from untwine.nn.mlp import MLP

ExpertType = Literal["flat_dnn", "cross", "ipnn", "fm", "gwpfm"]


class ExpertConfig(BaseModel):
    """One interaction expert and the table it reads."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    type: ExpertType
    table: int = Field(0, ge=0)
    hidden: tuple[int, ...] = ()  # ReLU layers of the projection before expert_dim (FlatDNN's / IPNN's MLP)
    project: bool = True  # end with a ReLU layer to expert_dim; off: the raw interaction output is the expert
    cross_layers: int = Field(3, ge=1)  # cross
    # gwpfm: field groups as lists of feature names; None = the schema's user / item / context groups
    groups: tuple[tuple[str, ...], ...] | None = None
    intra: bool = False  # gwpfm: also the within-group pairs

    @model_validator(mode="after")
    def _check(self) -> "ExpertConfig":
        if not self.project and self.hidden:
            raise ValueError(f"expert {self.type}: hidden layers are the projection; set project: true to use them")
        if not self.project and self.type in ("gwpfm", "ipnn", "fm"):
            raise ValueError(f"expert {self.type} needs its non-linear projection (project: true); without it "
                             "a linear interaction of several tables degenerates to one table")
        if (self.groups is not None or self.intra) and self.type != "gwpfm":
            raise ValueError(f"groups / intra are GwPFM options, not {self.type}'s")
        return self


class HeteroMoEConfig(MLPConfig):
    """``hidden`` (and the other MLP options) are the towers'; ``tables`` the embedding widths."""

    tables: tuple[int, ...] | None = None  # one width per table; None = (embedding_dim,)
    experts: tuple[ExpertConfig, ...] = (ExpertConfig(type="flat_dnn"),)
    expert_dim: int = Field(400, ge=1)
    combine: Literal["gate", "mean"] = "gate"
    gate_input: Literal["embeddings", "experts"] = "embeddings"  # all tables' fields, or the projected experts
    # optional static routing: task -> the experts (indices into ``experts``) its gate may use; others all
    task_experts: dict[str, tuple[int, ...]] | None = None

    @model_validator(mode="after")
    def _check_tables(self) -> "HeteroMoEConfig":
        widths = self.table_widths()
        if any(w < 1 for w in widths):
            raise ValueError(f"table widths must be positive, got {widths}")
        bad = [e.table for e in self.experts if e.table >= len(widths)]
        if bad:
            raise ValueError(f"experts read tables {bad} but only {len(widths)} table(s) are declared ({widths})")
        unused = sorted(set(range(len(widths))) - {e.table for e in self.experts})
        if unused:
            raise ValueError(f"tables {unused} feed no expert")
        return self

    def table_widths(self) -> tuple[int, ...]:
        return self.tables if self.tables is not None else (self.embedding_dim,)


def field_groups(table: FieldEmbedding, groups: tuple[tuple[str, ...], ...] | None) -> list[int]:
    """The group index of each of the table's fields: from the config's lists of feature names, else from
    the schema's field groups (user, item, context; only those present)."""
    features = table.field_features()
    if groups is None:
        schema = table.space_schema
        of = [schema.feature(f).group for f in features]
        order = [g for g in FieldGroup if g in of]
        return [order.index(g) for g in of]
    index = {name: k for k, names in enumerate(groups) for name in names}
    missing = sorted({f for f in features if f not in index})
    if missing:
        raise ValueError(f"gwpfm groups {[list(g) for g in groups]} leave fields {missing} without a group")
    return [index[f] for f in features]


class Expert(nn.Module):
    """An interaction over one table's fields followed by its projection: (fields, flat) -> (B, H)."""

    def __init__(self, cfg: ExpertConfig, table: FieldEmbedding, expert_dim: int, mlp_options: dict) -> None:
        super().__init__()
        self.type, self.table = cfg.type, cfg.table
        f, d = table.num_fields, table.dim
        if cfg.type in ("flat_dnn", "cross"):
            in_dim = table.output_dim
            self.interaction = CrossNetV2(in_dim, cfg.cross_layers) if cfg.type == "cross" else nn.Identity()
        elif cfg.type == "ipnn":
            self.interaction = InnerProduct(f)
            in_dim = f * d + self.interaction.num_pairs
        elif cfg.type == "fm":
            self.interaction, in_dim = BiInteraction(), d
        else:
            groups = field_groups(table, cfg.groups)
            g = max(groups) + 1
            if d % g:
                raise ValueError(f"gwpfm keeps one vector per (feature, group): table {cfg.table} has width {d}, "
                                 f"not a multiple of its {g} groups")
            self.interaction = GroupwisePFM(groups, intra=cfg.intra)
            self.group_dim = d // g
            in_dim = self.interaction.num_pairs * self.group_dim
        self.projection = (MLP(in_dim, (*cfg.hidden, expert_dim), **mlp_options) if cfg.project else nn.Identity())
        self.out_dim = expert_dim if cfg.project else in_dim

    def forward(self, fields: Tensor, flat: Tensor) -> Tensor:
        if self.type in ("flat_dnn", "cross"):
            z = self.interaction(flat)
        elif self.type == "gwpfm":
            b, f, d = fields.shape
            z = self.interaction(fields.view(b, f, d // self.group_dim, self.group_dim)).flatten(1)
        else:
            z = self.interaction(fields).flatten(1)
        return self.projection(z)


@MODELS.register("hetero_moe", config=HeteroMoEConfig,
                 paper="Pan et al., Ads Recommendation in a Collapsed and Entangled World, KDD 2024 (section 4.2); "
                       "Guo et al., On the Embedding Collapse When Scaling Up Recommendation Models, ICML 2024",
                 inputs="categorical, multi-valued, sequence, numeric, vector (each table embeds every field)")
class HeteroMoE(RankingModel):
    def __init__(self, space: FeatureSpace, config: HeteroMoEConfig) -> None:
        super().__init__(space, config)
        self.tables = MultiEmbedding([self.field_embedding(dim=w) for w in config.table_widths()])
        opts = config.mlp_options()
        self.experts = nn.ModuleList(Expert(e, self.tables[e.table], config.expert_dim, opts)
                                     for e in config.experts)
        widths = {e.out_dim for e in self.experts}
        if len(widths) > 1:
            raise ValueError(f"experts give widths {sorted(widths)}: mixing needs one width (experts with "
                             f"project: false output their interaction's width; give them project: true)")
        width = widths.pop()
        self.gate = None
        if config.combine == "gate" and len(self.experts) > 1:
            gate_in = (sum(t.output_dim for t in self.tables) if config.gate_input == "embeddings"
                       else width * len(self.experts))
            self.gate = ExpertGate(gate_in, len(self.experts), len(self.tasks), self._allowed(config))
        self.towers = TaskTowers(width, config.hidden, len(self.tasks), **opts)

    def _allowed(self, config: HeteroMoEConfig) -> Tensor | None:
        if config.task_experts is None:
            return None
        unknown = sorted(set(config.task_experts) - set(self.tasks))
        if unknown:
            raise ValueError(f"task_experts names {unknown}, which are not tasks {self.tasks}")
        allowed = torch.ones(len(self.tasks), len(self.experts), dtype=torch.bool)
        for t, task in enumerate(self.tasks):
            if task in config.task_experts:
                idx = list(config.task_experts[task])
                if not idx or min(idx) < 0 or max(idx) >= len(self.experts):
                    raise ValueError(f"task_experts[{task!r}] = {idx}: expert indices must be in 0..{len(self.experts) - 1}")
                allowed[t] = False
                allowed[t, idx] = True
        return allowed

    def table_names(self) -> list[str]:
        """Each embedding table by index and width, in module order (analysis plots label tables with these)."""
        return [f"table {k} ({w}-d)" for k, w in enumerate(self.config.table_widths())]

    def expert_outputs(self, batch: Batch) -> tuple[Tensor, list[Tensor]]:
        """(B, E, H) projected experts and each table's flat input."""
        embedded = self.tables.embed(batch)
        outs = [expert(*embedded[expert.table]) for expert in self.experts]
        return torch.stack(outs, dim=1), [flat for _, flat in embedded]

    def gate_weights(self, batch: Batch) -> Tensor | None:
        """(B, T, E) gate weights, or None when the experts are averaged."""
        return self._mix(batch)[1]

    def _mix(self, batch: Batch) -> tuple[Tensor, Tensor | None]:
        experts, flats = self.expert_outputs(batch)
        weights = None
        if self.gate is not None:
            x = torch.cat(flats, dim=1) if self.config.gate_input == "embeddings" else experts.flatten(1)
            weights = self.gate(x)
        return mix(experts, weights), weights

    def forward(self, batch: Batch) -> dict[str, Tensor]:
        return self.as_tasks(self.towers(self._mix(batch)[0]))
