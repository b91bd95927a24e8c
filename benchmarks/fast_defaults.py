"""Accuracy of the fast training defaults (issue 8): P1 and P2 test AUC, 3 seeds, against plain fp32 dense Adam.

    python benchmarks/fast_defaults.py [--protocols p1 p2] [--models dnn dcnv2] [--seeds 1 2 3] [--variants ...]

Variants: ``plain`` (dense Adam, default multi-pass kernel: ``train.fused_optimizer=false``), ``fused``
(the default: the same Adam in one fused kernel), ``sparse_adam`` (sparse table gradients with
SparseAdam, fused Adam for the rest), ``bf16`` (fused dense Adam with the training forward autocast to bf16), ``defaults`` (nothing overridden: fused Adam,
train.precision auto, train.allocator retain). configs/<protocol>/<model>.yaml otherwise (PROTOCOLS defaults).
Writes benchmarks/results/profile/fast_defaults_runs/*.json and fast_defaults.md.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, load_runs, machine, mean_std, write_json  # noqa: E402

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
OUT = RESULTS / "profile"
# fp32 pinned where a variant means fp32: train.precision defaults to auto (bf16 where it measures faster)
VARIANTS = {"plain": ["train.fused_optimizer=false", "train.precision=fp32"], "fused": ["train.precision=fp32"],
            "sparse_adam": ["train.embedding_optimizer=sparse_adam", "train.precision=fp32"],
            "bf16": ["train.precision=bf16"], "defaults": []}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--protocols", nargs="+", default=["p1", "p2"])
    ap.add_argument("--models", nargs="+", default=["dnn", "dcnv2"])
    ap.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3])
    ap.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    ap.add_argument("--report", action="store_true")
    a = ap.parse_args()
    if not a.report:
        from untwine.train.config import ExperimentConfig
        from untwine.train.run import run_experiment

        for p in a.protocols:
            for m in a.models:
                for seed in a.seeds:
                    for v in a.variants:
                        cfg = ExperimentConfig.load(CONFIGS / p / f"{m}.yaml", [*VARIANTS[v], f"train.seed={seed}",
                                                    "train.progress=false", "train.threads=1"])
                        r = run_experiment(cfg, run_dir=Path("runs/bench/fast_defaults") / f"{p}_{m}_{v}_s{seed}",
                                           resume=False, log=lambda *_: None)
                        task = next(iter(r.test))
                        rec = {"protocol": p, "model": m, "variant": v, "seed": seed, "auc": r.test[task]["auc"],
                               "logloss": r.test[task]["logloss"], "epochs_run": r.epochs_run,
                               "train_samples_per_s": r.train_samples_per_s, "precision": r.precision.get("precision")}
                        write_json(OUT / "fast_defaults_runs" / f"{p}_{m}_{v}_s{seed}.json", rec)
                        print(p, m, v, seed, round(rec["auc"], 4), flush=True)
    recs = load_runs(OUT / "fast_defaults_runs")
    lines = ["# Fast defaults against plain dense Adam (issue 8)", "", "`python benchmarks/fast_defaults.py`", "",
             f"Machine: {json.dumps(machine())}; train.threads=1, two runs sharing the cores. Test AUC, mean ± std "
             "over seeds 1-3; delta = mean difference to `plain`.", "",
             "| protocol | model | variant | seeds | test AUC | delta vs plain | epochs | train samples/s |",
             "|---|---|---|---|---|---|---|---|"]
    for p in dict.fromkeys(r["protocol"] for r in recs):
        for m in dict.fromkeys(r["model"] for r in recs):
            base = [r["auc"] for r in recs if (r["protocol"], r["model"], r["variant"]) == (p, m, "plain")]
            for v in VARIANTS:
                rs = [r for r in recs if (r["protocol"], r["model"], r["variant"]) == (p, m, v)]
                if not rs:
                    continue
                delta = statistics.mean(r["auc"] for r in rs) - statistics.mean(base) if base else float("nan")
                lines.append(f"| {p.upper()} | {m} | {v} | {len(rs)} | {mean_std([r['auc'] for r in rs])} | "
                             f"{delta:+.4f} | {statistics.mean(r['epochs_run'] for r in rs):.1f} | "
                             f"{statistics.mean(r['train_samples_per_s'] for r in rs):,.0f} |")
    (OUT / "fast_defaults.md").write_text("\n".join(lines) + "\n")
    print((OUT / "fast_defaults.md").read_text())


if __name__ == "__main__":
    main()
