"""Scoring copies of a trained model in a cheaper number format: bf16 weights, or int8 matrix products.

A ranking forward on CPU is mostly its Linear layers (benchmarks/results/profile/forward_parts_*.md), so
the format of their products sets the scoring cost:

- ``bf16``: the model itself, run under bf16 autocast. (Weights pre-cast to bf16 give the same values
  and skip autocast's per-call weight casts, but measured no faster in serving's rank stage: 4.4-5.0 ms
  both ways, oneDNN reorders the weights on every call either way.)
- ``int8``: each Linear whose input and output are at least ``INT8_MIN_WIDTH`` wide becomes an
  :class:`Int8Linear` (FBGEMM's dynamic quantization: int8 weights per output channel, activations
  quantized per call from the batch's range, int32 accumulation, fp32 output), run without autocast.
  On AVX-512 VNNI its products run at about 1.6x the bf16 rate, a whole ranking forward of 500
  candidates at 1.16-1.37x (benchmarks/results/profile/int8_scoring_avx512.md). The activation range is the
  batch's, so a row's score moves slightly with the rows beside it (a layer's output within about 1e-2
  relative of fp32; bf16 a few 1e-3, batch-independent). Narrow layers (heads, small projections) stay fp32: quantizing a
  1-wide output would put its rounding directly on the logit for no speed.

The model passed in is never modified: serving keeps the fp32 model for ``/score`` parity checks.
"""
from __future__ import annotations

import copy
import warnings
from typing import Literal

import torch
from torch import Tensor, nn

ScoringPrecision = Literal["fp32", "bf16", "int8"]
INT8_MIN_WIDTH = 64


def _cpu_has_vnni() -> bool:
    """AVX-512 VNNI accumulates u8 x s8 products straight into int32; without it FBGEMM sums pairs in int16,
    which can saturate on full-range (8-bit) activations, so activations then use 7 bits (reduce_range)."""
    capabilities = getattr(torch.cpu, "get_capabilities", None)  # cpuinfo's flags, as torch reads them
    try:
        return bool(capabilities().get("avx512_vnni", False)) if capabilities is not None else False
    except RuntimeError:
        return False


def int8_available() -> bool:
    """Whether this torch build has FBGEMM's dynamic int8 linear (x86 CPU builds do)."""
    return "fbgemm" in torch.backends.quantized.supported_engines and hasattr(torch.ops.quantized, "linear_dynamic")


class Int8Linear(nn.Module):
    """Inference-only ``nn.Linear`` with int8 weights (symmetric, one scale per output row) and activations
    quantized per call (affine uint8 over the batch's min..max), through FBGEMM. Output fp32, bias fp32.

    Example::

        >>> lin = nn.Linear(64, 64)
        >>> x = torch.randn(8, 64)
        >>> bool((Int8Linear.from_linear(lin)(x) - lin(x)).abs().max() < 0.05)
        True
    """

    fuses_relu = True  # MLP's linear_relu calls forward(x, relu=True)

    def __init__(self, packed: torch.ScriptObject, in_features: int, out_features: int, reduce_range: bool) -> None:
        super().__init__()
        self._packed = packed
        self.in_features, self.out_features = in_features, out_features
        self.reduce_range = reduce_range

    @classmethod
    def from_linear(cls, layer: nn.Linear, reduce_range: bool | None = None) -> "Int8Linear":
        w = layer.weight.detach().float()
        scales = (w.abs().amax(dim=1) / 127.0).clamp_min(1e-12).double()
        with warnings.catch_warnings():
            # quantized tensors are deprecated for new code in favour of torchao; this build (the pinned torch)
            # still packs FBGEMM weights only from one, and nothing but the packed weight outlives this call
            warnings.simplefilter("ignore")
            qweight = torch.quantize_per_channel(w, scales, torch.zeros(w.shape[0], dtype=torch.long), 0, torch.qint8)
            bias = None if layer.bias is None else layer.bias.detach().float()
            packed = torch.ops.quantized.linear_prepack(qweight, bias)
        return cls(packed, layer.in_features, layer.out_features,
                   not _cpu_has_vnni() if reduce_range is None else reduce_range)

    def forward(self, x: Tensor, relu: bool = False) -> Tensor:
        """``layer(x)``, or ``relu(layer(x))`` in the same kernel (the MLP's Linear + ReLU pairs)."""
        if torch.is_grad_enabled() and x.requires_grad:
            raise RuntimeError("Int8Linear is for scoring only: it has no backward")
        lead = x.shape[:-1]
        op = torch.ops.quantized.linear_relu_dynamic if relu else torch.ops.quantized.linear_dynamic
        y = op(x.reshape(-1, self.in_features).float().contiguous(), self._packed, reduce_range=self.reduce_range)
        return y.reshape(*lead, self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, reduce_range={self.reduce_range}"


def _replace_linears(module: nn.Module, make) -> None:
    for name, child in module.named_children():
        if type(child) is nn.Linear:  # subclasses (e.g. NonDynamicallyQuantizableLinear in attention) keep theirs
            new = make(child)
            if new is not None:
                setattr(module, name, new)
        else:
            _replace_linears(child, make)


def scoring_copy(model: nn.Module, precision: ScoringPrecision) -> nn.Module:
    """``model`` for scoring in ``precision``: ``fp32`` and ``bf16`` return the model itself (call the bf16 one
    under bf16 autocast); ``int8`` a copy (eval mode, no gradients) with int8 layers, called without
    autocast (see the module doc)."""
    if precision not in ("fp32", "bf16", "int8"):
        raise ValueError(f"scoring precision must be fp32, bf16 or int8, got {precision!r}")
    if precision != "int8":
        return model
    if not int8_available():
        raise RuntimeError("int8 scoring needs a torch build with FBGEMM (x86 CPU builds have it)")
    scorer = copy.deepcopy(model).eval().requires_grad_(False)

    def to_int8(layer: nn.Linear) -> Int8Linear | None:
        return Int8Linear.from_linear(layer) if min(layer.in_features, layer.out_features) >= INT8_MIN_WIDTH else None

    _replace_linears(scorer, to_int8)
    return scorer
