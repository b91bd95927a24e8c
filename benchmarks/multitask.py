"""Multi-task experiments (issue 5): single-task, shared-bottom, ESMM, MMoE, PLE, STEM, AME, STEM-AL.

    python benchmarks/multitask.py [--protocols p4 sim] [--seeds 1 2 3] [--models ...] [--resume]
    python benchmarks/multitask.py --report

Every multi-task model trains on configs/<protocol>/mmoe.yaml with only ``model.name`` (and the model's
own options) changed; ``single`` trains one DNN per task (``tasks: [t]``, towers of the same size). ``sim`` is
the built-in simulator (1M impressions, seed 2024; click, conv1, conv2 over all impressions, conv2's
drivers conflict with the click's), with the oracle AUC per task. ``stem_al`` (simulator only): main task
conv1, auxiliary click with loss weight 0.2. Writes benchmarks/results/multitask/runs/<protocol>_*.json and
one table per protocol, benchmarks/results/multitask/<protocol>.md, rebuilt from that protocol's JSONs only
(so running one protocol never rewrites another's table); the runs stay in runs/bench/multitask/ for
``untwine analyze entanglement``.
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
RUNS = Path("runs/bench/multitask")
OUT = RESULTS / "multitask"
TASKS = {"p4": ["income", "marital"], "sim": ["click", "conv1", "conv2"]}
# model -> overrides (besides model.name)
MODELS = {"single": [], "shared_bottom": [], "esmm": [], "mmoe": [], "ple": ["model.levels=2"], "stem": [],
          "ame": ["model={name: ame, tables: [16, 32, 64], hidden: [128]}"], "stem_al": ["model.main_task=conv1", "tasks=[click, conv1]",
                                                          "train.task_weights={click: 0.2}", "train.monitor_task=conv1"]}


def data_overrides(protocol: str) -> list[str]:
    return [f"dataset={sim_dataset().resolve()}"] if protocol == "sim" else []


def run_config(protocol: str, name: str, overrides: list[str], seed: int, extra: list[str]) -> dict:
    cfg = ExperimentConfig.load(CONFIGS / protocol / "mmoe.yaml",
                                [*data_overrides(protocol), *overrides, f"train.seed={seed}", "train.progress=false",
                                 *extra])
    t0 = time.perf_counter()
    r = run_experiment(cfg, run_dir=RUNS / f"{protocol}_{name}_s{seed}", resume=False, log=lambda *_: None)
    return {"test": r.test, "valid": r.valid, "epochs_run": r.epochs_run, "num_parameters": r.num_parameters,
            "train_samples_per_s": r.train_samples_per_s, "seconds": time.perf_counter() - t0, "run_dir": r.run_dir}


def run_model(protocol: str, model: str, seed: int, extra: list[str]) -> dict:
    rec = {"protocol": protocol, "model": model, "seed": seed}
    if model == "single":  # one DNN per task, hidden = experts + tower of the multi-task models
        per = {t: run_config(protocol, f"single_{t}", ["model={name: dnn, hidden: [256, 128, 128]}", f"tasks=[{t}]",
                                                       f"train.monitor_task={t}"], seed, extra)
               for t in TASKS[protocol]}
        rec["test"] = {t: r["test"][t] for t, r in per.items()}
        rec["num_parameters"] = sum(r["num_parameters"] for r in per.values())
        rec["train_samples_per_s"] = statistics.mean(r["train_samples_per_s"] for r in per.values())
        rec["epochs_run"] = statistics.mean(r["epochs_run"] for r in per.values())
        return rec
    name = [] if any(o.startswith("model=") for o in MODELS[model]) else [f"model.name={model}"]
    r = run_config(protocol, model, [*name, *MODELS[model]], seed, extra)
    return {**rec, **{k: r[k] for k in ("test", "num_parameters", "train_samples_per_s", "epochs_run", "run_dir")}}


def oracle(protocol: str) -> dict[str, float]:
    if protocol != "sim":
        return {}
    import pyarrow.parquet as pq

    from untwine.metrics.classification import auc

    cols = [c for t in TASKS["sim"] for c in (t, f"p_{t}")]
    t = pq.read_table(sim_dataset().parent / "test.parquet", columns=cols)
    return {task: auc(t.column(f"p_{task}").to_numpy(), t.column(task).to_numpy()) for task in TASKS["sim"]}


def table(p: str, recs: list[dict]) -> str:
    lines = [f"# Multi-task models on {p.upper()} (issue 5)", "", f"`python benchmarks/multitask.py --protocols {p}`", "",
             f"Machine: {json.dumps(machine())}. Test AUC per task of the best-validation epoch (early stopping on "
             "the mean valid AUC; stem_al on conv1), mean ± std over model seeds. single = one DNN per task "
             "(parameters summed). Train samples/s: train.threads=1, runs sharing the cores: rough.", ""]
    tasks = TASKS[p]
    o = oracle(p)
    if o:
        lines += ["Oracle (true probabilities): " + ", ".join(f"{t} {a:.4f}" for t, a in o.items()) + ".", ""]
    lines += ["| model | seeds | " + " | ".join(f"{t} AUC" for t in tasks) + " | epochs | parameters | train samples/s |",
              "|---|---|" + "---|" * len(tasks) + "---|---|---|"]
    for m in MODELS:
        rs = [r for r in recs if r["model"] == m]
        if rs:
            cells = [mean_std([r["test"][t]["auc"] for r in rs]) if t in rs[0]["test"] else "-" for t in tasks]
            lines.append(f"| {m} | {len(rs)} | " + " | ".join(cells) +
                         f" | {statistics.mean(r['epochs_run'] for r in rs):.1f} | {rs[0]['num_parameters']:,} | "
                         f"{statistics.mean(r['train_samples_per_s'] for r in rs):,.0f} |")
    lines.append("")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--protocols", nargs="+", default=["p4", "sim"])
    ap.add_argument("--models", nargs="+")
    ap.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3])
    ap.add_argument("--set", nargs="*", default=["train.threads=1"])
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--report", action="store_true")
    a = ap.parse_args()
    if not a.report:
        done = {(r["protocol"], r["model"], r["seed"]) for r in load()}
        for p in a.protocols:
            for seed in a.seeds:
                for m in a.models or list(MODELS):
                    if (m == "stem_al" or m == "esmm") and p != "sim":
                        continue  # STEM-AL's main/auxiliary split and ESMM's click -> conversion need the simulator
                    if a.resume and (p, m, seed) in done:
                        continue
                    rec = run_model(p, m, seed, a.set)
                    write_json(OUT / "runs" / f"{p}_{m}_s{seed}.json", rec)
                    print(p, m, seed, {t: round(v["auc"], 4) for t, v in rec["test"].items() if "auc" in v}, flush=True)
    for p in a.protocols:
        recs = load(p)
        if recs:
            OUT.mkdir(parents=True, exist_ok=True)
            (OUT / f"{p}.md").write_text(table(p, recs))
            print((OUT / f"{p}.md").read_text())


def load(protocol: str | None = None) -> list[dict]:
    return [r for r in load_runs(OUT / "runs") if protocol is None or r["protocol"] == protocol]


if __name__ == "__main__":
    main()
