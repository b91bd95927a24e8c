"""Training throughput, side by side in one run: untwine vs a model-bound pure-PyTorch loop vs peers.

    python benchmarks/throughput.py [--datasets t1 p1] [--models dnn dcnv2] [--epochs 1] [--no-peers]

Each measurement runs in its own process (clean peak RSS), one after another on the same machine:
- ``untwine``: ``untwine train`` machinery (encoded cache -> BatchLoader -> model -> optimizers),
  samples/s of pure training epochs (evaluation excluded);
- ``bound``: the same architecture written in plain PyTorch, trained on tensors already in memory
  (no data pipeline at all): the upper bound for the model step;
- peers (``benchmarks/peers``): FuxiCTR and DeepCTR-Torch through their own APIs.
Numeric fields are compared like with like: ``raw`` (values join the dense input, as DeepCTR does)
and ``embed`` (one vector per numeric field scaled by the value, as FuxiCTR does).
Results: benchmarks/results/throughput/<name>.json and throughput.md.
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import peak_rss_self_mb as peak_rss_mb, PY, RESULTS, ROOT, WORK, machine, run_json, write_json  # noqa: E402

BATCH = {"t1": 4096, "p1": 1024, "p2": 1024}


def dataset_yaml(name: str) -> Path:
    from untwine.data.recipes import prepare

    return prepare(name, WORK / name)


# ----------------------------------------------------------------------------- children
def child_untwine(a) -> dict:
    import torch

    from untwine.train.config import ExperimentConfig
    from untwine.train.run import run_experiment

    torch.set_num_threads(a.threads)
    cfg = ExperimentConfig.from_dict({
        "dataset": str(dataset_yaml(a.dataset)), "model": {"name": a.model, "numeric": a.numeric},
        "train": {"batch_size": BATCH[a.dataset], "epochs": a.epochs, "patience": 100, "seed": 1,
                  "embedding_optimizer": a.opt, "progress": False, "precision": a.precision,
                  "allocator": a.allocator}})
    # valid/test evaluation runs after the timed epochs and is excluded from samples/s
    run_dir = WORK / "runs" / f"{a.dataset}-{a.model}-{a.numeric}-{a.opt}"
    r = run_experiment(cfg, run_dir=run_dir, resume=False, log=lambda *_: None)
    valid = [rec for rec in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())
             if rec["split"] == "valid"]
    eval_rate = max(rec["rows"] / rec["seconds"] for rec in valid)  # the trainer's own valid pass: loader, forward, metrics
    return {"samples_per_s": r.train_samples_per_s, "eval_rows_per_s": eval_rate,
            "eval_vs_train": eval_rate / r.train_samples_per_s, "precision": r.precision["precision"],
            "prepare_seconds": r.prepare_seconds, "num_parameters": r.num_parameters}


def child_bound(a) -> dict:
    """Plain PyTorch: fused embedding table, MLP / cross net, Adam; batches sliced from in-memory tensors."""
    import numpy as np
    import torch
    from torch import nn

    from untwine.data.encode import prepare
    from untwine.core.dataset_spec import DatasetSpec

    torch.set_num_threads(a.threads)
    torch.manual_seed(1)
    if a.allocator == "retain":  # the same malloc settings untwine's default uses, to separate the two gains
        from untwine.core.allocator import retain_freed_memory

        retain_freed_memory()
    prepared = prepare(DatasetSpec.from_yaml(dataset_yaml(a.dataset)))
    arrays = {}
    for name, info in prepared.arrays["train"].items():
        arrays[name] = np.fromfile(prepared.root / "train" / f"{name}.bin", dtype=info["dtype"]).reshape(info["shape"])
    cat = torch.from_numpy(arrays["categorical"].astype(np.int64))
    num = torch.from_numpy(arrays["numeric"]) if "numeric" in arrays else torch.zeros(len(cat), 0)
    y = torch.from_numpy(arrays["labels"][:, 0].copy())
    sizes = [prepared.space.vocab_sizes[f.name] for f in prepared.space.schema.categorical]
    offsets = torch.tensor(np.concatenate([[0], np.cumsum(sizes)[:-1]]), dtype=torch.long)
    d, n_num = 10, num.shape[1]
    sparse = a.opt == "sparse_adam"

    class Bound(nn.Module):
        def __init__(self):
            super().__init__()
            self.table = nn.Embedding(int(sum(sizes)), d, sparse=sparse)
            nn.init.normal_(self.table.weight, std=1e-4)
            self.num_w = nn.Parameter(torch.randn(n_num, d) * 1e-4) if a.numeric == "embed" else None
            width = len(sizes) * d + (n_num * d if a.numeric == "embed" else n_num)
            layers, w = [], width
            for h in (400, 400, 400):
                layers += [nn.Linear(w, h), nn.ReLU()]
                w = h
            self.mlp = nn.Sequential(*layers)
            self.cross = nn.ModuleList(nn.Linear(width, width) for _ in range(3)) if a.model == "dcnv2" else None
            self.head = nn.Linear(w + (width if self.cross is not None else 0), 1)

        def forward(self, c, x):
            e = self.table(c + offsets).flatten(1)
            dense = (x.unsqueeze(-1) * self.num_w).flatten(1) if self.num_w is not None else x
            x0 = torch.cat([e, dense], 1)
            h = self.mlp(x0)
            if self.cross is not None:
                xl = x0
                for lin in self.cross:
                    xl = x0 * lin(xl) + xl
                h = torch.cat([xl, h], 1)
            return self.head(h).squeeze(1)

    model = Bound()
    table = [model.table.weight]
    rest = [p for p in model.parameters() if p is not model.table.weight]
    if sparse:
        opts = [torch.optim.Adam(rest, lr=1e-3), torch.optim.SparseAdam(table, lr=1e-3)]
    else:
        opts = [torch.optim.Adam(model.parameters(), lr=1e-3)]
    loss_fn = nn.BCEWithLogitsLoss()
    bs, n = BATCH[a.dataset], len(y)
    seen, seconds = 0, 0.0
    for epoch in range(a.epochs):
        perm = torch.randperm(n)
        t0 = time.perf_counter()
        for s in range(0, n, bs):
            idx = perm[s:s + bs]
            loss = loss_fn(model(cat[idx], num[idx]), y[idx])
            for o in opts:
                o.zero_grad(set_to_none=True)
            loss.backward()
            for o in opts:
                o.step()
            seen += len(idx)
        seconds += time.perf_counter() - t0
    return {"samples_per_s": seen / seconds}


def child_main(a) -> None:
    fn = {"untwine": child_untwine, "bound": child_bound}[a.child]
    out = fn(a)
    out["peak_rss_mb"] = peak_rss_mb()
    print(json.dumps(out))


# ----------------------------------------------------------------------------- driver
def peer_cmd(lib: str, a, dataset: str, model: str, numeric: str) -> list[str] | None:
    venv_py = ROOT / "peers" / ".venv" / "bin" / "python"
    if not venv_py.exists():
        return None
    return [str(venv_py), str(ROOT / "peers" / "run_peer.py"), "--lib", lib, "--model", model,
            "--dataset", str(dataset_yaml(dataset).parent), "--seed", "1", "--numerics", numeric,
            "--max-train-epochs", str(a.epochs), "--batch-size", str(BATCH[dataset]), "--quiet"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--child", choices=["untwine", "bound"])
    ap.add_argument("--dataset", default="t1")
    ap.add_argument("--model", default="dcnv2")
    ap.add_argument("--numeric", default="raw")
    ap.add_argument("--opt", default="sparse_adam")
    ap.add_argument("--datasets", nargs="+", default=["t1", "p1"])
    ap.add_argument("--models", nargs="+", default=["dnn", "dcnv2"])
    ap.add_argument("--opts", nargs="+", default=["adam", "sparse_adam"])
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--allocator", default="retain", choices=["retain", "system"],
                    help="untwine's train.allocator (children); the driver's bound rows use system malloc")
    ap.add_argument("--bound-retain", action="store_true",
                    help="also time the plain-PyTorch bound with untwine's retained-memory malloc settings")
    ap.add_argument("--no-peers", action="store_true")
    ap.add_argument("--tag", default="throughput")
    ap.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"],
                    help="untwine's train.precision, default as in the config (the plain-PyTorch bound stays fp32)")
    a = ap.parse_args()
    if a.child:
        return child_main(a)
    rows = []
    for ds in a.datasets:
        from untwine.core.dataset_spec import DatasetSpec
        from untwine.data.encode import prepare

        prepare(DatasetSpec.from_yaml(dataset_yaml(ds)))  # recipe files and encoded cache built outside the timings
        numerics = ["raw", "embed"] if ds == "t1" else ["embed"]
        for model in a.models:
            for numeric in numerics:
                for opt in a.opts:
                    children = [("untwine", a.allocator), ("bound", "system")] + ([("bound", "retain")] if a.bound_retain else [])
                    for who, allocator in children:
                        cmd = [PY, __file__, "--child", who, "--dataset", ds, "--model", model, "--numeric", numeric,
                               "--opt", opt, "--epochs", str(a.epochs), "--threads", str(a.threads),
                               "--precision", a.precision, "--allocator", allocator]
                        r = run_json(cmd)
                        label = (f"untwine ({r['precision']}, {allocator})" if who == "untwine"
                                 else who if allocator == "system" else "bound (retain)")
                        rows.append({"dataset": ds, "model": model, "numeric": numeric, "who": label, "opt": opt, **r})
                        print(json.dumps(rows[-1]), flush=True)
                if a.no_peers:
                    continue
                for lib in ("deepctr", "fuxictr"):
                    cmd = peer_cmd(lib, a, ds, model, "embedded" if numeric == "embed" else "raw")
                    if cmd is None:
                        continue
                    out_file = WORK / "peer_result.json"
                    out_file.unlink(missing_ok=True)
                    try:
                        subprocess.run(cmd + ["--out", str(out_file)], check=True, capture_output=True, text=True)
                        r = json.loads(out_file.read_text())
                    except (subprocess.CalledProcessError, FileNotFoundError) as e:
                        print(f"peer {lib} failed: {e}", file=sys.stderr)
                        continue
                    rows.append({"dataset": ds, "model": model, "numeric": numeric, "who": lib, "opt": "adam",
                                 "samples_per_s": r["train"]["samples_per_s"],
                                 "peak_rss_mb": r["peak_rss"].get("tree_peak_sampled_mb") or r["peak_rss"]["self_mb"],
                                 "raw": r})
                    print(json.dumps({k: v for k, v in rows[-1].items() if k != "raw"}), flush=True)
    write_json(RESULTS / "throughput" / f"{a.tag}.json", {"machine": machine(), "epochs": a.epochs, "rows": rows})
    render(rows, a)


def render(rows: list[dict], a) -> None:
    lines = [f"# Training throughput (`python benchmarks/throughput.py --tag {a.tag}`)", "",
             f"Machine: {json.dumps(machine())}; {a.epochs} training epoch(s) per measurement, evaluation excluded;",
             "each row a separate process, all in one run, one after another.", "",
             "| set | model | numerics | who | embedding optimizer | samples/s | vs bound (same optimizer) | "
             "valid pass rows/s (x training rate) | peak RSS MB |",
             "|---|---|---|---|---|---|---|---|---|"]
    bound = {(r["dataset"], r["model"], r["numeric"], r["opt"]): r["samples_per_s"] for r in rows if r["who"] == "bound"}
    for r in rows:
        b = bound.get((r["dataset"], r["model"], r["numeric"], r["opt"]))
        ratio = f"{r['samples_per_s'] / b:.2f}" if b and r["samples_per_s"] else "-"
        evaluation = f"{r['eval_rows_per_s']:,.0f} ({r['eval_vs_train']:.1f}x)" if r.get("eval_rows_per_s") else "-"
        lines.append(f"| {r['dataset'].upper()} | {r['model']} | {r['numeric']} | {r['who']} | {r['opt']} | "
                     f"{r['samples_per_s'] or float('nan'):,.0f} | {ratio} | {evaluation} | "
                     f"{r.get('peak_rss_mb') or float('nan'):,.0f} |")
    (RESULTS / "throughput").mkdir(parents=True, exist_ok=True)
    (RESULTS / "throughput" / f"{a.tag}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
