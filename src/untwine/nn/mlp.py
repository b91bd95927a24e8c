"""Multi-layer perceptron."""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor, nn


class MLP(nn.Module):
    """Linear -> [BatchNorm] -> activation -> [Dropout], repeated; optional linear output layer.

    Args:
        in_dim: input width.
        hidden: widths of the hidden layers (may be empty: then only ``out_dim`` applies).
        out_dim: width of a final linear layer without activation, or None for none.
        dropout: dropout rate after each hidden activation.
        batch_norm: BatchNorm1d after each hidden linear layer.
        layer_norm: LayerNorm after each hidden linear layer.
        xavier_init: xavier-normal weights and zero biases instead of PyTorch's default.

    Example::

        >>> MLP(8, (16, 4))(torch.randn(3, 8)).shape
        torch.Size([3, 4])
    """

    def __init__(self, in_dim: int, hidden: Sequence[int], out_dim: int | None = None, dropout: float = 0.0,
                 batch_norm: bool = False, layer_norm: bool = False, xavier_init: bool = False) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        d = in_dim
        for h in hidden:
            layers.append(nn.Linear(d, h))
            if batch_norm:
                layers.append(nn.BatchNorm1d(h))
            if layer_norm:
                layers.append(nn.LayerNorm(h))
            layers.append(nn.ReLU())
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            d = h
        if out_dim is not None:
            layers.append(nn.Linear(d, out_dim))
            d = out_dim
        self.net = nn.Sequential(*layers)
        self.out_dim = d
        if xavier_init:  # FuxiCTR's initialisation: xavier-normal weights, zero biases
            for m in self.net:
                if isinstance(m, nn.Linear):
                    nn.init.xavier_normal_(m.weight)
                    nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:  # (B, in_dim) -> (B, out_dim)
        return self.net(x)
