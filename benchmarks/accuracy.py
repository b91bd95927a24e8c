"""Accuracy on P1 and P2 (PROTOCOLS.md): DNN, DeepFM, DCN-V2 x model seeds 1, 2, 3, mean ± std.

    python benchmarks/accuracy.py [--protocols p1 p2] [--models dnn deepfm dcnv2] [--seeds 1 2 3]
                                  [--set train.embedding_optimizer=sparse_adam ...] [--tag NAME]

Writes benchmarks/results/accuracy/<tag>/<protocol>_<model>_s<seed>.json and a summary table
benchmarks/results/accuracy/<tag>.md next to the peers' numbers measured by benchmarks/peers.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, machine, mean_std, write_json  # noqa: E402

from untwine.train.config import ExperimentConfig  # noqa: E402
from untwine.train.run import run_experiment  # noqa: E402

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
# PROTOCOLS.md "best peer" column (test AUC, mean of 3 seeds)
BEST_PEER = {("p1", "dnn"): 0.9383, ("p1", "deepfm"): 0.9373, ("p1", "dcnv2"): 0.9382,
             ("p2", "dnn"): 0.7082, ("p2", "deepfm"): 0.7062, ("p2", "dcnv2"): 0.7071}


def peer_table() -> dict:
    """Peer AUCs measured by benchmarks/peers (lib -> (protocol, model) -> [aucs])."""
    out: dict = {}
    for f in sorted((RESULTS / "peers" / "accuracy").glob("*.json")):
        r = json.loads(f.read_text())
        ds = r.get("dataset", {})
        key = (ds.get("protocol", "") if isinstance(ds, dict) else str(ds)).lower()
        out.setdefault(r["lib"], {}).setdefault((key, r["model"]), []).append(r["test"]["auc"])
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--protocols", nargs="+", default=["p1", "p2"])
    ap.add_argument("--models", nargs="+", default=["dnn", "deepfm", "dcnv2"])
    ap.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3])
    ap.add_argument("--set", nargs="*", default=[], help="config overrides for every run")
    ap.add_argument("--tag", default="default")
    ap.add_argument("--resume", action="store_true", help="keep finished runs of this tag, run the rest")
    args = ap.parse_args()
    out_dir = RESULTS / "accuracy" / args.tag
    rows: dict = {}
    for f in sorted(out_dir.glob("*.json")) if args.resume else []:
        rec = json.loads(f.read_text())
        rows.setdefault((rec["protocol"], rec["model"]), []).append(rec)
    done = {(r["protocol"], r["model"], r["seed"]) for recs in rows.values() for r in recs}
    for p in args.protocols:
        for m in args.models:
            for s in args.seeds:
                if (p, m, s) in done:
                    continue
                cfg = ExperimentConfig.load(CONFIGS / p / f"{m}.yaml",
                                            [f"train.seed={s}", "train.progress=false", *args.set])
                t0 = time.perf_counter()
                r = run_experiment(cfg, run_dir=Path("runs/bench") / args.tag / f"{p}_{m}_s{s}", resume=False,
                                   log=lambda *_: None)
                task = next(iter(r.test))
                rec = {"protocol": p, "model": m, "seed": s, "overrides": args.set, "test": r.test[task],
                       "valid": r.valid[task], "best_epoch": r.best_epoch, "epochs_run": r.epochs_run,
                       "train_samples_per_s": r.train_samples_per_s, "seconds": time.perf_counter() - t0,
                       "num_parameters": r.num_parameters}
                write_json(out_dir / f"{p}_{m}_s{s}.json", rec)
                rows.setdefault((p, m), []).append(rec)
                print(f"{p} {m} seed {s}: test AUC {r.test[task]['auc']:.4f} logloss {r.test[task]['logloss']:.4f} "
                      f"({r.epochs_run} epochs, {rec['seconds']:.0f}s)", flush=True)
    peers = peer_table()
    libs = sorted(peers)
    lines = [f"# Test accuracy, {args.tag} (`python benchmarks/accuracy.py --tag {args.tag}"
             + (f" --set {' '.join(args.set)}" if args.set else "") + "`)", "",
             f"Machine: {json.dumps(machine())}. Seeds {args.seeds}; mean ± std.", "",
             "| protocol | model | untwine AUC | untwine logloss | untwine GAUC | epochs | "
             + " | ".join(f"{lib} AUC (measured)" for lib in libs) + " | best peer (PROTOCOLS) | untwine - best + 0.002 |",
             "|---|---|---|---|---|---|" + "---|" * len(libs) + "---|---|"]
    for (p, m), recs in rows.items():
        aucs = [r["test"]["auc"] for r in recs]
        gaucs = [r["test"].get("gauc", float("nan")) for r in recs]
        margin = sum(aucs) / len(aucs) - BEST_PEER[(p, m)] + 0.002
        lines.append(f"| {p.upper()} | {m} | {mean_std(aucs)} | {mean_std([r['test']['logloss'] for r in recs])} | "
                     f"{mean_std(gaucs)} | {mean_std([r['epochs_run'] for r in recs])} | "
                     + " | ".join(mean_std(peers[lib].get((p, m), [])) for lib in libs)
                     + f" | {BEST_PEER[(p, m)]:.4f} | {margin:+.4f} {'ok' if margin >= 0 else 'BELOW'} |")
    (RESULTS / "accuracy").mkdir(parents=True, exist_ok=True)
    (RESULTS / "accuracy" / f"{args.tag}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
