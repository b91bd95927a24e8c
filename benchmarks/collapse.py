"""Embedding-scaling experiment (issue 4): single vs multiple embedding tables, 3 seeds, mean ± std.

    python benchmarks/collapse.py [--protocols p1 p2 sim] [--seeds 1 2 3] [--variants ...] [--resume]
    python benchmarks/collapse.py --report        # tables and plots from the committed JSON only

Two families, each with one table at widths 10, 20, 40, 80 and with K = 2, 4, 8 tables of width 10 (the
same total width 20, 40, 80): DNN (configs/<protocol>/me_dnn.yaml: a 400-unit ReLU layer per table, mean,
two more layers; one table computes ``dnn``) and DCN-V2 (me_dcnv2.yaml: a cross network per table, mean,
the MLP; one table is ``dcnv2`` stacked, bit for bit), the same with a 400-unit ReLU projection after
each cross network (K = 1, 2, 4, 8), plus the heterogeneous MoE in the Moments pCTR
shape (moments_pctr.yaml: 30-wide table -> GwPFM + FlatDNN, 10-wide table -> IPNN, gated; total 40).
Every run reports test AUC, the information abundance of its embeddings (untwine.analysis.collapse: mean
over vocabulary-owning features of IA per table, and of each feature's K tables side by side), parameters
and train samples/s (train.threads=1 per run, several runs sharing the cores, so speeds compare only
roughly). ``sim`` is the built-in simulator (150k impressions, seed 2024, click task, batch 4096).

Writes benchmarks/results/collapse/runs/<protocol>_<variant>_s<seed>.json, the table
benchmarks/results/collapse/scaling.md and the plots benchmarks/results/collapse/*.png.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, load_runs, machine, mean_std, sim_dataset, sim_oracle, write_json  # noqa: E402

from untwine.analysis.collapse import collapse_report, plot_ia, plot_spectra  # noqa: E402
from untwine.train.config import ExperimentConfig  # noqa: E402
from untwine.train.run import load_run, run_experiment  # noqa: E402

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
RUNS = Path("runs/bench/collapse")
OUT = RESULTS / "collapse"
SIM_IMPRESSIONS = 150_000


def tables_override(widths: list[int], expert: str, project: bool | None = None) -> list[str]:
    project = expert != "cross" if project is None else project
    experts = ", ".join(f"{{type: {expert}, table: {k}{'' if project else ', project: false'}}}"
                        for k in range(len(widths)))
    return [f"model.tables=[{', '.join(map(str, widths))}]", f"model.experts=[{experts}]"]


# variant -> (family, label, config file, overrides, total width)
VARIANTS: dict[str, tuple[str, str, str, list[str], int]] = {}
for fam, cfg, expert in (("DNN", "me_dnn", "flat_dnn"), ("DCN-V2", "me_dcnv2", "cross")):
    key = fam.lower().replace("-", "")
    for w in (10, 20, 40, 80):
        VARIANTS[f"{key}_w{w}"] = (fam, f"{fam}, 1 x {w}", cfg, tables_override([w], expert), w)
    for k in (2, 4, 8):
        VARIANTS[f"{key}_k{k}"] = (f"ME-{fam}", f"{fam}, {k} x 10", cfg, tables_override([10] * k, expert), 10 * k)
# ME-DCN-V2 with each cross network followed by a 400-unit ReLU projection (SPEC 3's "non-linear projection"),
# then the mean and an MLP [400, 400]: the same depth as the DCN-V2 rows
for k in (1, 2, 4, 8):
    VARIANTS[f"dcnv2p_k{k}"] = ("ME-DCN-V2 + projection", f"DCN-V2 + ReLU projection, {k} x 10", "me_dcnv2",
                                [*tables_override([10] * k, "cross", project=True), "model.expert_dim=400",
                                 "model.hidden=[400, 400]"], 10 * k)
VARIANTS["moments"] = ("hetero MoE", "hetero MoE (Moments pCTR: 30 -> GwPFM + FlatDNN, 10 -> IPNN)", "moments_pctr",
                       [], 40)


def protocol_config(protocol: str, config: str) -> tuple[Path, list[str]]:
    if protocol != "sim":
        return CONFIGS / protocol / f"{config}.yaml", []
    return CONFIGS / "sim" / f"{config}.yaml", [f"dataset={sim_dataset(SIM_IMPRESSIONS).resolve()}"]


def ia_summary(report: dict) -> dict:
    """Mean IA per table, IA of the K tables side by side, and per feature, from a collapse report."""
    out = {"mean_ia_per_table": report["mean_ia"],
           "mean_ia_combined": report.get("combined", {}).get("mean_ia", report["mean_ia"]),
           "per_feature_combined": {n: r["ia"] for n, r in
                                    (report.get("combined") or report["tables"][0])["fields"].items()},
           "per_feature_per_table": {n: statistics.mean(t["fields"][n]["ia"] for t in report["tables"])
                                     for n in report["tables"][0]["fields"]}}
    return out


def run_one(protocol: str, key: str, seed: int, extra: list[str]) -> dict:
    family, label, config, overrides, width = VARIANTS[key]
    path, data = protocol_config(protocol, config)
    cfg = ExperimentConfig.load(path, [*data, *overrides, f"train.seed={seed}", "train.progress=false", *extra])
    t0 = time.perf_counter()
    run_dir = RUNS / f"{protocol}_{key}_s{seed}"
    r = run_experiment(cfg, run_dir=run_dir, resume=False, log=lambda *_: None)
    task = next(iter(r.test))
    rec = {"protocol": protocol, "variant": key, "family": family, "label": label, "total_width": width,
           "seed": seed, "task": task, "config": str(path.relative_to(CONFIGS.parent)),
           "overrides": [*overrides, *extra], "test": r.test[task], "valid": r.valid[task],
           "best_epoch": r.best_epoch, "epochs_run": r.epochs_run, "train_samples_per_s": r.train_samples_per_s,
           "num_parameters": r.num_parameters, "seconds": time.perf_counter() - t0, "run_dir": r.run_dir}
    _, space, model = load_run(run_dir)  # the best epoch's weights, as the test metrics
    report = collapse_report(model, space, run_dir / "vocab")
    weighted = collapse_report(model, space, run_dir / "vocab", frequency_weighted=True)
    rec["collapse"] = ia_summary(report)
    rec["collapse_weighted"] = ia_summary(weighted)
    write_json(run_dir / "collapse.json", report)
    return rec


def load_records() -> list[dict]:
    return load_runs(OUT / "runs")


def table(recs: list[dict], cmd: str) -> str:
    lines = ["# Embedding scaling: single vs multiple tables (issue 4)", "", f"`{cmd}`", "",
             f"Machine: {json.dumps(machine())}. Test metrics of the best-validation epoch, mean ± std over model "
             "seeds. IA = information abundance (sum s_i / s_1) of the embedding rows of the values seen in "
             "training, averaged over the vocabulary-owning features: *per table* averages each table's IA "
             "(at most its width, 10 for the multi-embedding rows), *side by side* takes each feature's K "
             "tables as one matrix of the total width (comparable with one table of that width); a feature "
             "with n values has IA at most min(n, width). Train samples/s: train.threads=1, runs sharing the "
             "cores: rough.", ""]
    for p in dict.fromkeys(r["protocol"] for r in recs):
        lines += [f"## {p.upper()}", ""]
        if p == "sim":
            o_auc, o_gauc = sim_oracle(sim_dataset(SIM_IMPRESSIONS).parent)
            lines += [f"Oracle (the simulator's true click probabilities): test AUC {o_auc:.4f}, GAUC {o_gauc:.4f}.", ""]
        lines += ["| variant | total width | seeds | test AUC | test logloss | IA per table | IA side by side "
                  "| IA side by side (freq-weighted) | parameters | train samples/s | epochs |",
                  "|---|---|---|---|---|---|---|---|---|---|---|"]
        for key, (_, label, _, _, width) in VARIANTS.items():
            rs = [r for r in recs if r["protocol"] == p and r["variant"] == key]
            if not rs:
                continue
            m = lambda f: mean_std([f(r) for r in rs])  # noqa: E731
            lines.append(
                f"| {label} | {width} | {len(rs)} | {m(lambda r: r['test']['auc'])} | "
                f"{m(lambda r: r['test']['logloss'])} | {m(lambda r: r['collapse']['mean_ia_per_table'])} | "
                f"{m(lambda r: r['collapse']['mean_ia_combined'])} | "
                f"{m(lambda r: r['collapse_weighted']['mean_ia_combined'])} | {rs[0]['num_parameters']:,} | "
                f"{statistics.mean(r['train_samples_per_s'] for r in rs):,.0f} | "
                f"{statistics.mean(r['epochs_run'] for r in rs):.1f} |")
        lines.append("")
    return "\n".join(lines)


def plots(recs: list[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    protocols = list(dict.fromkeys(r["protocol"] for r in recs))
    for metric, ylabel, fname in (("auc", "test AUC", "auc_vs_width.png"),
                                  ("ia", "mean IA, tables side by side", "ia_vs_width.png")):
        fig, axes = plt.subplots(1, len(protocols), figsize=(4.6 * len(protocols), 3.8), squeeze=False)
        for ax, p in zip(axes[0], protocols):
            families = list(dict.fromkeys(VARIANTS[k][0] for k in VARIANTS))
            for fam in families:
                pts = []
                for key, (f, _, _, _, width) in VARIANTS.items():
                    rs = [r for r in recs if r["protocol"] == p and r["variant"] == key]
                    # K = 1 of a multi-embedding family is its single 10-wide table: the line starts there
                    starts = fam.startswith("ME-") and f"ME-{f}" == fam and width == 10
                    if (f != fam and not starts) or not rs:
                        continue
                    vals = [r["test"]["auc"] if metric == "auc" else r["collapse"]["mean_ia_combined"] for r in rs]
                    pts.append((width, statistics.mean(vals), statistics.stdev(vals) if len(vals) > 1 else 0.0))
                if pts:
                    x, y, e = zip(*pts)
                    style = "--" if fam.startswith("ME-") else "-"
                    ax.errorbar(x, y, yerr=e, marker="o" if len(pts) > 1 else "*", linestyle=style, capsize=3,
                                label=fam, markersize=5 if len(pts) > 1 else 11)
            ax.set_xscale("log", base=2)
            ax.set_xticks([10, 20, 40, 80], ["10", "20", "40", "80"])
            ax.set_xlabel("total embedding width")
            ax.set_ylabel(ylabel)
            ax.set_title(p.upper())
            ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(OUT / fname, dpi=120)
        plt.close(fig)
    # IA per feature at total width 80 (and the MoE), seed 1's runs
    for p in protocols:
        reports = {}
        for key in ("dnn_w80", "dnn_k8", "dcnv2_w80", "dcnv2_k8", "dcnv2p_k8", "moments"):
            run = RUNS / f"{p}_{key}_s1" / "collapse.json"
            if run.exists():
                reports[VARIANTS[key][1].split(" (")[0]] = json.loads(run.read_text())
        if reports:
            plot_ia(reports, OUT / f"ia_per_feature_{p}.png",
                    title=f"{p.upper()}: IA per feature (mean over a model's tables), seed 1")
            for key in ("dcnv2_w80", "dcnv2_k8"):
                run = RUNS / f"{p}_{key}_s1" / "collapse.json"
                if run.exists():
                    plot_spectra(json.loads(run.read_text()), OUT / f"spectra_{p}_{key}.png",
                                 title=f"{p.upper()} {VARIANTS[key][1]}: normalised singular spectra, seed 1")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--protocols", nargs="+", default=["p1", "p2", "sim"])
    ap.add_argument("--variants", nargs="+")
    ap.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3])
    ap.add_argument("--set", nargs="*", default=["train.threads=1"], help="config overrides for every run")
    ap.add_argument("--resume", action="store_true", help="keep finished runs, run the rest")
    ap.add_argument("--report", action="store_true", help="only rebuild the table and plots")
    a = ap.parse_args()
    keys = [k for k in VARIANTS if not a.variants or k in a.variants]
    if not a.report:
        done = {(r["protocol"], r["variant"], r["seed"]) for r in load_records()}
        for p in a.protocols:
            for seed in a.seeds:
                for key in keys:
                    if a.resume and (p, key, seed) in done:
                        continue
                    rec = run_one(p, key, seed, a.set)
                    write_json(OUT / "runs" / f"{p}_{key}_s{seed}.json", rec)
                    print(f"{p} {key} seed {seed}: AUC {rec['test']['auc']:.4f} IA {rec['collapse']['mean_ia_combined']:.2f} "
                          f"({rec['epochs_run']} epochs, {rec['seconds']:.0f}s)", flush=True)
    recs = load_records()
    (OUT / "scaling.md").write_text(table(recs, "python benchmarks/collapse.py --protocols p1 p2 sim --seeds 1 2 3"))
    plots(recs)
    print((OUT / "scaling.md").read_text())


if __name__ == "__main__":
    main()
