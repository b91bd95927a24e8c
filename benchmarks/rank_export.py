"""Is a TorchScript (torch.jit.trace) or torch.compile ranking forward faster than eager for serving?

Scores the bundle's ranking model on a 500-candidate batch of real requests, one request at a time, on
one thread (as one serving thread does): eager fp32, eager bf16 autocast, traced TorchScript fp32 and
torch.compile fp32; the same outputs checked against eager.

    python benchmarks/rank_export.py --bundle runs/serving/bundle-sim100k

Writes benchmarks/results/serving/rank_export.md.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, machine  # noqa: E402
from serving import request_bodies  # noqa: E402

from untwine.core.batch import Batch  # noqa: E402
from untwine.serving.contract import RecommendRequest  # noqa: E402
from untwine.serving.funnel import BundleFunnel  # noqa: E402


class Flat(torch.nn.Module):
    """The ranker over a flat tuple of tensors (trace needs tensors, not a Batch)."""

    def __init__(self, model, template: Batch) -> None:
        super().__init__()
        self.model, self.columns = model, template.columns
        self.keys = [("categorical", None), ("numeric", None), ("numeric_raw", None)]
        self.keys += [("seq", k) for k in template.seq] + [("multi", k) for k in template.multi]
        self.keys += [("vectors", k) for k in template.vectors]
        self.task = model.tasks[0]

    def flatten(self, b: Batch) -> tuple:
        return tuple(getattr(b, a) if k is None else getattr(b, a)[k] for a, k in self.keys)

    def forward(self, *tensors):
        b = Batch(columns=self.columns)
        for (a, k), t in zip(self.keys, tensors):
            if k is None:
                setattr(b, a, t)
            else:
                getattr(b, a)[k] = t
        return self.model(b)[self.task]


def timed(fn, batches, repeat: int = 3) -> float:
    fn(batches[0])
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        for b in batches:
            fn(b)
        best = min(best, (time.perf_counter() - t0) / len(batches) * 1e3)
    return best


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--bundle", default="runs/serving/bundle-sim100k")
    ap.add_argument("--requests", type=int, default=30)
    ap.add_argument("--out", type=Path, default=RESULTS / "serving" / "rank_export.md")
    args = ap.parse_args()
    torch.set_num_threads(1)
    f = BundleFunnel.load(args.bundle)
    rng = np.random.default_rng(0)
    batches = []
    for body in request_bodies(args.requests, 20):
        req = RecommendRequest(**body)
        row = f.rank_rows.user_row(f._record(req.user, req.history, f.rank_space))
        batches.append(f.rank_rows.batch(row, rng.choice(len(f.item_ids), 500, replace=False)))
    flat = Flat(f.ranker, batches[0]).eval()
    with torch.inference_mode():
        eager = lambda b: flat(*flat.flatten(b))  # noqa: E731
        want = [eager(b) for b in batches]
    with torch.no_grad():
        traced = torch.jit.freeze(torch.jit.trace(flat, flat.flatten(batches[0]), check_trace=False))
        compiled = torch.compile(flat, dynamic=False)
        rows = []
        with torch.inference_mode():
            rows.append(("eager fp32", timed(eager, batches), 0.0))

            def bf16(b):
                with torch.autocast("cpu", dtype=torch.bfloat16):
                    return eager(b).float()
            rows.append(("eager bf16 autocast", timed(bf16, batches),
                         max(float((torch.sigmoid(bf16(b)) - torch.sigmoid(w)).abs().max()) for b, w in zip(batches, want))))
        for name, fn in (("TorchScript trace+freeze fp32", lambda b: traced(*flat.flatten(b))),
                         ("torch.compile fp32", lambda b: compiled(*flat.flatten(b)))):
            diff = max(float((torch.sigmoid(fn(b)) - torch.sigmoid(w)).abs().max()) for b, w in zip(batches, want))
            rows.append((name, timed(fn, batches), diff))
    m = machine()
    lines = ["# Ranking forward for serving: eager vs TorchScript vs torch.compile", "",
             f"The bundle's ranking model ({type(f.ranker).__name__}) on 500-candidate batches of {len(batches)} "
             f"real requests, one request at a time, 1 torch thread (as one serving thread). Best of 3 passes.", "",
             "| path | ms per 500-candidate forward | max abs diff of pCTR vs eager fp32 |", "|---|---|---|"]
    lines += [f"| {n} | {ms:.2f} | {d:.2e} |" for n, ms, d in rows]
    lines += ["", f"Command: `python benchmarks/rank_export.py --bundle {args.bundle}`. Machine: {m['cpu']}, "
              f"{m['cores']} cores, {m['isa']}, torch {m['torch']}."]
    out = args.out
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
