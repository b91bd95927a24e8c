"""Does any bf16 or compile path win for T1's dense part on this machine? MLP 273->400->400->400->1, batch 4096,
forward + backward, and a bare (4096x400)@(400x400) matmul.    python benchmarks/dense_precision_probe.py"""
import time, torch
from torch import nn
torch.set_num_threads(2)
torch.manual_seed(0)
x = torch.randn(4096, 273)
y = torch.rand(4096)
def make():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(273, 400), nn.ReLU(), nn.Linear(400, 400), nn.ReLU(), nn.Linear(400, 400), nn.ReLU(), nn.Linear(400, 1))
def bench(name, fn, n=30):
    for _ in range(5): fn()
    t = time.perf_counter()
    for _ in range(n): fn()
    print(f"{name:40s} {1e3 * (time.perf_counter() - t) / n:7.1f} ms")
m = make()
def fp32():
    loss = nn.functional.binary_cross_entropy_with_logits(m(x).squeeze(1), y); loss.backward()
bench("fp32", fp32)
def autocast():
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = m(x).squeeze(1)
    nn.functional.binary_cross_entropy_with_logits(out.float(), y).backward()
bench("autocast bf16", autocast)
mb = make().to(torch.bfloat16); xb = x.to(torch.bfloat16)
def pure():
    nn.functional.binary_cross_entropy_with_logits(mb(xb).squeeze(1).float(), y).backward()
bench("pure bf16 weights + inputs", pure)
mc = torch.compile(make())
def compiled():
    nn.functional.binary_cross_entropy_with_logits(mc(x).squeeze(1), y).backward()
try:
    bench("torch.compile fp32", compiled)
except Exception as e:
    print("compile failed:", type(e).__name__, str(e)[:200])
a, b = torch.randn(4096, 400), torch.randn(400, 400)
bench("matmul fp32 (4096x400)@(400x400)", lambda: a @ b, 50)
ab, bb = a.bfloat16(), b.bfloat16()
bench("matmul bf16", lambda: ab @ bb, 50)
