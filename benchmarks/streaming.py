"""Streaming with delayed conversions (issue 6): naive joiner vs adaptive window vs late-label correction.

    python benchmarks/streaming.py [--seeds 1 2 3] [--impressions 400000] [--strategies ...]
    python benchmarks/streaming.py --report

The simulator (seed 2024) writes its train days as a dataset and its valid + test days as an event
stream (clicks ~30 s after the impression, conversions after log-normal delays: conv1 median 30 min,
conv2 median 12 h). A shared-bottom model (configs/sim/mmoe.yaml) trains on the train days with model
seed s, then each strategy streams the same events from that run:

    naive        fixed windows (click 60 s, conversions 1 h), late labels ignored
    adaptive     windows at the 0.95 quantile of the observed delays, late labels ignored
    correction   adaptive windows, a late label re-emits its impression as a positive
    fnw          fixed short windows, corrections and fake-negative weighting (Ktena et al. 2019)
    wait         fixed windows of 3 days: (almost) no fake negatives, but the newest labels are old

Every sample's prediction before its update (progressive validation) is scored against the
simulator's true labels, per 12 hours of impression time: AUC and calibration (sum of predictions /
true positives). Writes benchmarks/results/streaming/ (runs/*.json, streaming.md, calibration_over_time.png).
"""
from __future__ import annotations

import argparse
import csv
import json
import shutil
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, load_runs, machine, mean_std, write_json  # noqa: E402

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
RUNS = Path("runs/bench/streaming")
OUT = RESULTS / "streaming"
TASKS = ["click", "conv1", "conv2"]
FIXED = {"click": 60.0, "conv1": 3600.0, "conv2": 3600.0}
STRATEGIES = {
    "naive": dict(windows=FIXED, adaptive=False, late="ignore"),
    "adaptive": dict(windows=FIXED, adaptive=True, late="ignore"),
    "correction": dict(windows=FIXED, adaptive=True, late="correction"),
    "fnw": dict(windows=FIXED, adaptive=False, late="fake_negative"),
    "wait": dict(windows={t: 3 * 86400.0 for t in TASKS}, adaptive=False, late="correction"),
}
BIN_S = 12 * 3600


def data(impressions: int) -> Path:
    from untwine.sim import SimConfig, run, write_log
    from untwine.sim.events import write_events
    from untwine.sim.writer import split_rows

    d = RUNS / f"sim-{impressions}"
    if not (d / "events.jsonl").exists():
        log = run(SimConfig(n_impressions=impressions, seed=2024))
        write_log(log, d)
        s = split_rows(log)
        write_events(log, d / "events.jsonl", slice(s["valid"].start, s["test"].stop), seed=2024)
    return d


def base_run(d: Path, seed: int) -> Path:
    from untwine.train.config import ExperimentConfig
    from untwine.train.run import run_experiment

    run_dir = RUNS / f"base_s{seed}"
    if not (run_dir / "result.json").exists():
        cfg = ExperimentConfig.load(CONFIGS / "sim" / "mmoe.yaml", [f"dataset={(d / 'dataset.yaml').resolve()}",
                                    "model.name=shared_bottom", f"train.seed={seed}", "train.progress=false",
                                    "train.threads=1"])
        run_experiment(cfg, run_dir=run_dir, resume=False, log=lambda *_: None)
    return run_dir


def stream(run_dir: Path, d: Path, strategy: str, seed: int) -> tuple[Path, dict, float]:
    from untwine.stream.events import JsonlSource
    from untwine.stream.joiner import JoinerConfig
    from untwine.stream.learner import StreamConfig, StreamLearner

    out = RUNS / f"{strategy}_s{seed}"
    shutil.rmtree(out, ignore_errors=True)
    jc = JoinerConfig(tasks=TASKS, **STRATEGIES[strategy])
    learner = StreamLearner(run_dir, out, StreamConfig(joiner=jc, batch_size=512, checkpoint_every=200_000,
                                                       eval_every=20_000, log_predictions=True), log=lambda *_: None)
    t0 = time.perf_counter()
    summary = learner.consume(JsonlSource(d / "events.jsonl"), drain=True)
    return out, summary, time.perf_counter() - t0


