"""Multi-layer perceptron."""
from __future__ import annotations

import functools
from typing import Sequence

import torch
from torch import Tensor, nn


FUSED_MIN_ROWS = 2048  # measured faster at 4096 rows, not at 500 (levers.md section 9)


@functools.lru_cache(maxsize=None)
def _onednn_linear_relu_available() -> bool:
    """Whether this build and CPU run oneDNN's fp32 linear with a fused ReLU (a private op that inductor emits)."""
    op = getattr(getattr(torch.ops, "mkldnn", None), "_linear_pointwise", None)
    if op is None or not torch.backends.mkldnn.is_available():
        return False
    try:
        x, w, b = torch.randn(4, 3), torch.randn(5, 3), torch.randn(5)
        return bool(torch.allclose(op(x, w, b, "relu", [None], ""), torch.relu(x @ w.t() + b), atol=1e-5))
    except (RuntimeError, NotImplementedError):
        return False


def linear_relu(layer: nn.Module, x: Tensor) -> Tensor:
    """``relu(layer(x))``. Scoring on CPU in fp32 (no autograd, no autocast) goes through oneDNN's fused
    kernel: MKL's linear then a separate ReLU pass took 1.06-1.19x longer in T1 scoring passes on 2 AVX2 cores
    (benchmarks/results/profile/mlp_fused_ab_avx2.md). Training keeps MKL and autograd's backward: the fused
    forward under a custom backward gave no training gain there (0.96-1.06x). Only for batches of at least
    ``FUSED_MIN_ROWS``: at serving's 500 candidates on one thread it was no faster (2.18 against 2.01 ms at
    400 x 400). A layer with ``fuses_relu`` (a scoring copy's ``Int8Linear``, nn/quantize.py) applies the ReLU itself."""
    if (isinstance(layer, nn.Linear) and not torch.is_grad_enabled() and x.dim() == 2 and x.shape[0] >= FUSED_MIN_ROWS
            and x.device.type == "cpu" and x.dtype == torch.float32
            and layer.bias is not None and layer.weight.dtype == torch.float32
            and not torch.is_autocast_enabled("cpu") and _onednn_linear_relu_available()):
        return torch.ops.mkldnn._linear_pointwise(x.contiguous(), layer.weight, layer.bias, "relu", [None], "")
    if getattr(layer, "fuses_relu", False):
        return layer(x, relu=True)
    return torch.relu(layer(x))


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
        # Linear layers followed directly by a ReLU: the pairs linear_relu may run as one kernel
        self._fused_linear_at = frozenset(i for i in range(len(layers) - 1)
                                          if isinstance(layers[i], nn.Linear) and isinstance(layers[i + 1], nn.ReLU))
        self.out_dim = d
        if xavier_init:  # FuxiCTR's initialisation: xavier-normal weights, zero biases
            for m in self.net:
                if isinstance(m, nn.Linear):
                    nn.init.xavier_normal_(m.weight)
                    nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:  # (B, in_dim) -> (B, out_dim)
        skip_relu = False
        for i, layer in enumerate(self.net):
            if skip_relu:
                skip_relu = False
            elif i in self._fused_linear_at:
                x, skip_relu = linear_relu(layer, x), True
            else:
                x = layer(x)
        return x
