"""Where one training step's time goes (issue 8): DNN and DCN-V2 on T1, batch 4096.

    python benchmarks/profile_step.py [--models dnn dcnv2] [--numeric raw embed] [--opt adam sparse_adam] [--steps 30]

Per configuration, after warm-up steps, every step is cut into regions timed with perf_counter (no
profiler running): batch assembly (the BatchLoader gathering rows from the memory-mapped cache, no
prefetch thread), forward, loss, backward, optimizer update of the embedding tables and of the dense
parameters (two optimizers with the same per-parameter math as the trainer's; ``adam`` is the multi-pass kernel,
``adam_fused`` and ``sparse_adam`` the trainer's defaults with ``train.fused_optimizer``). A second pass under
torch.profiler splits forward and backward into embedding ops and the rest by self CPU time.

Two bounds put the numbers in context, both measured on this machine in the same run:
- compute: dense FLOPs per sample (2 x in x out per linear layer and cross layer, x 3 for forward +
  backward) over the measured fp32 matmul rate of a (4096 x 400) @ (400 x 400) product;
- memory: bytes the step must move -- embedding rows read and their gradients written, plus the
  optimizer reading and writing parameter, gradient and two moments for every table row it touches
  (the whole table for dense Adam, the batch's unique rows for sparse Adam) -- over the measured copy
  bandwidth of a 256 MB tensor.
Writes benchmarks/results/profile/<tag>.json and <tag>.md (``--tag``, default profile_step).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, WORK, machine, write_json  # noqa: E402

OUT = RESULTS / "profile"
EMBEDDING_OPS = ("embedding", "index_select", "index_add", "embedding_bag", "_embedding_bag", "sparse",
                 "coalesce", "_unique", "index_put", "scatter_add", "gather", "_coalesced")


def matmul_gflops(threads: int) -> float:
    import torch

    torch.set_num_threads(threads)
    a, b = torch.randn(4096, 400), torch.randn(400, 400)
    for _ in range(5):
        a @ b
    n, t0 = 50, time.perf_counter()
    for _ in range(n):
        a @ b
    return 2 * 4096 * 400 * 400 * n / (time.perf_counter() - t0) / 1e9


def copy_gbps() -> float:
    import torch

    src = torch.ones(64 * 2**20)  # 256 MB
    dst = torch.empty_like(src)
    dst.copy_(src)
    n, t0 = 10, time.perf_counter()
    for _ in range(n):
        dst.copy_(src)
    return 2 * src.numel() * 4 * n / (time.perf_counter() - t0) / 1e9  # read + write


def dense_flops_per_sample(model) -> float:
    """2 x in x out per Linear, x 3 for forward, input-gradient and weight-gradient products."""
    from torch import nn

    return 3 * sum(2 * m.in_features * m.out_features for m in model.modules() if isinstance(m, nn.Linear))


def profile(model_name: str, numeric: str, opt: str, steps: int, warmup: int, threads: int,
            precision: str = "fp32") -> dict:
    import torch
    import torch.nn.functional as F

    from untwine.core.dataset_spec import DatasetSpec
    from untwine.data.encode import prepare
    from untwine.data.loader import BatchLoader, SplitArrays
    from untwine.data.recipes import prepare as prepare_recipe
    from untwine.models.base import build_model
    from untwine.nn.embedding import FieldEmbedding

    torch.set_num_threads(threads)
    torch.manual_seed(1)
    spec = DatasetSpec.from_yaml(prepare_recipe("t1", WORK / "t1"))
    prepared = prepare(spec, progress=False, log=lambda *_: None)
    model = build_model(model_name, prepared.space, {"numeric": numeric})
    tables = [p for m in model.modules() if isinstance(m, FieldEmbedding) for p in m.embedding_parameters()]
    ids = {id(p) for p in tables}
    dense = [p for p in model.parameters() if id(p) not in ids]
    sparse = opt == "sparse_adam"
    fused = {"fused": True} if opt in ("adam_fused", "sparse_adam") else {}  # the trainer's defaults
    for m in model.modules():
        if isinstance(m, FieldEmbedding):
            m.table.sparse = sparse
    opt_emb = torch.optim.SparseAdam(tables, lr=1e-3) if sparse else torch.optim.Adam(tables, lr=1e-3, **fused)
    opt_dense = torch.optim.Adam(dense, lr=1e-3, **fused)
    loader = BatchLoader(SplitArrays.open(prepared, "train"), spec.schema, 4096, shuffle=True, seed=1, prefetch=0)
    regions = {k: [] for k in ("batch", "forward", "loss", "backward", "optimizer_embeddings", "optimizer_dense")}
    it = iter(loader)
    unique_rows = []

    def step(record: bool):
        t = [time.perf_counter()]
        batch = next(it)
        t.append(time.perf_counter())
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            out = model(batch)
        t.append(time.perf_counter())
        loss = F.binary_cross_entropy_with_logits(next(iter(out.values())).float(), batch.labels[:, 0])
        t.append(time.perf_counter())
        opt_emb.zero_grad(set_to_none=True)
        opt_dense.zero_grad(set_to_none=True)
        loss.backward()
        t.append(time.perf_counter())
        opt_emb.step()
        t.append(time.perf_counter())
        opt_dense.step()
        t.append(time.perf_counter())
        if record:
            for k, name in enumerate(regions):
                regions[name].append(t[k + 1] - t[k])
            unique_rows.append(sum(int(torch.unique(batch.categorical[:, j]).numel())
                                   for j in range(batch.categorical.shape[1])))

    for _ in range(warmup):
        step(False)
    for _ in range(steps):
        step(True)
    # a profiled pass: embedding ops' share of forward and backward (self CPU time)
    from torch.profiler import ProfilerActivity, profile as torch_profile, record_function

    split = {"forward": [0.0, 0.0], "backward": [0.0, 0.0]}
    with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(5):
            batch = next(it)
            with record_function("forward"), torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
                out = model(batch)
            loss = F.binary_cross_entropy_with_logits(next(iter(out.values())).float(), batch.labels[:, 0])
            opt_emb.zero_grad(set_to_none=True)
            opt_dense.zero_grad(set_to_none=True)
            with record_function("backward"):
                loss.backward()
            opt_emb.step()
            opt_dense.step()
    for ev in prof.events():
        if not ev.name.startswith("aten::"):
            continue
        parents, p = [], ev.cpu_parent
        while p is not None:
            parents.append(p.name)
            p = p.cpu_parent
        # autograd runs backward ops under its own nodes ("...Backward0", "autograd::engine::..."), which may
        # not sit under the record_function
        in_backward = any(n == "backward" or "Backward" in n or n.startswith("autograd::") for n in parents)
        region = "backward" if in_backward else "forward" if "forward" in parents else None
        if region is None:
            continue
        is_emb = any(k in ev.name for k in EMBEDDING_OPS)
        split[region][0 if is_emb else 1] += ev.self_cpu_time_total
    ms = {k: 1e3 * float(np.median(v)) for k, v in regions.items()}
    total = sum(ms.values())
    emb_fwd = ms["forward"] * split["forward"][0] / max(sum(split["forward"]), 1e-9)
    emb_bwd = ms["backward"] * split["backward"][0] / max(sum(split["backward"]), 1e-9)
    n_params_table = sum(p.numel() for p in tables)
    d = tables[0].shape[1]
    rows_per_step = 4096 * len(spec.schema.categorical)
    touched = n_params_table if not sparse else float(np.mean(unique_rows)) * d
    bytes_step = 4 * (2 * rows_per_step * d + 7 * touched)  # rows read + grads written; p, g, m, v read, p, m, v written
    return {"model": model_name, "numeric": numeric, "optimizer": opt, "precision": precision, "threads": threads,
            "steps": steps,
            "ms": ms, "ms_total": total, "samples_per_s": 4096 / (total / 1e3),
            "embedding_forward_ms": emb_fwd, "dense_forward_ms": ms["forward"] - emb_fwd,
            "embedding_backward_ms": emb_bwd, "dense_backward_ms": ms["backward"] - emb_bwd,
            "dense_flops_per_sample": dense_flops_per_sample(model), "table_parameters": n_params_table,
            "unique_rows_per_step": float(np.mean(unique_rows)), "bytes_per_step": bytes_step}


def table(res: dict) -> str:
    m = res["machine"]
    lines = ["# One training step on T1, taken apart (issue 8)", "",
             "`python benchmarks/profile_step.py`", "",
             f"Machine: {json.dumps(m)}; measured fp32 matmul {res['matmul_gflops']:.1f} GFLOP/s "
             f"((4096x400)@(400x400)), copy bandwidth {res['copy_gbps']:.1f} GB/s (256 MB, read + write). "
             "Batch 4096; medians over the timed steps, in ms. Embedding / dense split of forward and backward "
             "from torch.profiler's self CPU time. Bounds: dense FLOPs / matmul rate, and bytes the step must "
             "move (rows read, gradients written, optimizer state of the touched table rows) / bandwidth.", "",
             "| model | numerics | emb. optimizer | precision | batch | emb. fwd | dense fwd | loss | emb. bwd | dense bwd | "
             "opt. emb. | opt. dense | total | samples/s | compute bound | memory bound |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in res["runs"]:
        ms = r["ms"]
        compute = r["dense_flops_per_sample"] * 4096 / (res["matmul_gflops"] * 1e9) * 1e3
        memory = r["bytes_per_step"] / (res["copy_gbps"] * 1e9) * 1e3
        lines.append(f"| {r['model']} | {r['numeric']} | {r['optimizer']} | {r.get('precision', 'fp32')} | {ms['batch']:.1f} | "
                     f"{r['embedding_forward_ms']:.1f} | {r['dense_forward_ms']:.1f} | {ms['loss']:.2f} | "
                     f"{r['embedding_backward_ms']:.1f} | {r['dense_backward_ms']:.1f} | "
                     f"{ms['optimizer_embeddings']:.1f} | {ms['optimizer_dense']:.1f} | {r['ms_total']:.1f} | "
                     f"{r['samples_per_s']:,.0f} | {compute:.1f} | {memory:.1f} |")
    lines.append("")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", nargs="+", default=["dnn", "dcnv2"])
    ap.add_argument("--numeric", nargs="+", default=["raw", "embed"])
    ap.add_argument("--opt", nargs="+", default=["adam", "adam_fused", "sparse_adam"],
                    help="adam: dense gradients, multi-pass (foreach) Adam; adam_fused: the same with the fused "
                         "kernel; sparse_adam: sparse table gradients + SparseAdam, fused Adam for the rest")
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--retain", action="store_true",
                    help="keep freed memory for the next step, as the trainer does by default (train.allocator)")
    ap.add_argument("--tag", default="profile_step", help="output name (a machine of another kind: another tag)")
    ap.add_argument("--precision", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"])
    a = ap.parse_args()
    if a.retain:
        from untwine.core.allocator import retain_freed_memory

        retain_freed_memory()
    res = {"machine": machine(), "matmul_gflops": matmul_gflops(a.threads), "copy_gbps": copy_gbps(), "retain": a.retain,
           "runs": []}
    for model in a.models:
        for numeric in a.numeric:
            for opt in a.opt:
                for precision in a.precision:
                    r = profile(model, numeric, opt, a.steps, a.warmup, a.threads, precision)
                    res["runs"].append(r)
                    print(model, numeric, opt, precision, {k: round(v, 1) for k, v in r["ms"].items()},
                          f"{r['samples_per_s']:,.0f}/s", flush=True)
    write_json(OUT / f"{a.tag}.json", res)
    (OUT / f"{a.tag}.md").write_text(table(res))
    print((OUT / f"{a.tag}.md").read_text())


if __name__ == "__main__":
    main()
