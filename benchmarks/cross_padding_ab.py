"""The cross network's fp32 width padding (issue 8, lever 8), measured as an interleaved A/B in one process.

    python benchmarks/cross_padding_ab.py [--rounds 6] [--batches 10]

DCN-V2 on T1 (raw and embedded numerics: cross widths 273 and 390), fused Adam, the retain allocator, 2
threads. Each round times ``--batches`` training steps and then a scoring pass (inference mode) over the
same batches with ``untwine.nn.interaction.FP32_ALIGN`` at 8 (the shipped padding) and at 1 (no padding),
alternating, so a machine that drifts slows both alike. Medians in ms per 4096-row batch.
Writes benchmarks/results/profile/cross_padding_ab_<isa>.md.
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
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--batches", type=int, default=10)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    import torch
    import torch.nn.functional as F

    import untwine.nn.interaction as interaction
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
    shipped = interaction.FP32_ALIGN
    rows = []
    for numeric in ("raw", "embed"):
        model = build_model("dcnv2", prepared.space, {"numeric": numeric})
        opt = torch.optim.Adam(model.parameters(), lr=1e-3, fused=True)
        loader = BatchLoader(SplitArrays.open(prepared, "train"), spec.schema, 4096, shuffle=True, seed=1, prefetch=0)
        batches = [b for _, b in zip(range(a.batches), loader)]

        def train_ms() -> float:
            t0 = time.perf_counter()
            for b in batches:
                out = model(b)
                loss = F.binary_cross_entropy_with_logits(next(iter(out.values())), b.labels[:, 0])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
            return (time.perf_counter() - t0) / len(batches) * 1e3

        def score_ms() -> float:
            t0 = time.perf_counter()
            with torch.inference_mode():
                for b in batches:
                    model(b)
            return (time.perf_counter() - t0) / len(batches) * 1e3

        times: dict[tuple[str, int], list[float]] = {}
        try:
            for align in (shipped, 1):  # warm-up: each width's kernels built once
                interaction.FP32_ALIGN = align
                train_ms(), score_ms()
            for _ in range(a.rounds):
                for align in (shipped, 1):
                    interaction.FP32_ALIGN = align
                    times.setdefault(("train", align), []).append(train_ms())
                    times.setdefault(("score", align), []).append(score_ms())
        finally:
            interaction.FP32_ALIGN = shipped
        width = model.embedding.output_dim
        for kind in ("train", "score"):
            padded, plain = statistics.median(times[(kind, shipped)]), statistics.median(times[(kind, 1)])
            rows.append(f"| {numeric} | {width} | {'training step' if kind == 'train' else 'scoring'} | "
                        f"{plain:.1f} | {padded:.1f} | {plain / padded:.2f}x |")
            print(rows[-1], flush=True)
    lines = ["# DCN-V2 cross network: odd fp32 widths padded to a multiple of 8, interleaved A/B (issue 8)", "",
             f"`python benchmarks/cross_padding_ab.py {' '.join(sys.argv[1:])}`", "",
             f"Machine: {json.dumps(machine())}. T1, batch 4096, fused Adam, retain allocator; medians of "
             f"{a.rounds} interleaved rounds of {a.batches} batches, ms per batch.", "",
             "| numerics | width | pass | unpadded | padded (shipped) | speed-up |", "|---|---|---|---|---|---|", *rows]
    out = RESULTS / "profile" / f"cross_padding_ab_{torch.backends.cpu.get_cpu_capability().lower()}.md"
    out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
