"""int8 scoring against fp32 and bf16 (issue 7's ranking stage, issue 8's evaluation): accuracy on real data
and the forward's speed, side by side in one process.

    python benchmarks/int8_scoring.py [--protocols p1 p2] [--models dcnv2 dnn] [--seeds 1 2 3]
                                      [--serving-run runs/serving/sim100k-dcnv2]

Accuracy: each (protocol, model, seed) is trained once with the defaults (configs/<protocol>/<model>.yaml,
runs/bench/int8/...), then its test split is scored in the three formats of nn/quantize.py, in batches of
500 (a serving request's candidates) and 4096 (evaluation): test AUC and log loss, and how far each row's
probability moves from fp32. int8's activation range is per batch, so the batch size matters there.
Speed: medians of interleaved rounds of the scoring forward at 500 rows on 1 thread (a serving worker)
and at 4096 rows on 2 threads (an evaluation pass), for each trained model and the serving benchmark's
DCN-V2 when it exists. Writes benchmarks/results/profile/int8_scoring_<isa>.md and .json.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, machine, mean_std, median_ms, write_isa_result, write_json  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"
RUNS = REPO / "runs" / "bench" / "int8"
PRECISIONS = ("fp32", "bf16", "int8")
BATCHES = (500, 4096)


def train(protocol: str, model: str, seed: int) -> Path:
    from untwine.train.config import ExperimentConfig
    from untwine.train.run import run_experiment

    run = RUNS / f"{protocol}_{model}_s{seed}"
    if not (run / "best.safetensors").exists():
        cfg = ExperimentConfig.load(CONFIGS / protocol / f"{model}.yaml",
                                    [f"train.seed={seed}", "train.progress=false"])
        run_experiment(cfg, run_dir=run, resume=False, log=lambda *_: None)
    return run


def score(run: Path) -> dict:
    """Test metrics and probability shifts per (precision, batch)."""
    from untwine.nn.quantize import scoring_copy
    from untwine.train.run import load_run, run_predictions, run_split_loader
    from untwine.train.trainer import predict, task_metrics

    cfg, space, model = load_run(run)
    tasks = space.schema.task_names
    out: dict = {}
    for batch in BATCHES:
        loader = run_split_loader(run, cfg, space, "test", batch_size=batch)
        probs = {}
        for p in PRECISIONS:
            scorer = scoring_copy(model, p)
            pred = predict(scorer, loader, precision="bf16" if p == "bf16" else "fp32")
            probs[p] = pred["probs"]
            m = task_metrics(run_predictions(run, cfg, tasks, pred), tasks)[tasks[0]]
            out[f"{p}@{batch}"] = {"auc": m["auc"], "logloss": m["logloss"]}
        for p in PRECISIONS[1:]:
            d = np.abs(probs[p] - probs["fp32"])
            out[f"{p}@{batch}"].update(max_abs_dp=float(d.max()), mean_abs_dp=float(d.mean()))
    return out


def speed(run: Path, rounds: int) -> dict:
    """ms per scoring forward of the run's model at each batch size, per precision."""
    import torch

    from untwine.nn.quantize import scoring_copy
    from untwine.train.run import load_run, run_split_loader

    cfg, space, model = load_run(run)
    res, previous = {}, torch.get_num_threads()
    for batch, threads in ((500, 1), (4096, 2)):
        torch.set_num_threads(threads)
        b = next(iter(run_split_loader(run, cfg, space, "test", batch_size=batch)))
        if b.labels.shape[0] < batch:
            continue
        scorers = {p: scoring_copy(model, p) for p in PRECISIONS}

        def forward(p):
            def f():
                with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=p == "bf16"):
                    scorers[p](b)
            return f

        times = median_ms({p: forward(p) for p in PRECISIONS}, rounds)
        res[f"{batch} rows, {threads} thread{'s' if threads > 1 else ''}"] = times
    torch.set_num_threads(previous)
    return res


