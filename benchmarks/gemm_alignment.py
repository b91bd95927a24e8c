"""Does a layer width that is not a multiple of the vector width slow the matrix products? (issue 8)

    python benchmarks/gemm_alignment.py [--rounds 9]

T1's widths are odd: 39 fields x 10 = 390 with embedded numerics, 26 x 10 + 13 = 273 with raw ones, so the
cross layers are 390 x 390 (or 273 x 273) and the first MLP layer reads 390 (273) inputs. Times the three
products of one nn.Linear training step at batch 4096 -- forward ``addmm(b, x, W.t())``, input gradient
``g @ W``, weight gradient ``g.t() @ x`` -- in fp32 for each T1 width and the same width rounded up to a
multiple of 8, medians of ``--rounds`` interleaved rounds. Writes benchmarks/results/profile/gemm_alignment_<isa>.md.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, median_ms, write_isa_result  # noqa: E402

PAIRS = [((273, 400), (280, 400)), ((390, 400), (392, 400)), ((390, 390), (392, 392)), ((273, 273), (280, 280))]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=4096)
    a = ap.parse_args()
    import torch

    torch.set_num_threads(a.threads)
    gen = torch.Generator().manual_seed(0)
    shapes = [s for pair in PAIRS for s in pair]
    fns = {}
    for i, o in shapes:
        x, w = torch.randn(a.batch, i, generator=gen), torch.randn(o, i, generator=gen)
        b, g = torch.randn(o, generator=gen), torch.randn(a.batch, o, generator=gen)
        products = [lambda x=x, w=w, b=b: torch.addmm(b, x, w.t()), lambda g=g, w=w: torch.mm(g, w),
                    lambda g=g, x=x: torch.mm(g.t(), x)]
        for j, f in enumerate(products):
            fns[(i, o, j)] = lambda f=f: [f() for _ in range(5)]
    ms = median_ms(fns, a.rounds, per=5)
    med = {(i, o): [ms[(i, o, j)] for j in range(3)] for i, o in shapes}
    lines = ["# fp32 matrix products at T1's odd widths and rounded up to a multiple of 8 (issue 8)", "",
             f"`python benchmarks/gemm_alignment.py {' '.join(sys.argv[1:])}`", "",
             f"Machine: {json.dumps(machine())}. Batch {a.batch}, ms per product, medians of {a.rounds} "
             "interleaved rounds of 5 calls; GFLOP/s of the step's three products together.", "",
             "| layer (in x out) | forward | input gradient | weight gradient | step (3 products) | GFLOP/s |",
             "|---|---|---|---|---|---|"]
    for pair in PAIRS:
        for i, o in pair:
            m = med[(i, o)]
            lines.append(f"| {i}x{o} | {m[0]:.2f} | {m[1]:.2f} | {m[2]:.2f} | {sum(m):.2f} | "
                         f"{3 * 2 * a.batch * i * o / sum(m) / 1e6:.0f} |")
    write_isa_result("gemm_alignment", lines)

if __name__ == "__main__":
    main()
