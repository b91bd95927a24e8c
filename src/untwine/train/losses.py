"""Per-task binary cross-entropy with optional label masks and sample weights."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from untwine.core.batch import Batch


def multitask_bce(logits: dict[str, Tensor], batch: Batch, task_weights: list[float]) -> tuple[Tensor, dict[str, Tensor]]:
    """sum_t w_t * mean over counted rows of BCE(logit_t, y_t), rows counted by mask and weighted.

    A task's mean is over the rows where its mask is 1 (all rows without a mask), each row scaled
    by the sample weight; a batch where a task has no counted rows contributes 0 for that task.
    """
    total = torch.zeros((), dtype=torch.float32, device=batch.labels.device)
    per_task: dict[str, Tensor] = {}
    for t, (name, z) in enumerate(logits.items()):
        y = batch.labels[:, t]
        w = batch.weights if batch.weights is not None else None
        if batch.label_mask is not None:
            m = batch.label_mask[:, t]
            w = m if w is None else w * m
        if w is None:
            loss = F.binary_cross_entropy_with_logits(z, y)
        else:
            loss = (F.binary_cross_entropy_with_logits(z, y, reduction="none") * w).sum() / w.sum().clamp_min(1e-12)
        per_task[name] = loss
        total = total + task_weights[t] * loss
    return total, per_task
