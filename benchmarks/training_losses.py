"""BCE against BCE + pairwise ranking loss, and repeated-exposure weighting (issue 6, SPEC 5).

    python benchmarks/training_losses.py [--protocols p1 p2 sim] [--seeds 1 2 3] [--variants ...] [--resume]
    python benchmarks/training_losses.py --report

DNN with the PROTOCOLS defaults (configs/<protocol>/dnn.yaml; on the simulator its click task, 1M
impressions, seed 2024). Variants: ``bce``; ``rank_batch`` / ``rank_group`` add lambda = 1 times the
pairwise logistic loss, 16 negatives per positive drawn from the batch / from the same user;
``rew`` (simulator) weights negatives of repeated (user, ad) exposures within a day by
w(n) = min(4, 1 + 0.5 ln(1 + n)). Every variant fits ``train.calibration=mean`` on validation, so the
tables give the raw calibration (mean prediction / rate) and the calibrated one. Writes
benchmarks/results/training/runs/<protocol>_<variant>_s<seed>.json and benchmarks/results/training/losses.md.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, load_runs, machine, mean_std, sim_dataset, write_json  # noqa: E402

from untwine.train.config import ExperimentConfig  # noqa: E402
from untwine.train.run import run_experiment  # noqa: E402

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
RUNS = Path("runs/bench/training")
OUT = RESULTS / "training"
RANK = ["train.ranking_weight=1.0", "train.ranking_pairs=16"]
VARIANTS = {
    "bce": [],
    "rank_batch": [*RANK, "train.ranking_scope=batch"],
    "rank_group": [*RANK, "train.ranking_scope=group"],
    "rew": ["train.repeat_exposure={item: ad_id, window_seconds: 86400, alpha: 0.5, form: log, cap: 4.0}"],
}
SIM_ONLY = {"rew"}


def base_config(protocol: str) -> tuple[Path, list[str]]:
    if protocol != "sim":
        return CONFIGS / protocol / "dnn.yaml", []
    return CONFIGS / "p2" / "dnn.yaml", [f"dataset={sim_dataset().resolve()}", "tasks=[click]", "train.batch_size=4096"]


def run_variant(protocol: str, variant: str, seed: int, extra: list[str]) -> dict:
    path, data = base_config(protocol)
    cfg = ExperimentConfig.load(path, [*data, *VARIANTS[variant], "train.calibration=mean", f"train.seed={seed}",
                                       "train.progress=false", *extra])
    t0 = time.perf_counter()
    r = run_experiment(cfg, run_dir=RUNS / f"{protocol}_{variant}_s{seed}", resume=False, log=lambda *_: None)
    task = next(iter(r.test))
    return {"protocol": protocol, "variant": variant, "seed": seed, "task": task, "test": r.test[task],
            "test_calibrated": r.test_calibrated[task], "epochs_run": r.epochs_run, "best_epoch": r.best_epoch,
            "train_samples_per_s": r.train_samples_per_s, "seconds": time.perf_counter() - t0}


def table(recs: list[dict]) -> str:
    lines = ["# Training losses (issue 6)", "", "`python benchmarks/training_losses.py`", "",
             f"Machine: {json.dumps(machine())}. DNN, PROTOCOLS defaults; test metrics of the best-validation "
             "epoch, mean ± std over model seeds. `cal` = mean prediction / observed rate of the model's own "
             "output; `cal (mean)` after the global logit shift fitted on validation (AUC unchanged). "
             "Train samples/s: train.threads=1, runs sharing the cores: rough.", ""]
    for p in dict.fromkeys(r["protocol"] for r in recs):
        lines += [f"## {p.upper()}", "",
                  "| variant | seeds | AUC | GAUC | logloss | cal | logloss (mean) | cal (mean) | epochs | train samples/s |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for v in VARIANTS:
            rs = [r for r in recs if r["protocol"] == p and r["variant"] == v]
            if not rs:
                continue
            cell = lambda key, split="test": mean_std([r[split].get(key, float("nan")) for r in rs])  # noqa: E731
            lines.append(f"| {v} | {len(rs)} | {cell('auc')} | {cell('gauc')} | {cell('logloss')} | "
                         f"{cell('calibration')} | {cell('logloss', 'test_calibrated')} | "
                         f"{cell('calibration', 'test_calibrated')} | "
                         f"{statistics.mean(r['epochs_run'] for r in rs):.1f} | "
                         f"{statistics.mean(r['train_samples_per_s'] for r in rs):,.0f} |")
        lines.append("")
    return "\n".join(lines)


def load() -> list[dict]:
    return load_runs(OUT / "runs")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--protocols", nargs="+", default=["p1", "p2", "sim"])
    ap.add_argument("--variants", nargs="+", choices=list(VARIANTS))
    ap.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3])
    ap.add_argument("--set", nargs="*", default=["train.threads=1"])
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--report", action="store_true")
    a = ap.parse_args()
    if not a.report:
        done = {(r["protocol"], r["variant"], r["seed"]) for r in load()}
        for p in a.protocols:
            for seed in a.seeds:
                for v in a.variants or list(VARIANTS):
                    if v in SIM_ONLY and p != "sim":
                        continue
                    if a.resume and (p, v, seed) in done:
                        continue
                    rec = run_variant(p, v, seed, a.set)
                    write_json(OUT / "runs" / f"{p}_{v}_s{seed}.json", rec)
                    print(p, v, seed, {k: round(rec["test"].get(k, float("nan")), 4)
                                       for k in ("auc", "gauc", "logloss", "calibration")}, flush=True)
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "losses.md").write_text(table(load()))
    print((OUT / "losses.md").read_text())


if __name__ == "__main__":
    main()
