#!/usr/bin/env python
"""Train and test one peer library's model on one prepared untwine dataset; write one result JSON.

Runs inside the peers venv (benchmarks/peers/.venv, made by setup.sh); untwine is not imported.

    .venv/bin/python run_peer.py --lib deepctr --model dcnv2 --dataset ../.work/p1 --seed 1 --out r.json
    .venv/bin/python run_peer.py --lib fuxictr --model dnn --dataset ../.work/t1 --seed 1 \\
        --numerics embedded --max-train-epochs 1          # a throughput run: one training epoch

Defaults follow PROTOCOLS.md: embedding 10, MLP [400,400,400] ReLU, no dropout / regularisation,
DCN-V2 = 3 full-rank cross layers parallel to the MLP, DeepFM = FM + MLP, Adam lr 1e-3, early stopping
on valid AUC with patience 2, at most 30 epochs, best weights restored, batch 4096 (1024 when that
gives fewer than 20 batches an epoch). Test AUC / logloss / GAUC are computed here, identically for
every library, from its test predictions.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

LIBS = {"fuxictr": ("fuxictr", "FuxiCTR"), "deepctr": ("deepctr-torch", "DeepCTR-Torch"),
        "rechub": ("torch-rechub", "torch-rechub")}
NATIVE_NUMERICS = {"fuxictr": "embedded", "deepctr": "raw", "rechub": "raw"}


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--lib", required=True, choices=sorted(LIBS))
    ap.add_argument("--model", required=True, choices=["dnn", "deepfm", "dcnv2"])
    ap.add_argument("--dataset", required=True, help="a dataset.yaml or the folder holding one")
    ap.add_argument("--seed", type=int, required=True)
    ap.add_argument("--epochs-max", type=int, default=30)
    ap.add_argument("--patience", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=None, help="default: the protocol's rule (4096, or 1024 "
                    "when 4096 gives fewer than 20 batches an epoch)")
    ap.add_argument("--numerics", choices=["raw", "embedded"], default=None,
                    help="numeric fields: raw values into the network (DeepCTR-style) or a per-field embedding "
                         "scaled by the value (FuxiCTR-style); default: the library's native way")
    ap.add_argument("--max-train-epochs", type=int, default=None,
                    help="stop after K training epochs (throughput runs); early stopping still applies")
    ap.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (default 2)")
    ap.add_argument("--fuxictr-lr-decay", choices=["on", "off"], default="on",
                    help="FuxiCTR's BaseModel default reduce_lr_on_plateau (x0.1 on each non-improving epoch)")
    ap.add_argument("--work-dir", default=str(HERE.parent / ".work" / "peers"),
                    help="scratch: FuxiCTR's built datasets and checkpoints")
    ap.add_argument("--rebuild", action="store_true", help="FuxiCTR: rebuild its dataset even if cached")
    ap.add_argument("--out", default=None, help="result JSON (default: print only)")
    ap.add_argument("--quiet", action="store_true")
    return ap.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    args.numerics = args.numerics or NATIVE_NUMERICS[args.lib]
    wall0 = time.perf_counter()
    started = datetime.now(timezone.utc).isoformat(timespec="seconds")

    import numpy as np
    import torch

    torch.set_num_threads(args.threads)
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)

    from peerkit import common, sysinfo
    from peerkit.data import batch_size_for, load_spec
    from peerkit.metrics import evaluate

    def log(msg: str) -> None:
        if not args.quiet:
            print(f"[{args.lib} {args.model} s{args.seed}] {msg}", file=sys.stderr, flush=True)

    spec = load_spec(args.dataset)
    import pyarrow.parquet as pq
    n_train = sum(pq.ParquetFile(p).metadata.num_rows for p in spec.files["train"]) if spec.format == "parquet" else None
    if args.batch_size is None:
        if n_train is None:
            raise SystemExit("--batch-size is needed for non-parquet datasets")
        args.batch_size = batch_size_for(n_train)
    has_numeric = bool(spec.of_kind("numeric"))

    machine = sysinfo.machine()
    with sysinfo.TreeRssSampler() as sampler:
        if args.lib == "deepctr":
            from peerkit import deepctr_runner as runner
        elif args.lib == "fuxictr":
            from peerkit import fuxictr_runner as runner
        else:
            from peerkit import rechub_runner as runner
        res = runner.run(args, spec, log)
        test = evaluate(res.pop("y_test"), res.pop("p_test"), res.pop("g_test"))
        rss = sysinfo.peak_rss(sampler)
    machine["loadavg_end"] = list(os.getloadavg())
    machine["torch_threads"] = torch.get_num_threads()
    machine["torch_interop_threads"] = torch.get_num_interop_threads()

    epochs = res.pop("epochs")
    train_s = sum(e["train_s"] for e in epochs)
    samples = sum(e["samples"] for e in epochs)
    sps = [e["samples_per_s"] for e in epochs if e["samples_per_s"]]
    out = {
        "lib": args.lib, "lib_name": LIBS[args.lib][1], "model": args.model,
        "dataset": {"name": spec.name, "protocol": spec.protocol, "yaml": str(spec.path), "n_train": n_train,
                    "group_key": spec.group_key},
        "seed": args.seed,
        "numerics": args.numerics if has_numeric else None,
        "config": common.hyperparams(args, args.batch_size) | {"threads": args.threads} | (
            {"fuxictr_reduce_lr_on_plateau": args.fuxictr_lr_decay == "on"} if args.lib == "fuxictr" else {}),
        "test": test,
        "best_valid_auc": res.pop("best_valid_auc"),
        "epochs_run": len(epochs), "best_epoch": res.pop("best_epoch"),
        "train": {"samples_per_s": round(samples / train_s, 1) if train_s else None,
                  "samples_per_s_median_epoch": float(np.median(sps)) if sps else None,
                  "samples_per_s_first_epoch": sps[0] if sps else None,
                  "train_s_total": round(train_s, 3), "samples_total": samples,
                  "what": "pure training epochs: evaluation excluded, each epoch timed separately"},
        "epochs": epochs,
        "timings": res.pop("timings") | {"wall_s": round(time.perf_counter() - wall0, 3)},
        "peak_rss": rss,
        "versions": sysinfo.versions(LIBS[args.lib][0]),
        "machine": machine,
        "notes": res.pop("notes", {}),
        "started": started,
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
    }
    res.pop("lib_version_key", None)
    out.update(res)
    text = json.dumps(out, indent=1, default=float)
    if args.out:
        path = Path(args.out)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(text + "\n")
        os.replace(tmp, path)
    g = f" GAUC {test['gauc']:.4f}" if "gauc" in test else ""
    print(f"{args.lib} {args.model} {spec.name} seed {args.seed}: test AUC {test['auc']:.4f} logloss "
          f"{test['logloss']:.4f}{g} | epochs {len(epochs)} best {out['best_epoch']} | "
          f"{out['train']['samples_per_s'] or 0:,.0f} samples/s | peak RSS {rss['self_mb']:.0f} MB"
          + (f" -> {args.out}" if args.out else ""), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
