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
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, median_ms, t1_prepared, write_isa_result  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--batches", type=int, default=10)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    import torch
    import torch.nn.functional as F

    import untwine.nn.interaction as interaction
    from untwine.data.loader import BatchLoader, SplitArrays
    from untwine.models.base import build_model

    spec, prepared = t1_prepared(a.threads)
    shipped = interaction.FP32_ALIGN
    rows = []
    for numeric in ("raw", "embed"):
        model = build_model("dcnv2", prepared.space, {"numeric": numeric})
        opt = torch.optim.Adam(model.parameters(), lr=1e-3, fused=True)
        loader = BatchLoader(SplitArrays.open(prepared, "train"), spec.schema, 4096, shuffle=True, seed=1, prefetch=0)
        batches = [b for _, b in zip(range(a.batches), loader)]

        def train(align: int) -> None:
            interaction.FP32_ALIGN = align
            for b in batches:
                out = model(b)
                loss = F.binary_cross_entropy_with_logits(next(iter(out.values())), b.labels[:, 0])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()

        def score(align: int) -> None:
            interaction.FP32_ALIGN = align
            with torch.inference_mode():
                for b in batches:
                    model(b)

        try:
            ms = median_ms({(kind, align): (lambda f=f, align=align: f(align))
                            for kind, f in (("train", train), ("score", score)) for align in (shipped, 1)},
                           a.rounds, len(batches))
        finally:
            interaction.FP32_ALIGN = shipped
        width = model.embedding.output_dim
        for kind in ("train", "score"):
            padded, plain = ms[(kind, shipped)], ms[(kind, 1)]
            rows.append(f"| {numeric} | {width} | {'training step' if kind == 'train' else 'scoring'} | "
                        f"{plain:.1f} | {padded:.1f} | {plain / padded:.2f}x |")
            print(rows[-1], flush=True)
    write_isa_result("cross_padding_ab", [
        "# DCN-V2 cross network: odd fp32 widths padded to a multiple of 8, interleaved A/B (issue 8)", "",
        f"`python benchmarks/cross_padding_ab.py {' '.join(sys.argv[1:])}`", "",
        f"Machine: {json.dumps(machine())}. T1, batch 4096, fused Adam, retain allocator; medians of "
        f"{a.rounds} interleaved rounds of {a.batches} batches, ms per batch.", "",
        "| numerics | width | pass | unpadded | padded (shipped) | speed-up |", "|---|---|---|---|---|---|", *rows])


if __name__ == "__main__":
    main()
