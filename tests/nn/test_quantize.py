"""Scoring copies (nn/quantize.py): int8 layers against a hand-written dynamic quantization, model copies."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from untwine.nn.interaction import CrossNetV2
from untwine.nn.mlp import MLP
from untwine.nn.quantize import INT8_MIN_WIDTH, Int8Linear, int8_available, scoring_copy

pytestmark = pytest.mark.skipif(not int8_available(), reason="this torch build has no FBGEMM int8 linear")


def reference_int8_linear(x: torch.Tensor, layer: nn.Linear, reduce_range: bool) -> torch.Tensor:
    """Dynamic quantization written out in float64: weights symmetric per output row (scale max|w| / 127),
    activations affine over [min(x, 0), max(x, 0)] in 255 (or 127) steps, integer products, rescaled."""
    X, W = x.double(), layer.weight.detach().double()
    sw = W.abs().amax(dim=1) / 127
    wq = torch.clamp(torch.round(W / sw[:, None]), -128, 127)
    qmax = 127 if reduce_range else 255
    lo, hi = min(X.min().item(), 0.0), max(X.max().item(), 0.0)
    sx = (hi - lo) / qmax
    zero = int(np.clip(round(-lo / sx), 0, qmax))
    xq = torch.clamp(torch.round(X / sx) + zero, 0, qmax)
    return sx * ((xq - zero) @ (wq * sw[:, None]).t()) + layer.bias.detach().double()


@pytest.mark.parametrize("reduce_range", [False, True])
def test_int8_linear_equals_the_written_out_quantization(reduce_range):
    torch.manual_seed(0)
    layer = nn.Linear(96, 80)
    x = torch.randn(37, 96) * 2 + 0.3
    got = Int8Linear.from_linear(layer, reduce_range=reduce_range)(x).double()
    ref = reference_int8_linear(x, layer, reduce_range)
    quant_error = (ref - layer(x).detach().double()).abs().max().item()
    assert quant_error > 1e-3  # the reference is really quantized, not the float layer
    assert (got - ref).abs().max().item() < 1e-5


def test_int8_linear_keeps_leading_dims_and_refuses_training():
    layer = nn.Linear(64, 64)
    q = Int8Linear.from_linear(layer)
    x = torch.randn(3, 5, 64)
    assert q(x).shape == (3, 5, 64)
    assert torch.equal(q(x), q(x.reshape(15, 64)).reshape(3, 5, 64))  # one activation range for all 15 rows
    with pytest.raises(RuntimeError, match="scoring only"):
        q(torch.randn(2, 64, requires_grad=True))


class _Model(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.cross = CrossNetV2(width, 2)
        self.mlp = MLP(width, (128, 96))
        self.head = nn.Linear(width + 96, 1)

    def forward(self, x):
        return self.head(torch.cat([self.cross(x), self.mlp(x)], dim=1))


def test_scoring_copy_formats():
    torch.manual_seed(1)
    model = _Model(70)  # not a multiple of 8: fp32 cross padding must not touch the int8 layers
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert scoring_copy(model, "fp32") is model and scoring_copy(model, "bf16") is model
    q = scoring_copy(model, "int8")
    assert q is not model and not q.training
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())  # original untouched
    assert all(type(m) is nn.Linear for m in model.modules() if isinstance(m, (nn.Linear, Int8Linear)))
    assert all(isinstance(layer, Int8Linear) for layer in q.cross.layers)
    assert isinstance(q.mlp.net[0], Int8Linear) and isinstance(q.mlp.net[2], Int8Linear)
    assert type(q.head) is nn.Linear and q.head.out_features < INT8_MIN_WIDTH  # narrow: stays fp32
    x = torch.randn(256, 70)
    with torch.inference_mode():
        ref, got = model(x), q(x)
    rel = ((got - ref).norm() / ref.norm()).item()
    assert 1e-5 < rel < 0.03
    with pytest.raises(ValueError, match="fp32, bf16 or int8"):
        scoring_copy(model, "fp16")


@pytest.mark.parametrize("rows", [500, 4096])  # below and above FUSED_MIN_ROWS (the fp32 fused path's floor)
def test_int8_mlp_is_the_int8_layers_composed(rows):
    """The MLP runs each Int8Linear + ReLU pair as one fused kernel: the same values as the layer, then a ReLU."""
    torch.manual_seed(2)
    mlp = MLP(64, (64, 64)).eval()
    q = scoring_copy(mlp, "int8")
    x = torch.randn(rows, 64)
    with torch.inference_mode():
        expected = torch.relu(q.net[2](torch.relu(q.net[0](x))))
        assert torch.equal(q(x), expected)
        assert torch.equal(q.net[0](x, relu=True), torch.relu(q.net[0](x)))
