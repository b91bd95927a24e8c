"""Scoring through oneDNN's fused linear + ReLU against MKL's linear then ReLU (issue 8), interleaved A/B.

    python benchmarks/mlp_fused_ab.py [--rounds 7] [--batches 10]

DNN and DCN-V2 (raw and embedded numerics) on T1, scoring passes (inference mode, fp32) over
``--batches`` batches of 4096, with ``untwine.nn.mlp``'s fused path on and off in alternation, so a drifting
machine slows both alike. Training is not compared: it takes the MKL path either way. Medians in ms per batch.
Writes benchmarks/results/profile/mlp_fused_ab_<isa>.md.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, median_ms, t1_prepared, write_isa_result  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--batches", type=int, default=10)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    import torch

    import untwine.nn.mlp as mlp
    from untwine.data.loader import BatchLoader, SplitArrays
    from untwine.models.base import build_model

    spec, prepared = t1_prepared(a.threads)
    available = mlp._onednn_linear_relu_available
    if not available():
        raise SystemExit("oneDNN's fused fp32 linear + ReLU does not run on this machine: nothing to compare")
    switch = {True: available, False: lambda: False}
    rows = []
    for name, numeric in (("dnn", "raw"), ("dnn", "embed"), ("dcnv2", "raw"), ("dcnv2", "embed")):
        model = build_model(name, prepared.space, {"numeric": numeric}).eval()
        loader = BatchLoader(SplitArrays.open(prepared, "valid"), spec.schema, 4096, shuffle=False, prefetch=0)
        batches = [b for _, b in zip(range(a.batches), loader)]

        @torch.inference_mode()
        def score(fused: bool, only: int | None = None) -> list:
            mlp._onednn_linear_relu_available = switch[fused]
            return [next(iter(model(b).values())) for b in batches[:only]]

        try:
            diff = max(float((f - p).abs().max()) for f, p in zip(score(True, 2), score(False, 2)))
            ms = median_ms({fused: (lambda fused=fused: score(fused)) for fused in (True, False)},
                           a.rounds, len(batches))
        finally:
            mlp._onednn_linear_relu_available = available
        rows.append(f"| {name} | {numeric} | {ms[False]:.1f} | {ms[True]:.1f} | {ms[False] / ms[True]:.2f}x | {diff:.1e} |")
        print(rows[-1], flush=True)
    write_isa_result("mlp_fused_ab", [
        "# Scoring: oneDNN's fused linear + ReLU against MKL's linear then ReLU, interleaved A/B (issue 8)", "",
        f"`python benchmarks/mlp_fused_ab.py {' '.join(sys.argv[1:])}`", "",
        f"Machine: {json.dumps(machine())}. T1 validation batches of 4096, fp32, inference mode, untrained "
        f"weights; medians of {a.rounds} interleaved rounds of {a.batches} batches, ms per batch.", "",
        "| model | numerics | MKL + ReLU | oneDNN fused (shipped) | speed-up | max abs logit difference |",
        "|---|---|---|---|---|---|", *rows])


if __name__ == "__main__":
    main()
