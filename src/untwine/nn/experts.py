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

    def __init__(self, in_dim: int, num_experts: int, num_tasks: int, allowed: Tensor | None = None) -> None:
        super().__init__()
        self.num_experts, self.num_tasks = num_experts, num_tasks
        self.linear = nn.Linear(in_dim, num_experts * num_tasks)
        if allowed is not None:  # (T, E) bool: a static task -> experts assignment; the others get weight 0
            if tuple(allowed.shape) != (num_tasks, num_experts) or not allowed.any(dim=1).all():
                raise ValueError(f"allowed must be a ({num_tasks}, {num_experts}) mask with an expert for every task")
            self.register_buffer("allowed", allowed.bool(), persistent=False)
        else:
            self.allowed = None

    def forward(self, x: Tensor) -> Tensor:
        logits = self.linear(x).view(-1, self.num_tasks, self.num_experts)
        if self.allowed is not None:
            logits = logits.masked_fill(~self.allowed, float("-inf"))
        return torch.softmax(logits, dim=-1)


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


class ExpertBank(nn.Module):
    """E independent MLP experts reading one input: (B, in) -> (B, E, H), H = the last hidden width."""

    def __init__(self, in_dim: int, num_experts: int, hidden: Sequence[int], **mlp_options) -> None:
        super().__init__()
        if not hidden:
            raise ValueError("an expert needs at least one hidden layer")
        self.experts = nn.ModuleList(MLP(in_dim, hidden, **mlp_options) for _ in range(num_experts))
        self.out_dim = hidden[-1]

    def forward(self, x: Tensor) -> Tensor:
        return torch.stack([e(x) for e in self.experts], dim=1)


class ExtractionLayer(nn.Module):
    """One PLE extraction layer (customised gate control): each task has its own experts and all tasks share
    some; task t's gate, read from task t's input, mixes its own and the shared experts; the shared gate,
    read from the shared input, mixes every expert for the next layer (none in the last layer).

    (task inputs T x (B, in), shared input (B, in)) -> (task outputs T x (B, H), shared output (B, H) or None)
    """

    def __init__(self, in_dim: int, num_tasks: int, task_experts: int, shared_experts: int, hidden: Sequence[int],
                 last: bool, **mlp_options) -> None:
        super().__init__()
        self.task_banks = nn.ModuleList(ExpertBank(in_dim, task_experts, hidden, **mlp_options)
                                        for _ in range(num_tasks))
        self.shared_bank = ExpertBank(in_dim, shared_experts, hidden, **mlp_options)
        self.task_gates = nn.ModuleList(nn.Linear(in_dim, task_experts + shared_experts) for _ in range(num_tasks))
        self.shared_gate = None if last else nn.Linear(in_dim, num_tasks * task_experts + shared_experts)
        self.out_dim = self.shared_bank.out_dim

    def forward(self, task_inputs: list[Tensor], shared_input: Tensor) -> tuple[list[Tensor], Tensor | None]:
        shared = self.shared_bank(shared_input)  # (B, S, H)
        specific = [bank(x) for bank, x in zip(self.task_banks, task_inputs)]  # T x (B, k, H)
        outs = []
        for x, own, gate in zip(task_inputs, specific, self.task_gates):
            w = torch.softmax(gate(x), dim=-1).unsqueeze(1)  # (B, 1, k + S)
            outs.append((w @ torch.cat([own, shared], dim=1))[:, 0])
        if self.shared_gate is None:
            return outs, None
        w = torch.softmax(self.shared_gate(shared_input), dim=-1).unsqueeze(1)
        return outs, (w @ torch.cat([*specific, shared], dim=1))[:, 0]
