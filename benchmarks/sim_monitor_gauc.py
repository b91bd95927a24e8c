"""Diagnostic: on the simulator, early stopping on AUC (PROTOCOLS' monitor) picks the first epoch while
GAUC is still rising; this reruns pooling and TIN with early stopping on validation GAUC instead.

    python benchmarks/sim_monitor_gauc.py [--seed 1] [--variants mean tin_norm_keep]

Needs the simulated data of `benchmarks/encoders.py sequence --protocols sim`. Writes
benchmarks/results/encoders/sim_monitor_gauc/<variant>_s<seed>.json.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, write_json  # noqa: E402
from encoders import EXPERIMENTS, run_one  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--variants", nargs="+", default=["mean", "tin_norm_keep"])
    a = ap.parse_args()
    variants = EXPERIMENTS["sequence"][1]
    for key in a.variants:
        _, model_file, overrides = variants[key]
        rec = run_one("sequence-monitor-gauc", "sim", key, model_file, overrides, a.seed,
                      ["train.monitor=gauc", "train.threads=1"])
        write_json(RESULTS / "encoders" / "sim_monitor_gauc" / f"{key}_s{a.seed}.json", rec)
        print(key, {k: round(rec["test"][k], 4) for k in ("auc", "gauc", "logloss")}, rec["epochs_run"], "epochs",
              flush=True)


if __name__ == "__main__":
    main()