def score(out: Path, d: Path) -> dict:
    """AUC and calibration against the true labels, per task, overall and per 12 h of impression time."""
    import pyarrow.parquet as pq

    from untwine.metrics.classification import auc

    truth = pq.read_table(d / "events.truth.parquet")
    index = {i: k for k, i in enumerate(truth.column("id").to_pylist())}
    true = {t: truth.column(t).to_numpy() for t in TASKS}
    rows = {t: ([], [], []) for t in TASKS}
    with open(out / "predictions.csv") as fh:
        for r in csv.DictReader(fh):
            ids, ts, p = rows[r["task"]]
            ids.append(index[r["id"]])
            ts.append(float(r["ts"]))
            p.append(float(r["prediction"]))
    res = {}
    for t in TASKS:
        ids, ts, p = (np.asarray(x) for x in rows[t])
        y = true[t][ids].astype(float)
        b = ((ts - ts.min()) // BIN_S).astype(int)
        bins = []
        for k in range(b.max() + 1):
            m = b == k
            if m.sum() and 0 < y[m].sum() < m.sum():
                bins.append({"hours": float(k * BIN_S / 3600), "rows": int(m.sum()), "auc": auc(p[m], y[m]),
                             "calibration": float(p[m].sum() / y[m].sum())})
        res[t] = {"rows": len(p), "auc": auc(p, y), "calibration": float(p.sum() / y.sum()), "bins": bins}
    return res


def plot(recs: list[dict], path: Path) -> None:
    from untwine.analysis.collapse import pyplot, save_figure

    plt = pyplot()
    fig, axes = plt.subplots(2, len(TASKS), figsize=(4.2 * len(TASKS), 6.5), sharex=True)
    for j, t in enumerate(TASKS):
        for s in STRATEGIES:
            rs = [r for r in recs if r["strategy"] == s]
            if not rs:
                continue
            hours = [b["hours"] for b in rs[0]["scores"][t]["bins"]]
            for i, key in enumerate(("calibration", "auc")):
                by_bin = [[b[key] for b in r["scores"][t]["bins"]] for r in rs]
                k = min(map(len, by_bin))
                m = np.mean([x[:k] for x in by_bin], axis=0)
                axes[i, j].plot(hours[:k], m, marker="o", ms=3, label=s)
        axes[0, j].axhline(1.0, color="grey", lw=1, ls="--")
        axes[0, j].set_yscale("log")  # under- and over-prediction by the same factor look alike
        axes[0, j].set_title(f"{t}: calibration (pred / true)", fontsize=9)
        axes[1, j].set_title(f"{t}: AUC vs true labels", fontsize=9)
        axes[1, j].set_xlabel("hours of stream")
    axes[0, 0].legend(fontsize=7)
    fig.suptitle(f"progressive validation against the simulator's true labels (mean of {len({r['seed'] for r in recs})} "
                 "model seeds)", fontsize=9)
    fig.tight_layout()
    save_figure(fig, path)


def table(recs: list[dict]) -> str:
    lines = ["# Streaming with delayed conversions (issue 6)", "", "`python benchmarks/streaming.py`", "",
             f"Machine: {json.dumps(machine())}. Progressive predictions (each sample scored before the update "
             "that uses it) against the simulator's true labels, over the whole stream; mean ± std over the base "
             "model's seeds. cal = sum of predictions / true positives. late = labels that arrived after their "
             "window closed (fake negatives until corrected). Plot: calibration_over_time.png.", ""]
    head = "| strategy | seeds | " + " | ".join(f"{t} AUC | {t} cal" for t in TASKS) + " | late labels | final windows (s) | events/s |"
    lines += [head, "|---|---|" + "---|---|" * len(TASKS) + "---|---|---|"]
    for s in STRATEGIES:
        rs = [r for r in recs if r["strategy"] == s]
        if not rs:
            continue
        cells = [f"{mean_std([r['scores'][t]['auc'] for r in rs])} | {mean_std([r['scores'][t]['calibration'] for r in rs])}"
                 for t in TASKS]
        w = rs[0]["summary"]["windows"]
        lines.append(f"| {s} | {len(rs)} | " + " | ".join(cells) +
                     f" | {statistics.mean(r['summary']['joiner']['late_labels'] for r in rs):,.0f} | "
                     + ", ".join(f"{t} {w[t]:,.0f}" for t in TASKS) +
                     f" | {statistics.mean(r['events_per_s'] for r in rs):,.0f} |")
    lines.append("")
    return "\n".join(lines)


def load() -> list[dict]:
    return load_runs(OUT / "runs")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3])
    ap.add_argument("--impressions", type=int, default=400_000)
    ap.add_argument("--strategies", nargs="+", choices=list(STRATEGIES))
    ap.add_argument("--report", action="store_true")
    a = ap.parse_args()
    if not a.report:
        import torch

        torch.set_num_threads(1)
        d = data(a.impressions)
        for seed in a.seeds:
            run_dir = base_run(d, seed)
            for s in a.strategies or list(STRATEGIES):
                out, summary, seconds = stream(run_dir, d, s, seed)
                rec = {"strategy": s, "seed": seed, "impressions": a.impressions, "summary": summary,
                       "seconds": seconds, "events_per_s": summary["events"] / seconds, "scores": score(out, d)}
                write_json(OUT / "runs" / f"{s}_s{seed}.json", rec)
                print(s, seed, {t: (round(rec["scores"][t]["auc"], 4), round(rec["scores"][t]["calibration"], 3))
                                for t in TASKS}, flush=True)
    recs = load()
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "streaming.md").write_text(table(recs))
    plot(recs, OUT / "calibration_over_time.png")
    print((OUT / "streaming.md").read_text())


if __name__ == "__main__":
    main()
