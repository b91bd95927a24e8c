"""STEM-AL: STEM for auxiliary learning, one main task helped by auxiliary tasks that are cut at inference."""
from __future__ import annotations

import torch
from pydantic import Field
from torch import Tensor

from untwine.core.batch import Batch
from untwine.core.features import FeatureSpace
from untwine.models.base import MODELS
from untwine.models.multitask import TaskExpertsConfig
from untwine.models.stem import STEM


class STEMALConfig(TaskExpertsConfig):
    main_task: str | None = None  # default: the first task
    inference: bool = Field(False, description="the exported graph: main task only, no auxiliary parameters")


@MODELS.register("stem_al", config=STEMALConfig,
                 paper="Su et al., STEM, AAAI 2024 (auxiliary learning); Pan et al., KDD 2024 (section 5)",
                 inputs="categorical, multi-valued, sequence, numeric, vector (each table embeds every field)")
class STEMAL(STEM):
    """STEM where the main task's gate mixes only the shared and the main-task experts, and each auxiliary
    task's gate mixes the shared, its own and (with stop-gradient) the main-task experts. So the main
    prediction never depends on auxiliary parameters, no auxiliary loss reaches main-task parameters
    except through the shared ones, and :meth:`export_state` gives the inference graph (``inference:
    true``: the shared table, the main table, their experts, the main gate and tower) with identical main
    scores. The auxiliary loss weights a_k are ``train.task_weights``."""

    def __init__(self, space: FeatureSpace, config: STEMALConfig) -> None:
        tasks = space.schema.task_names
        if config.main_task is not None and config.main_task not in tasks:
            raise ValueError(f"main_task {config.main_task!r} is not a task {tasks}")
        if config.inference and len(tasks) != 1:
            raise ValueError(f"an inference STEM-AL has the main task only; the schema has {tasks}")
        self.main_index = tasks.index(config.main_task) if config.main_task else 0
        super().__init__(space, config)

    def _gated_experts(self, task: int) -> int:
        """The main gate mixes the shared and the main experts; an auxiliary gate also its own."""
        c = self.config
        return c.shared_experts + c.task_experts * (1 if task == self.main_index else 2)

    def _mix(self, batch: Batch) -> tuple[Tensor, list[Tensor]]:
        flats = self._flats(batch)
        shared = self.shared(flats[0])
        main = self.main_index
        mixed, weights = [], []
        for t, gate in enumerate(self.gates):
            own = self.specific[t](flats[1 + t])
            experts = [shared, own] if t == main else [shared, own, self.specific[main](flats[1 + main]).detach()]
            w = torch.softmax(gate(torch.cat([flats[1 + t], flats[0]], dim=1)), dim=-1)
            mixed.append((w.unsqueeze(1) @ torch.cat(experts, dim=1))[:, 0])
            weights.append(w)
        return torch.stack(mixed, dim=1), weights

    def gate_weights(self, batch: Batch) -> list[Tensor]:
        """Per task (B, E_t): the main task's over [shared, main experts], an auxiliary task's over
        [shared, own, main experts]."""
        return self._mix(batch)[1]

    def export_state(self) -> dict[str, Tensor]:
        """The main task's parameters renamed for the ``inference: true`` model over the main task alone."""
        m = self.main_index
        rename = {f"tables.{1 + m}.": "tables.1.", f"specific.{m}.": "specific.0.", f"gates.{m}.": "gates.0.",
                  f"towers.towers.{m}.": "towers.towers.0.", "tables.0.": "tables.0.", "shared.": "shared."}
        out = {}
        for key, value in self.state_dict().items():
            for old, new in rename.items():
                if key.startswith(old):
                    out[new + key[len(old):]] = value
        return out
