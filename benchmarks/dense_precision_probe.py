"""Does a bf16 or compiled path win for T1's dense part on this machine? (issue 8, lever 2)

    python benchmarks/dense_precision_probe.py

The DNN's MLP (273 -> 400 -> 400 -> 400 -> 1) at batch 4096, forward + backward, in fp32, under bf16
autocast, with bf16 weights and inputs, and through torch.compile; and a bare (4096 x 400) @ (400 x 400)
matmul in fp32 and bf16. Prints ms per call (mean of 30-50 calls after 5 warm-up calls).
"""
from __future__ import annotations

import time

import torch
import torch.nn.functional as F
from torch import nn


def mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(273, 400), nn.ReLU(), nn.Linear(400, 400), nn.ReLU(),
                         nn.Linear(400, 400), nn.ReLU(), nn.Linear(400, 1))


def bench(name: str, fn, n: int = 30) -> None:
    for _ in range(5):
        fn()
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    print(f"{name:40s} {1e3 * (time.perf_counter() - t0) / n:7.1f} ms")


def step(model: nn.Module, x: torch.Tensor, y: torch.Tensor, autocast: bool = False) -> None:
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        out = model(x).squeeze(1)
    F.binary_cross_entropy_with_logits(out.float(), y).backward()


def main() -> None:
    torch.set_num_threads(2)
    torch.manual_seed(0)
    x, y = torch.randn(4096, 273), torch.rand(4096)
    fp32 = mlp()
    bench("fp32", lambda: step(fp32, x, y))
    bench("autocast bf16", lambda: step(fp32, x, y, autocast=True))
    bf16 = mlp().to(torch.bfloat16)
    bench("pure bf16 weights + inputs", lambda: step(bf16, x.to(torch.bfloat16), y))
    compiled = torch.compile(mlp())
    try:
        bench("torch.compile fp32", lambda: step(compiled, x, y))
    except Exception as e:  # a missing compiler toolchain must not hide the other numbers
        print("torch.compile failed:", type(e).__name__, str(e)[:200])
    a, b = torch.randn(4096, 400), torch.randn(400, 400)
    bench("matmul fp32 (4096x400)@(400x400)", lambda: a @ b, 50)
    ab, bb = a.bfloat16(), b.bfloat16()
    bench("matmul bf16", lambda: ab @ bb, 50)


if __name__ == "__main__":
    main()
