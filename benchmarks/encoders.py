"""Feature-encoding experiments (issue 3): sequence, numeric and vector encoders, 3 seeds, mean ± std.

    python benchmarks/encoders.py sequence [--protocols p5 p6 sim] [--seeds 1 2 3] [--variants ...] [--resume]
    python benchmarks/encoders.py numeric  [--protocols p4 p3]
    python benchmarks/encoders.py vector   [--protocols p2v]
    python benchmarks/encoders.py history_similarity [--protocols p5v]

Every variant of one experiment shares the protocol's config (embedding size, MLP, batch, optimiser,
early stopping: configs/<protocol>/<model>.yaml) and changes only the encoder. ``sim`` is the built-in
simulator (1M impressions, seed 2024, the click task; configs/p6 settings), whose click probability
rises with exponentially decayed recent clicks in the ad's category: there the truth is known to
depend on time gaps and categories, and the oracle AUC is reported beside the models. Writes
benchmarks/results/encoders/<experiment>/<protocol>_<variant>_s<seed>.json and the table
benchmarks/results/encoders/<experiment>.md; the trained runs stay in runs/bench/encoders/ for the plots
(benchmarks/encoder_plots.py).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, machine, mean_std, sim_dataset, sim_oracle, write_json  # noqa: E402

from untwine.train.config import ExperimentConfig  # noqa: E402
from untwine.train.run import run_experiment  # noqa: E402

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
RUNS = Path("runs/bench/encoders")


def protocol_config(protocol: str, model_file: str) -> tuple[Path, list[str]]:
    """The config file of a protocol and the overrides that point it at its data."""
    if protocol != "sim":
        return CONFIGS / protocol / f"{model_file}.yaml", []
    return CONFIGS / "p6" / f"{model_file}.yaml", [f"dataset={sim_dataset().resolve()}", "tasks=[click]"]


def oracle_metrics(protocol: str) -> tuple[float, float] | None:
    """Test AUC and GAUC of the simulator's true click probabilities (None for logged data)."""
    return sim_oracle(sim_dataset().parent) if protocol == "sim" else None


SPEC_TIM = "attention_norm: false, keep_history: false"
# experiment -> (default protocols, {variant key: (label, model config file, overrides)})
EXPERIMENTS: dict[str, tuple[list[str], dict[str, tuple[str, str, list[str]]]]] = {
    "sequence": (["p5", "p6"], {
        "mean": ("mean pooling (DNN)", "dnn", []),
        "din": ("DIN", "din", []),
        # the SPEC 2.1 formula and its ablations: attention_norm and keep_history off
        "tin": ("TIN, SPEC formula", "tin", [f"model.sequence_encoder={{name: tim, {SPEC_TIM}}}"]),
        "tin_no_time": ("TIN, SPEC formula, without temporal encoding", "tin",
                        [f"model.sequence_encoder={{name: tim, temporal_encoding: false, {SPEC_TIM}}}"]),
        "tin_no_target": ("TIN, SPEC formula, without target-aware representation", "tin",
                          [f"model.sequence_encoder={{name: tim, target_aware_representation: false, {SPEC_TIM}}}"]),
        "tin_norm": ("TIN, SPEC formula + scale-free attention (attention_norm)", "tin",
                     ["model.sequence_encoder={name: tim, attention_norm: true, keep_history: false}"]),
        "tin_norm_keep": ("TIN default: attention_norm + attended history kept beside the product (keep_history)",
                          "tin", ["model.sequence_encoder={name: tim, attention_norm: true, keep_history: true}"]),
    }),
    "numeric": (["p4", "p3"], {
        "scaled": ("raw scaled value x vector", "dnn", ["model.numeric_encoder=scaled"]),
        "bucket": ("bucketised (20 equal-frequency bins)", "dnn", ["model.numeric_encoder=bucket"]),
        "mnse": ("MNSE (quantile -> [0, 1000], bases 2, 3, 10)", "dnn", ["model.numeric_encoder=mnse"]),
    }),
    "vector": (["p2v"], {
        "drop": ("no vector features", "dnn", ["model.vector_encoder=drop"]),
        "project": ("raw vectors, linear projection", "dnn", ["model.vector_encoder=project"]),
        "similarity": ("cosine similarity + MNSE (M = 100)", "dnn", ["model.vector_encoder=similarity"]),
        "similarity_m1000": ("cosine similarity + MNSE (M = 1000)", "dnn",
                             ["model.vector_encoder={name: similarity, max_value: 1000}"]),
    }),
    "history_similarity": (["p5v"], {
        "none": ("mean pooling, no vectors (P5's DNN)", "dnn", ["model.sequence_encoder=pool"]),
        "mnse": ("+ target-vs-history cosine, MNSE (M = 100), mean over the history", "dnn",
                 ["model.sequence_encoder={name: pool, similarity: mnse}"]),
        "simtier": ("+ target-vs-history cosine, SimTier histogram (10 bins)", "dnn",
                    ["model.sequence_encoder={name: pool, similarity: simtier}"]),
    }),
}


