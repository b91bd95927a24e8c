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
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, WORK, machine  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--batches", type=int, default=10)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    import torch

    import untwine.nn.mlp as mlp
    from untwine.core.allocator import retain_freed_memory
    from untwine.core.dataset_spec import DatasetSpec
    from untwine.data.encode import prepare
    from untwine.data.loader import BatchLoader, SplitArrays
    from untwine.data.recipes import prepare as prepare_recipe
    from untwine.models.base import build_model

    retain_freed_memory()
    torch.set_num_threads(a.threads)
    torch.manual_seed(1)
    spec = DatasetSpec.from_yaml(prepare_recipe("t1", WORK / "t1"))
    prepared = prepare(spec, progress=False, log=lambda *_: None)
    available = mlp._onednn_linear_relu_available
    if not available():
        raise SystemExit("oneDNN's fused fp32 linear + ReLU does not run on this machine: nothing to compare")
    switch = {True: available, False: lambda: False}
    rows = []
    for name, numeric in (("dnn", "raw"), ("dnn", "embed"), ("dcnv2", "raw"), ("dcnv2", "embed")):
        model = build_model(name, prepared.space, {"numeric": numeric}).eval()
        loader = BatchLoader(SplitArrays.open(prepared, "valid"), spec.schema, 4096, shuffle=False, prefetch=0)
        batches = [b for _, b in zip(range(a.batches), loader)]

        def score_ms() -> float:
            t0 = time.perf_counter()
            with torch.inference_mode():
                for b in batches:
                    model(b)
            return (time.perf_counter() - t0) / len(batches) * 1e3

        times: dict[bool, list[float]] = {True: [], False: []}
        try:
            with torch.inference_mode():
                mlp._onednn_linear_relu_available = switch[True]
                fused_out = [next(iter(model(b).values())) for b in batches[:2]]
                mlp._onednn_linear_relu_available = switch[False]
                plain_out = [next(iter(model(b).values())) for b in batches[:2]]
            diff = max(float((f - p).abs().max()) for f, p in zip(fused_out, plain_out))
            for fused in (True, False):  # warm-up
                mlp._onednn_linear_relu_available = switch[fused]
                score_ms()
            for _ in range(a.rounds):
                for fused in (True, False):
                    mlp._onednn_linear_relu_available = switch[fused]
                    times[fused].append(score_ms())
        finally:
            mlp._onednn_linear_relu_available = available
        fused_ms, plain_ms = statistics.median(times[True]), statistics.median(times[False])
        rows.append(f"| {name} | {numeric} | {plain_ms:.1f} | {fused_ms:.1f} | {plain_ms / fused_ms:.2f}x | {diff:.1e} |")
        print(rows[-1], flush=True)
    lines = ["# Scoring: oneDNN's fused linear + ReLU against MKL's linear then ReLU, interleaved A/B (issue 8)", "",
             f"`python benchmarks/mlp_fused_ab.py {' '.join(sys.argv[1:])}`", "",
             f"Machine: {json.dumps(machine())}. T1 validation batches of 4096, fp32, inference mode, untrained "
             f"weights; medians of {a.rounds} interleaved rounds of {a.batches} batches, ms per batch.", "",
             "| model | numerics | MKL + ReLU | oneDNN fused (shipped) | speed-up | max abs logit difference |",
             "|---|---|---|---|---|---|", *rows]
    out = RESULTS / "profile" / f"mlp_fused_ab_{torch.backends.cpu.get_cpu_capability().lower()}.md"
    out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
