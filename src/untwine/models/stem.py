"""STEM: shared and task-specific embeddings, all-forward task-specific-backward experts (Su et al., AAAI 2024)."""
from __future__ import annotations

import torch
from torch import Tensor, nn

from untwine.core.batch import Batch
from untwine.core.features import FeatureSpace
from untwine.models.base import MODELS, RankingModel
from untwine.models.multitask import TaskExpertsConfig
from untwine.nn.embedding import MultiEmbedding
from untwine.nn.experts import ExpertBank, TaskTowers


@MODELS.register("stem", config=TaskExpertsConfig,
                 paper="Su et al., STEM: Unleashing the Power of Embeddings for Multi-task Recommendation, AAAI 2024",
                 inputs="categorical, multi-valued, sequence, numeric, vector (each table embeds every field)")
class STEM(RankingModel):
    """Every field has a shared embedding (table 0) and one per task (table 1 + t). Shared experts read the
    shared table, task t's experts read table 1 + t. Task t's gate reads [task-t fields; shared fields] and
    mixes every expert, but the outputs of the other tasks' specific experts enter with stop-gradient, so
    task t's loss never updates another task's embedding or experts (SPEC 4)."""

    def __init__(self, space: FeatureSpace, config: TaskExpertsConfig) -> None:
        super().__init__(space, config)
        t = len(self.tasks)
        self.tables = MultiEmbedding([self.field_embedding() for _ in range(1 + t)])
        d, opts = self.tables[0].output_dim, config.mlp_options()
        self.shared = ExpertBank(d, config.shared_experts, config.expert_hidden, **opts)
        self.specific = nn.ModuleList(ExpertBank(d, config.task_experts, config.expert_hidden, **opts) for _ in range(t))
        self.gates = nn.ModuleList(nn.Linear(2 * d, self._gated_experts(k)) for k in range(t))
        self.towers = TaskTowers(self.shared.out_dim, config.hidden, t, **opts)

    def _gated_experts(self, task: int) -> int:
        """How many experts task ``task``'s gate mixes: the shared ones and every task's."""
        return self.config.shared_experts + len(self.tasks) * self.config.task_experts

    def table_names(self) -> list[str]:
        """What each embedding table is for, in module order (analysis plots label tables with these)."""
        return ["shared", *(f"{t} table" for t in self.tasks)]

    def _flats(self, batch: Batch) -> list[Tensor]:
        return [flat for _, flat in self.tables.embed(batch)]

    def _mix(self, batch: Batch) -> tuple[Tensor, Tensor]:
        flats = self._flats(batch)
        shared = self.shared(flats[0])
        specific = [bank(x) for bank, x in zip(self.specific, flats[1:])]
        mixed, weights = [], []
        for t, gate in enumerate(self.gates):
            experts = torch.cat([shared] + [e if j == t else e.detach() for j, e in enumerate(specific)], dim=1)
            w = torch.softmax(gate(torch.cat([flats[1 + t], flats[0]], dim=1)), dim=-1)
            mixed.append((w.unsqueeze(1) @ experts)[:, 0])
            weights.append(w)
        return torch.stack(mixed, dim=1), torch.stack(weights, dim=1)

    def gate_weights(self, batch: Batch) -> Tensor:
        """(B, T, E) gate weights; experts ordered shared, then task 0's, task 1's, ..."""
        return self._mix(batch)[1]

    def forward(self, batch: Batch) -> dict[str, Tensor]:
        return self.as_tasks(self.towers(self._mix(batch)[0]))
