"""Options shared by the multi-task models (shared-bottom, MMoE, PLE, STEM)."""
from __future__ import annotations

from pydantic import Field

from untwine.models.base import MLPConfig


class MultiTaskConfig(MLPConfig):
    """``hidden`` (and the other MLP options) are each task tower's; ``expert_hidden`` each expert's layers
    (the shared bottom's, for shared-bottom)."""

    hidden: tuple[int, ...] = (128,)
    expert_hidden: tuple[int, ...] = Field((256, 128), min_length=1)


class MMoEConfig(MultiTaskConfig):
    num_experts: int = Field(4, ge=1)


class TaskExpertsConfig(MultiTaskConfig):
    """Experts shared by all tasks and experts specific to each task (PLE, STEM)."""

    shared_experts: int = Field(1, ge=1)
    task_experts: int = Field(1, ge=1)
