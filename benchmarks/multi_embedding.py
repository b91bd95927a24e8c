"""Cost of multiple embedding tables: K fused lookups against one (issue 4's bound: at most K x).

    python benchmarks/multi_embedding.py [--tables 1 2 4 8] [--batch 4096] [--repeats 30] [--threads 1 2]

A Criteo-shaped feature space (26 categorical fields of 50k values each, zipf-distributed ids, 13 numeric
fields embedded as value x vector) embedded by ``untwine.nn.MultiEmbedding``: K tables of width 10,
beside one table of width 10 (the reference) and one of width 10 K (the same total width in a single
table). Timed: the embedding forward, and forward + backward of the sum of the fields, with dense
gradients (the default Adam path: the backward writes a gradient as large as the table) and with
sparse ones (``embedding_optimizer: sparse_adam`` / ``adagrad``: only the rows looked up), median over ``repeats`` after warm-up, one process, one
configuration after another. Writes benchmarks/results/collapse/multi_embedding.md and .json.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, machine, write_json  # noqa: E402

from untwine.core.batch import Batch  # noqa: E402
from untwine.core.features import FeatureSpace, NumericStats  # noqa: E402
from untwine.core.schema import Feature, Label, Schema  # noqa: E402
from untwine.nn.embedding import FieldEmbedding, MultiEmbedding  # noqa: E402

N_CAT, N_NUM, VOCAB = 26, 13, 50_000


def space() -> FeatureSpace:
    feats = [Feature(name=f"I{i}", kind="numeric") for i in range(N_NUM)]
    feats += [Feature(name=f"C{i}", kind="categorical") for i in range(N_CAT)]
    stats = {f"I{i}": NumericStats(transform="standard", mean=0.0, std=1.0, min=-3.0, max=3.0, count=1, missing=0)
             for i in range(N_NUM)}
    return FeatureSpace(schema=Schema(features=feats, labels=[Label(name="y")]),
                        vocab_sizes={f"C{i}": VOCAB for i in range(N_CAT)}, numeric_stats=stats)


def batch(sp: FeatureSpace, n: int, seed: int) -> Batch:
    rng = np.random.default_rng(seed)
    ids = np.minimum(rng.zipf(1.2, size=(n, N_CAT)) + 1, VOCAB - 1)
    cols = {f.name: ("categorical", j) for j, f in enumerate(sp.schema.categorical)}
    cols.update({f.name: ("numeric", j) for j, f in enumerate(sp.schema.numeric)})
    b = Batch(columns=cols)
    b.categorical = torch.from_numpy(ids).long()
    b.numeric = torch.from_numpy(rng.standard_normal((n, N_NUM)).astype(np.float32))
    b.numeric_raw = b.numeric.clone()
    b.labels = torch.zeros(n, 1)
    return b


def timed(fn, repeats: int) -> float:
    for _ in range(5):
        fn()
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def measure(module: MultiEmbedding, b: Batch, repeats: int) -> tuple[float, float]:
    def forward():
        with torch.no_grad():
            module(b)

    def forward_backward():
        module.zero_grad(set_to_none=True)
        sum(fields.sum() for fields, _ in module(b)).backward()

    return timed(forward, repeats), timed(forward_backward, repeats)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tables", nargs="+", type=int, default=[1, 2, 4, 8])
    ap.add_argument("--batch", type=int, default=4096)
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    ap.add_argument("--gradients", nargs="+", choices=["dense", "sparse"], default=["dense", "sparse"],
                    help="dense: the default Adam path; sparse: embedding_optimizer sparse_adam / adagrad")
    a = ap.parse_args()
    sp = space()
    b = batch(sp, a.batch, 0)
    recs = []
    for grads in a.gradients:
        sparse = grads == "sparse"
        for threads in a.threads:
            torch.set_num_threads(threads)
            torch.manual_seed(0)
            ref_fwd, ref_fb = measure(MultiEmbedding([FieldEmbedding(sp, 10, sparse=sparse)]), b, a.repeats)
            for k in a.tables:
                for shape, widths in (("K tables x 10", [10] * k), ("1 table x 10K", [10 * k])):
                    if k == 1 and shape != "K tables x 10":
                        continue
                    torch.manual_seed(0)
                    fwd, fb = ((ref_fwd, ref_fb) if k == 1 else measure(
                        MultiEmbedding([FieldEmbedding(sp, w, sparse=sparse) for w in widths]), b, a.repeats))
                    recs.append({"gradients": grads, "threads": threads, "tables": k, "shape": shape,
                                 "widths": widths, "forward_ms": fwd * 1e3, "forward_backward_ms": fb * 1e3,
                                 "forward_ratio": fwd / ref_fwd, "forward_backward_ratio": fb / ref_fb})
                    print(recs[-1], flush=True)
    out = RESULTS / "collapse"
    write_json(out / "multi_embedding.json", {"machine": machine(), "batch": a.batch, "records": recs})
    lines = ["# Multi-embedding lookup cost", "", "`python benchmarks/multi_embedding.py " + " ".join(sys.argv[1:]) + "`",
             "", f"Machine: {machine()}. Batch {a.batch}, {N_CAT} categorical fields x {VOCAB:,} values (zipf ids) + "
             f"{N_NUM} numeric fields (value x vector); median of {a.repeats} timings. Ratio = time / time of one "
             "10-wide table in the same run. The issue's bound: K tables cost at most K x one table.", "",
             "| gradients | threads | K | shape | forward ms | x one table | forward+backward ms | x one table | within K x |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in recs:
        ok = r["forward_ratio"] <= r["tables"] and r["forward_backward_ratio"] <= r["tables"]
        lines.append(f"| {r['gradients']} | {r['threads']} | {r['tables']} | {r['shape']} | {r['forward_ms']:.2f} | {r['forward_ratio']:.2f} | "
                     f"{r['forward_backward_ms']:.2f} | {r['forward_backward_ratio']:.2f} | {'yes' if ok else 'NO'} |")
    (out / "multi_embedding.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
