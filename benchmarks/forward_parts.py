"""Where a scoring forward of a T1 run goes, and how close it is to its matrix products (issue 8, lever 7).
Run benchmarks/throughput.py first (it leaves the runs in benchmarks/.work/runs/). The forward runs in the
precision the run trained in (bf16 autocast where ``train.precision`` resolved to bf16, else fp32).

    python benchmarks/forward_parts.py [--run t1-dcnv2-embed-adam] [--rounds 9]

Three measurements, each a median of ``--rounds`` interleaved rounds over 12 validation batches of 4096:
  1. the run's forward part by part (embedding, cross network, MLP, head);
  2. the GEMMs of those parts alone at the machine's bf16 and fp32 rates (the floor of that forward);
  3. the cross network as shipped against the textbook ``x0 * layer(x) + x`` (a mixed bf16 x fp32
     multiply under bf16), scoring and training (forward + backward), outputs compared (bitwise under bf16).
Writes benchmarks/results/profile/forward_parts_<isa>.md (AVX2 and AVX-512 machines differ most in bf16).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import WORK, machine, median_ms, write_isa_result  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--run", default="t1-dcnv2-embed-adam")
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    import torch

    from untwine.core.allocator import retain_freed_memory
    from untwine.core.dataset_spec import DatasetSpec
    from untwine.data.encode import prepare
    from untwine.data.loader import BatchLoader, SplitArrays
    from untwine.train.run import load_run

    torch.set_num_threads(a.threads)
    retain_freed_memory()
    spec = DatasetSpec.from_yaml(WORK / "t1" / "dataset.yaml")
    data = SplitArrays.open(prepare(spec, progress=False, log=lambda *_: None), "valid")
    run = WORK / "runs" / a.run
    cfg, _, model = load_run(run)
    model.eval()
    train_rate = json.loads((run / "result.json").read_text())["train_samples_per_s"]
    batches = list(BatchLoader(data, spec.schema, 4096, shuffle=False))[:12]
    n = len(batches)
    precision = cfg.train.precision  # a saved run says fp32 or bf16, never auto
    bf16 = torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16")
    has_cross = hasattr(model, "cross")

    # 1. parts of the forward
    with torch.inference_mode(), bf16:
        x0s = [model.embedding.flat(b) for b in batches]
        deeps = [model.mlp(x) for x in x0s]
        crosses = [model.cross(x) for x in x0s] if has_cross else None
        parts = {"embedding (flat)": lambda: [model.embedding.flat(b) for b in batches],
                 "MLP": lambda: [model.mlp(x) for x in x0s]}
        if has_cross:
            parts["cross network"] = lambda: [model.cross(x) for x in x0s]
            parts["head (cat + linear)"] = lambda: [model.head(torch.cat([c.to(d.dtype), d], 1))
                                                    for c, d in zip(crosses, deeps)]
        else:
            parts["head"] = lambda: [model.head(d) for d in deeps]
        parts["whole forward"] = lambda: [model(b) for b in batches]
        part_ms = median_ms(parts, a.rounds, n)

    # 2. the GEMM floor: every Linear of the model at its shape, 4096 rows
    shapes = [(m.in_features, m.out_features) for m in model.modules() if isinstance(m, torch.nn.Linear)]
    counts = {shape: shapes.count(shape) for shape in dict.fromkeys(shapes)}  # each distinct shape timed once
    gemm = {}
    for dtype in (torch.bfloat16, torch.float32):
        # weights laid out as nn.Linear keeps them, (out, in), used transposed
        ops = {(i, o): (torch.randn(4096, i).to(dtype), torch.randn(o, i).to(dtype), torch.randn(o).to(dtype))
               for i, o in counts}
        fns = {f"{i}x{o}": (lambda x=x, w=w, b=b: torch.addmm(b, x, w.t())) for (i, o), (x, w, b) in ops.items()}
        gemm[str(dtype).split(".")[1]] = median_ms(fns, a.rounds * 3, 1)
    # the floor is every layer's product: a shape shared by n layers counts n times
    floor = {k: sum(v[f"{i}x{o}"] * n for (i, o), n in counts.items()) for k, v in gemm.items()}
    flops = sum(2 * 4096 * i * o for i, o in shapes)

    # 3. cross network: textbook expression against the shipped one
    cross_rows = []
    if has_cross:
        layers = model.cross.layers

        def textbook(x0):
            x = x0
            for layer in layers:
                x = x0 * layer(x) + x
            return x

        with torch.inference_mode(), bf16:
            # bitwise under bf16; in fp32 odd widths are zero-padded, whose products round differently
            same = all(torch.equal(textbook(x), model.cross(x)) for x in x0s[:2])
            gap = max((textbook(x) - model.cross(x)).abs().max().item() for x in x0s[:2])
            score = median_ms({"textbook": lambda: [textbook(x) for x in x0s],
                               "shipped": lambda: [model.cross(x) for x in x0s]}, a.rounds, n)
        leaves = [x.detach().clone().requires_grad_() for x in x0s]

        def train_step(f):
            for x in leaves:
                with bf16:
                    y = f(x)
                y.sum().backward()

        train = median_ms({"textbook": lambda: train_step(textbook), "shipped": lambda: train_step(model.cross)},
                          a.rounds, n)
        cross_rows = [f"| scoring (inference) | {score['textbook']:.2f} | {score['shipped']:.2f} | "
                      f"{score['textbook'] / score['shipped']:.2f}x |",
                      f"| training (forward + backward) | {train['textbook']:.2f} | {train['shipped']:.2f} | "
                      f"{train['textbook'] / train['shipped']:.2f}x |"]

    step_ms = 4096 / train_rate * 1e3
    dt = "bfloat16" if precision == "bf16" else "float32"
    lines = [f"# Where a {precision} scoring forward goes: `{a.run}` (issue 8, lever 7)", "",
             f"`python benchmarks/forward_parts.py {' '.join(sys.argv[1:])}`", "",
             f"Machine: {json.dumps(machine())}. Medians of {a.rounds} interleaved rounds, ms per 4096 rows "
             f"(12 validation batches). The run trained at {train_rate:,.0f} samples/s ({step_ms:.1f} ms per "
             f"4096 rows): evaluation at 5x that needs the whole valid pass in {step_ms / 5:.1f} ms per 4096 rows.",
             "", f"## The forward, part by part ({precision}, inference mode)", "",
             "| part | ms / 4096 rows |", "|---|---|",
             *[f"| {k} | {v:.2f} |" for k, v in part_ms.items()], "",
             "## Its matrix products alone (the floor)", "",
             f"{len(shapes)} Linear layers, {flops / 1e9:.2f} GFLOP per 4096 rows.", "",
             "| layer (in x out) | layers | bf16 ms each | fp32 ms each |", "|---|---|---|---|",
             *[f"| {i}x{o} | {n} | {gemm['bfloat16'][f'{i}x{o}']:.2f} | {gemm['float32'][f'{i}x{o}']:.2f} |"
               for (i, o), n in counts.items()],
             f"| **all layers** | {len(shapes)} | **{floor['bfloat16']:.2f}** ({flops / floor['bfloat16'] / 1e6:.0f} GFLOP/s) | "
             f"**{floor['float32']:.2f}** ({flops / floor['float32'] / 1e6:.0f} GFLOP/s) |", "",
             f"The {precision} products are {floor[dt] / part_ms['whole forward']:.0%} of the whole forward "
             f"and {floor[dt] / (step_ms / 5):.0%} of the 5x budget."]
    if cross_rows:
        lines += ["", "## Cross network: textbook `x0 * layer(x) + x` against the shipped forward", "",
                  f"Outputs bitwise equal: {same} (largest difference {gap:.2e}; fp32 pads odd widths to a multiple "
                  "of 8, whose products round differently). ms per 4096 rows.", "",
                  "| pass | textbook | shipped | speed-up |", "|---|---|---|---|", *cross_rows]
    write_isa_result("forward_parts", lines)


if __name__ == "__main__":
    main()
