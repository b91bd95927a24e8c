"""Mixture-of-experts pieces shared by the multi-expert models: softmax gates over experts and per-task
towers."""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor, nn

from untwine.nn.mlp import MLP


class ExpertGate(nn.Module):
    """One softmax gate per task over E experts, read from a gate input: (B, in) -> (B, T, E).

    Example::

        >>> ExpertGate(8, num_experts=3, num_tasks=2)(torch.randn(4, 8)).sum(-1)
        tensor([[1., 1.],
                [1., 1.],
                [1., 1.],
                [1., 1.]], grad_fn=<SumBackward1>)
    """

    def __init__(self, in_dim: int, num_experts: int, num_tasks: int) -> None:
        super().__init__()
        self.num_experts, self.num_tasks = num_experts, num_tasks
        self.linear = nn.Linear(in_dim, num_experts * num_tasks)

    def forward(self, x: Tensor) -> Tensor:
        return torch.softmax(self.linear(x).view(-1, self.num_tasks, self.num_experts), dim=-1)


def mix(experts: Tensor, weights: Tensor | None) -> Tensor:
    """Combine expert outputs (B, E, H) per task: a gate's weights (B, T, E) -> (B, T, H); None -> the mean
    (B, 1, H), shared by every task."""
    if weights is None:
        e = experts.shape[1]
        return (experts.sum(dim=1) / e if e > 1 else experts[:, 0]).unsqueeze(1)
    return weights @ experts


class TaskTowers(nn.Module):
    """One tower per task: an MLP then a linear output, (B, T or 1, H) -> (B, T) logits."""

    def __init__(self, in_dim: int, hidden: Sequence[int], num_tasks: int, **mlp_options) -> None:
        super().__init__()
        self.towers = nn.ModuleList()
        for _ in range(num_tasks):
            body = MLP(in_dim, hidden, **mlp_options)
            self.towers.append(nn.Sequential(body, nn.Linear(body.out_dim, 1)))

    def forward(self, h: Tensor) -> Tensor:
        shared = h.shape[1] == 1
        return torch.cat([tower(h[:, 0 if shared else t]) for t, tower in enumerate(self.towers)], dim=1)