def run_one(exp: str, protocol: str, key: str, model_file: str, overrides: list[str], seed: int,
            extra: list[str]) -> dict:
    path, data = protocol_config(protocol, model_file)
    cfg = ExperimentConfig.load(path, [*data, *overrides, f"train.seed={seed}", "train.progress=false", *extra])
    t0 = time.perf_counter()
    r = run_experiment(cfg, run_dir=RUNS / exp / f"{protocol}_{key}_s{seed}", resume=False, log=lambda *_: None)
    task = next(iter(r.test))
    return {"experiment": exp, "protocol": protocol, "variant": key, "seed": seed, "task": task,
            "model": cfg.model.name, "overrides": [*overrides, *extra], "test": r.test[task], "valid": r.valid[task],
            "best_epoch": r.best_epoch, "epochs_run": r.epochs_run, "train_samples_per_s": r.train_samples_per_s,
            "num_parameters": r.num_parameters, "seconds": time.perf_counter() - t0, "run_dir": r.run_dir}


def table(exp: str, recs: list[dict], variants: dict, cmd: str) -> str:
    lines = [f"# Encoder experiment: {exp}", "", f"`{cmd}`", "",
             f"Machine: {json.dumps(machine())}. Test metrics of the best-validation epoch, mean ± std over "
             "model seeds; GAUC weights users by impressions. Train samples/s: each run on the threads its "
             "overrides give (train.threads=1 in the committed runs), with up to four runs sharing the machine's "
             "cores, so they compare encoders' costs only roughly (benchmarks/throughput.py measures speed).", ""]
    protocols = list(dict.fromkeys(r["protocol"] for r in recs))
    for p in protocols:
        task = next(r["task"] for r in recs if r["protocol"] == p)
        oracle = oracle_metrics(p)
        lines += [f"## {p.upper()} (task {task})", ""]
        if oracle is not None:
            lines += [f"Oracle (the simulator's true click probabilities): test AUC {oracle[0]:.4f}, "
                      f"GAUC {oracle[1]:.4f}.", ""]
        lines += ["| encoder | seeds | test AUC | test GAUC | test logloss | epochs | train samples/s | parameters |",
                  "|---|---|---|---|---|---|---|---|"]
        for key, (label, _, _) in variants.items():
            rs = sorted((r for r in recs if r["protocol"] == p and r["variant"] == key), key=lambda r: r["seed"])
            if not rs:
                continue
            m = lambda k: mean_std([r["test"].get(k, float("nan")) for r in rs])  # noqa: E731
            lines.append(f"| {label} | {len(rs)} | {m('auc')} | {m('gauc')} | {m('logloss')} | "
                         f"{statistics.mean(r['epochs_run'] for r in rs):.1f} | "
                         f"{statistics.mean(r['train_samples_per_s'] for r in rs):,.0f} | {rs[0]['num_parameters']:,} |")
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("experiment", choices=sorted(EXPERIMENTS))
    ap.add_argument("--protocols", nargs="+")
    ap.add_argument("--variants", nargs="+")
    ap.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3])
    ap.add_argument("--set", nargs="*", default=[], help="extra config overrides for every run")
    ap.add_argument("--resume", action="store_true", help="keep finished runs, run the rest")
    a = ap.parse_args()
    protocols, variants = EXPERIMENTS[a.experiment]
    protocols = a.protocols or protocols
    chosen = {k: v for k, v in variants.items() if not a.variants or k in a.variants}
    out = RESULTS / "encoders" / a.experiment
    recs = [json.loads(f.read_text()) for f in sorted(out.glob("*.json"))]
    done = {(r["protocol"], r["variant"], r["seed"]) for r in recs}
    for p in protocols:
        for seed in a.seeds:
            for key, (label, model_file, overrides) in chosen.items():
                if a.resume and (p, key, seed) in done:
                    continue
                rec = run_one(a.experiment, p, key, model_file, overrides, seed, a.set)
                recs = [r for r in recs if (r["protocol"], r["variant"], r["seed"]) != (p, key, seed)] + [rec]
                write_json(out / f"{p}_{key}_s{seed}.json", rec)
                t = rec["test"]
                print(f"{p} {key} seed {seed}: AUC {t['auc']:.4f} GAUC {t.get('gauc', float('nan')):.4f} "
                      f"logloss {t['logloss']:.4f} ({rec['epochs_run']} epochs, {rec['seconds']:.0f}s)", flush=True)
                (RESULTS / "encoders" / f"{a.experiment}.md").write_text(
                    table(a.experiment, recs, variants, "python benchmarks/encoders.py " + " ".join(sys.argv[1:])))
    print((RESULTS / "encoders" / f"{a.experiment}.md").read_text())


if __name__ == "__main__":
    main()
