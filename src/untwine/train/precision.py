"""The float format of the training and scoring forwards: ``train.precision`` fp32, bf16 or auto.

bf16 autocast runs the matrix products in bf16 and keeps weights, optimizer state and loss in fp32. Whether
it is faster depends on the machine: on an AMD EPYC with avx512_bf16 a T1 step ran 2.0-2.5x faster, on a
Xeon without AMX plain bf16 products of the same shapes were slower than fp32
(benchmarks/results/profile/levers.md). So ``auto`` (the default) measures it once per process: a small
MLP's forward + backward in fp32 and under bf16 autocast, at the shapes of a ranking model's dense part;
bf16 when it is at least ``BF16_MIN_SPEEDUP`` times faster, fp32 otherwise. Accuracy is unchanged within
seed noise (P1 / P2 test AUC within 0.0004 of fp32, fast_defaults.md).

A run records the precision it resolved to (its saved config says fp32 or bf16, never auto), so
evaluating or serving it later scores the way it was trained, on any machine. ``train.deterministic``
resolves auto to fp32: a timing probe must not decide a reproducible run's numerics.
"""
from __future__ import annotations

import functools
import time
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["BF16_MIN_SPEEDUP", "PrecisionChoice", "measure_bf16_speedup", "resolve_precision"]

BF16_MIN_SPEEDUP = 1.3  # below this the gain is within what machine noise and autocast's casts eat


@dataclass(frozen=True)
class PrecisionChoice:
    precision: str  # "fp32" or "bf16"
    requested: str
    reason: str
    fp32_ms: float | None = None  # the probe's forward + backward, when it ran
    bf16_ms: float | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def _probe_step(model: nn.Module, x: torch.Tensor, y: torch.Tensor, bf16: bool) -> None:
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        out = model(x).squeeze(1)
    F.binary_cross_entropy_with_logits(out.float(), y).backward()


@functools.lru_cache(maxsize=None)
def measure_bf16_speedup(threads: int, batch: int = 2048, width: int = 256, rounds: int = 5) -> tuple[float, float]:
    """(fp32 ms, bf16 ms) of one forward + backward of a 3-layer MLP on CPU, best of ``rounds`` interleaved
    rounds (interleaved so a noisy neighbour slows both alike). ~0.1 s; once per process and thread count."""
    gen = torch.Generator().manual_seed(0)
    model = nn.Sequential(nn.Linear(width, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(),
                          nn.Linear(width, 1))
    x, y = torch.randn(batch, width, generator=gen), torch.rand(batch, generator=gen)
    best = {False: float("inf"), True: float("inf")}
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for bf16 in (False, True):
            _probe_step(model, x, y, bf16)  # warm-up: oneDNN picks and caches its kernels
        for _ in range(rounds):
            for bf16 in (False, True):
                t0 = time.perf_counter()
                _probe_step(model, x, y, bf16)
                best[bf16] = min(best[bf16], time.perf_counter() - t0)
    finally:
        torch.set_num_threads(previous)
    return best[False] * 1e3, best[True] * 1e3


def _cpu_has_bf16() -> bool:
    check = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
    try:
        return bool(check()) if check is not None else False
    except RuntimeError:
        return False


def resolve_precision(requested: str, device: str = "cpu", deterministic: bool = False) -> PrecisionChoice:
    """``fp32`` / ``bf16`` as asked; ``auto`` by the rules of the module docstring."""
    if requested in ("fp32", "bf16"):
        return PrecisionChoice(requested, requested, "set in train.precision")
    if requested != "auto":
        raise ValueError(f"train.precision must be fp32, bf16 or auto, got {requested!r}")
    if deterministic:
        return PrecisionChoice("fp32", requested, "train.deterministic: no timing probe decides the numerics")
    if device.split(":")[0] != "cpu":
        return PrecisionChoice("fp32", requested, f"the probe measures CPUs only; set bf16 for {device} explicitly")
    if not _cpu_has_bf16():
        return PrecisionChoice("fp32", requested, "this CPU has no native bf16 instructions")
    fp32_ms, bf16_ms = measure_bf16_speedup(torch.get_num_threads())
    speedup = fp32_ms / bf16_ms
    verdict = "bf16" if speedup >= BF16_MIN_SPEEDUP else "fp32"
    return PrecisionChoice(verdict, requested, f"bf16 autocast measured {speedup:.2f}x fp32 on this machine "
                           f"(bf16 at >= {BF16_MIN_SPEEDUP}x)", round(fp32_ms, 3), round(bf16_ms, 3))