def report(acc: dict, speeds: dict, args) -> list[str]:
    lines = ["# int8 scoring against fp32 and bf16 (issues 7 and 8)", "",
             f"`python benchmarks/int8_scoring.py {' '.join(sys.argv[1:])}`", "",
             f"Machine: {json.dumps(machine())}. Formats of `untwine.nn.quantize.scoring_copy`: bf16 = bf16 autocast; "
             "int8 = FBGEMM dynamic quantization of every Linear at least 64 wide (weights per output channel, "
             "activations per batch), the rest fp32. Models trained once per seed with the protocol defaults.", "",
             "## Accuracy on the test split (mean ± std over seeds)", "",
             "| protocol | model | batch | fp32 AUC | bf16 AUC | int8 AUC | int8 - fp32 AUC (per seed) | fp32 logloss | int8 logloss | bf16 max abs dp | int8 max abs dp | int8 mean abs dp |",
             "|---|---|---:|---|---|---|---|---|---|---:|---:|---:|"]
    for key, seeds in acc.items():
        proto, model = key.split("/")
        for batch in BATCHES:
            def col(p, m):
                return [s[f"{p}@{batch}"][m] for s in seeds.values()]
            diffs = [a - b for a, b in zip(col("int8", "auc"), col("fp32", "auc"))]
            lines.append(f"| {proto} | {model} | {batch} | {mean_std(col('fp32', 'auc'))} | {mean_std(col('bf16', 'auc'))} | "
                         f"{mean_std(col('int8', 'auc'))} | {', '.join(f'{d:+.5f}' for d in diffs)} | "
                         f"{mean_std(col('fp32', 'logloss'))} | {mean_std(col('int8', 'logloss'))} | "
                         f"{max(col('bf16', 'max_abs_dp')):.4f} | {max(col('int8', 'max_abs_dp')):.4f} | "
                         f"{statistics.mean(col('int8', 'mean_abs_dp')):.5f} |")
    lines += ["", "## Scoring forward, ms (medians of interleaved rounds)", "",
              "| model | batch | fp32 | bf16 | int8 | int8 vs bf16 | int8 vs fp32 |", "|---|---|---:|---:|---:|---:|---:|"]
    for name, per in speeds.items():
        for shape, t in per.items():
            lines.append(f"| {name} | {shape} | {t['fp32']:.3f} | {t['bf16']:.3f} | {t['int8']:.3f} | "
                         f"{t['bf16'] / t['int8']:.2f}x | {t['fp32'] / t['int8']:.2f}x |")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--protocols", nargs="+", default=["p1", "p2"])
    ap.add_argument("--models", nargs="+", default=["dcnv2", "dnn"])
    ap.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3])
    ap.add_argument("--serving-run", type=Path, default=REPO / "runs" / "serving" / "sim100k-dcnv2")
    ap.add_argument("--rounds", type=int, default=30)
    args = ap.parse_args()
    acc, speeds = {}, {}
    for proto in args.protocols:
        for model in args.models:
            runs = {seed: train(proto, model, seed) for seed in args.seeds}
            acc[f"{proto}/{model}"] = {seed: score(run) for seed, run in runs.items()}
            speeds[f"{proto} {model} (seed {args.seeds[0]})"] = speed(runs[args.seeds[0]], args.rounds)
            print(proto, model, json.dumps(acc[f"{proto}/{model}"])[:300], flush=True)
    if (args.serving_run / "best.safetensors").exists():
        acc["sim100k/dcnv2"] = {0: score(args.serving_run)}
        speeds["sim100k dcnv2 (serving benchmark)"] = speed(args.serving_run, args.rounds)
    out = write_isa_result("int8_scoring", report(acc, speeds, args))
    write_json(out.with_suffix(".json"), {"machine": machine(), "accuracy": acc, "speed": speeds})


if __name__ == "__main__":
    main()
