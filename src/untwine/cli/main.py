"""The ``untwine`` command line."""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import List, Optional

import typer

app = typer.Typer(add_completion=False, no_args_is_help=True, help="untwine: ads and recommendation models.")
data_app = typer.Typer(no_args_is_help=True, help="Prepare recipe datasets or download full public datasets.")
app.add_typer(data_app, name="data")
analyze_app = typer.Typer(no_args_is_help=True, help="Analysis tools over trained runs.")
app.add_typer(analyze_app, name="analyze")


def _fmt(x: float) -> str:
    return "   -  " if x != x else f"{x:.4f}"


@app.command()
def train(config: Path = typer.Argument(..., exists=True, help="experiment YAML"),
          overrides: Optional[List[str]] = typer.Argument(None, help="dotted overrides, e.g. train.lr=0.01"),
          run_dir: Optional[Path] = typer.Option(None, help="run directory (default from config)"),
          resume: bool = typer.Option(True, help="continue from run_dir/last.pt when present"),
          on_bad_rows: Optional[str] = typer.Option(None, help="error | skip (skipped rows are counted)")) -> None:
    """Train a model from an experiment config; works under torchrun for data parallelism."""
    from untwine.train.config import ExperimentConfig
    from untwine.train.run import run_experiment

    extra = list(overrides or [])
    if on_bad_rows:
        extra.append(f"train.on_bad_rows={on_bad_rows}")
    cfg = ExperimentConfig.load(config, extra)
    result = run_experiment(cfg, run_dir=run_dir, resume=resume)
    if int(os.environ.get("RANK", "0")) == 0:
        for task, m in result.test.items():
            typer.echo(f"test {task}: " + " ".join(f"{k}={_fmt(v)}" for k, v in m.items()
                                                   if k in ("auc", "gauc", "logloss", "calibration")))
        typer.echo(f"run directory: {result.run_dir}")


@app.command()
def evaluate(run_dir: Path = typer.Argument(..., exists=True, file_okay=False),
             data: Optional[str] = typer.Option(None, help="dataset.yaml or recipe (default: the run's dataset)"),
             split: str = typer.Option("test", help="train | valid | test")) -> None:
    """Score a split with a finished run's best weights and print the metrics as JSON."""
    from untwine.train.run import evaluate_run

    typer.echo(json.dumps(evaluate_run(run_dir, data, split), indent=2))


@app.command()
def models() -> None:
    """List the registered models."""
    from untwine.models import MODELS

    for e in MODELS.entries():
        typer.echo(f"{e.name:10s} {e.paper}\n{'':10s} inputs: {e.inputs}")


@analyze_app.command("collapse")
def analyze_collapse(run_dirs: List[Path] = typer.Argument(..., exists=True, file_okay=False, help="run directories"),
                     out: Optional[Path] = typer.Option(None, help="output directory (default RUN_DIR/collapse "
                                                                   "for one run, ./collapse for several)"),
                     weighted: bool = typer.Option(False, help="weight each row by its training frequency"),
                     alarm: Optional[float] = typer.Option(None, help="list features whose IA is below this "
                                                                      "(exit code 1 when any)"),
                     pairs: int = typer.Option(0, help="rows of the valid split for per-field-pair spectra "
                                                       "of v_i * v_j (0: off)")) -> None:
    """Singular spectra and information abundance of every embedding table of trained runs: JSON + PNG."""
    from untwine.analysis.collapse import collapse_report, pair_spectra, plot_ia, plot_pair_ia, plot_spectra
    from untwine.core.io import atomic_write_json
    from untwine.train.run import load_run, run_split_loader

    out = out or (run_dirs[0] / "collapse" if len(run_dirs) == 1 else Path("collapse"))
    reports, collapsed = {}, []
    for run in run_dirs:
        cfg, space, model = load_run(run)
        label = run.name if run.name not in reports else str(run)
        report = collapse_report(model, space, run / "vocab", frequency_weighted=weighted, alarm=alarm)
        report.update(run_dir=str(run), model=cfg.model.name)
        if pairs:
            loader = run_split_loader(run, cfg, space, "valid", batch_size=4096)
            report["pairs"] = pair_spectra(model, loader, max_rows=pairs)
            for k, table in enumerate(report["pairs"]):
                plot_pair_ia(table, out / f"pair_ia_{label}_{k}.png")
        plot_spectra(report, out / f"spectra_{label}.png", title=f"{label} ({cfg.model.name})")
        reports[label] = report
        typer.echo(f"{label}: mean IA {report['mean_ia']:.2f} over {len(report['tables'])} table(s) "
                   + " ".join(f"[{t['path']} d={t['dim']}: {t['mean_ia']:.2f}]" for t in report["tables"]))
        collapsed += [(label, c) for c in report.get("collapsed", [])]
    plot_ia(reports, out / "ia_per_feature.png")
    atomic_write_json(out / "collapse.json", reports)
    typer.echo(f"wrote {out}/collapse.json and plots")
    if alarm is not None:
        for label, c in collapsed:
            typer.echo(f"collapsed: {label} {c['table']} {c['feature']} IA {c['ia']:.2f} < {alarm} "
                       f"(could reach {c['ceiling']})")
        if collapsed:
            raise typer.Exit(1)


@analyze_app.command("entanglement")
def analyze_entanglement(run_a: Path = typer.Argument(..., exists=True, file_okay=False, help="single-task run A"),
                         run_b: Path = typer.Argument(..., exists=True, file_okay=False, help="single-task run B"),
                         run_mt: Path = typer.Argument(..., exists=True, file_okay=False, help="multi-task run"),
                         out: Optional[Path] = typer.Option(None, help="output directory (default RUN_MT/entanglement)"),
                         user: Optional[str] = typer.Option(None, help="user id feature (default: the group key)"),
                         item: Optional[str] = typer.Option(None, help="item id feature (default: first item one)"),
                         split: str = typer.Option("valid", help="split whose (user, item) pairs are measured"),
                         rows: int = typer.Option(50_000, help="rows of the split to use"),
                         fraction: float = typer.Option(0.1, help="share of pairs where A and B disagree most")) -> None:
    """Distance distributions of conflicting (user, item) pairs under two single-task models and a
    multi-task one, and the multi-task model's gate weights per task: JSON + PNG."""
    import numpy as np

    from untwine.analysis.collapse import embedding_tables
    from untwine.analysis.entanglement import (entanglement_report, gate_sample, pair_distances, pair_features,
                                               plot_distances, plot_gates, zscore)
    from untwine.core.io import atomic_write_json
    from untwine.train.run import load_run, run_split_loader

    out = out or run_mt / "entanglement"
    loaded = [(run, *load_run(run)) for run in (run_a, run_b, run_mt)]
    u, i = pair_features(loaded[0][2], user, item)

    def distances(run, cfg, space, model, table=0):
        return pair_distances(model, space, run_split_loader(run, cfg, space, split, batch_size=4096), u, i, rows, table)

    da, db = distances(*loaded[0]), distances(*loaded[1])
    run, cfg, space, model = loaded[2]
    tables = embedding_tables(model)
    names = model.table_names() if hasattr(model, "table_names") else [path for path, _ in tables]
    views = {f"multi-task {cfg.model.name} {name}": distances(run, cfg, space, model, k)
             for k, name in enumerate(names[:len(tables)])}
    if not (len(da) == len(db) and all(len(v) == len(da) for v in views.values())):
        raise typer.BadParameter("the three runs must be trained on the same data (their splits differ in length)")
    tasks = [loaded[0][1].tasks[0] if loaded[0][1].tasks else loaded[0][2].schema.task_names[0],
             loaded[1][1].tasks[0] if loaded[1][1].tasks else loaded[1][2].schema.task_names[0]]
    report = entanglement_report(da, db, views, fraction)
    picked = report.pop("picked")
    plot_distances(zscore(da)[picked], zscore(db)[picked], {k: zscore(v)[picked] for k, v in views.items()},
                   (tasks[0], tasks[1]), out / "distances.png",
                   title=f"{report['selected']:,} (user, item) pairs where {tasks[0]} and {tasks[1]} disagree most")
    gates = gate_sample(model, run_split_loader(run, cfg, space, split, batch_size=4096), rows)
    if gates is not None:
        plot_gates(gates, space.schema.task_names, out / "gates.png", title=f"{cfg.model.name}: gate weights ({split})")
        report["gates"] = {t: [float(x) for x in np.nanmean(gates[:, k], axis=0)]
                           for k, t in enumerate(space.schema.task_names)}
    report.update(runs=[str(r) for r in (run_a, run_b, run_mt)], tasks=tasks, user=u, item=i, split=split)
    atomic_write_json(out / "entanglement.json", report)
    for name, v in report["views"].items():
        typer.echo(f"{name}: between A and B for {v['between']:.0%} of the selected pairs, "
                   f"pull to the middle {v['pull_to_middle']:.2f}, corr with A {v['corr_with_a']:.2f} / B {v['corr_with_b']:.2f}")
    typer.echo(f"wrote {out}/entanglement.json and plots")


@analyze_app.command("calibration")
def analyze_calibration(run_dirs: List[Path] = typer.Argument(..., exists=True, file_okay=False, help="run directories"),
                        out: Path = typer.Option(Path("runs/analysis/calibration"), help="output directory"),
                        split: str = typer.Option("test", help="split to score"),
                        bins: int = typer.Option(15, min=2, help="quantile bins of the reliability curve")) -> None:
    """Reliability diagram per task: each run's raw predictions and, when it fitted one, its calibration."""
    from untwine.analysis.calibration import plot_reliability, reliability_summary
    from untwine.core.io import atomic_write_json
    from untwine.train.run import load_run, run_predictions, run_split_loader
    from untwine.train.trainer import predict

    report: dict[str, dict[str, dict]] = {}
    for run in run_dirs:
        cfg, space, model = load_run(run)
        tasks = space.schema.task_names
        raw = predict(model, run_split_loader(run, cfg, space, split), precision=cfg.train.precision)
        kinds = {"raw": run_predictions(run, cfg, tasks, raw, calibrated=False)}
        if (run / "calibration.json").exists():
            kinds["calibrated"] = run_predictions(run, cfg, tasks, raw)
        for t, task in enumerate(tasks):
            for kind, pred in kinds.items():
                keep = pred["masks"][:, t] > 0 if "masks" in pred else slice(None)
                name = f"{run.name} {kind}" if len(run_dirs) > 1 else kind
                report.setdefault(task, {})[name] = reliability_summary(pred["probs"][keep, t],
                                                                        pred["labels"][keep, t], bins)
    for task, curves in report.items():
        plot_reliability(curves, out / f"reliability_{task}.png", title=f"{task}: reliability on {split}")
        for name, c in curves.items():
            typer.echo(f"{task} {name}: calibration {c['calibration']:.4f}, ECE {c['ece']:.5f}")
    atomic_write_json(out / "calibration.json", {"runs": [str(r) for r in run_dirs], "split": split, "tasks": report})
    typer.echo(f"wrote {out}/calibration.json and reliability_*.png")


@app.command()
def simulate(out: Path = typer.Argument(..., help="directory for the log and its dataset.yaml"),
             impressions: int = typer.Option(1_000_000, help="simulated impressions"),
             seed: int = typer.Option(2024),
             events: Optional[str] = typer.Option(None, help="also write these splits (e.g. valid,test) as an "
                                                              "event stream OUT/events.jsonl for untwine stream"),
             settings: Optional[List[str]] = typer.Option(None, "--set", help="simulator setting, e.g. n_ads=100000")) -> None:
    """Write the built-in simulator's ads log as a dataset (train / valid / test parquet + dataset.yaml)."""
    from untwine.sim import SimConfig, run, write_log
    from untwine.sim.events import write_events
    from untwine.sim.writer import split_rows
    from untwine.train.config import apply_overrides

    extra = apply_overrides({}, list(settings or []))
    log = run(SimConfig(**{"n_impressions": impressions, "seed": seed, **extra}))
    typer.echo(f"wrote {write_log(log, out)}")
    if events:
        splits = split_rows(log)
        names = [x.strip() for x in events.split(",") if x.strip()]
        order = list(splits)
        bad = [x for x in names if x not in splits]
        idx = sorted(order.index(x) for x in names if x in splits)
        if bad or not names or idx != list(range(idx[0], idx[-1] + 1)):
            raise typer.BadParameter(f"--events takes adjacent splits of {order}, e.g. valid,test; got {events!r}")
        rows = slice(splits[order[idx[0]]].start, splits[order[idx[-1]]].stop)
        counts = write_events(log, out / "events.jsonl", rows, seed=seed)
        typer.echo(f"wrote {out / 'events.jsonl'}: {counts}")


@app.command()
def stream(run_dir: Path = typer.Argument(..., exists=True, file_okay=False, help="a trained run to start from"),
           source: str = typer.Argument(..., help="events: a JSON-lines file, - for stdin, or "
                                                  "redis://HOST:PORT/DB?stream=NAME"),
           out: Path = typer.Option(..., "--out", "-o", help="stream state: checkpoints, progressive.jsonl"),
           tasks: Optional[str] = typer.Option(None, help="label types to join (default: the run's tasks)"),
           window: List[str] = typer.Option([], help="initial window TASK=SECONDS (repeatable; default 3600)"),
           adaptive: bool = typer.Option(True, help="windows follow a quantile of the observed delays"),
           quantile: float = typer.Option(0.95, help="delay quantile of the adaptive windows"),
           max_window: float = typer.Option(7 * 86400.0, help="upper bound of a window, seconds"),
           late: str = typer.Option("correction", help="late labels: ignore | correction | fake_negative"),
           batch_size: int = typer.Option(512, min=1),
           lr: Optional[float] = typer.Option(None, help="learning rate (default: the run's)"),
           checkpoint_every: int = typer.Option(50_000, min=1, help="events between checkpoints"),
           eval_every: int = typer.Option(10_000, min=1, help="samples per progressive-validation record"),
           drain: bool = typer.Option(False, help="at the end of the source, close every open window"),
           log_predictions: bool = typer.Option(False, help="also write every sample's prediction to OUT/predictions.csv"),
           max_events: Optional[int] = typer.Option(None, min=1, help="stop after this many events"),
           block_ms: Optional[int] = typer.Option(None, help="Redis: wait this long for new events before stopping"),
           threads: Optional[int] = typer.Option(None, min=1, help="torch threads")) -> None:
    """Train a run online from an event stream: join delayed labels, progressive validation, atomic
    checkpoints with the stream position (a restart resumes without loss or double counting)."""
    import torch

    from untwine.stream.events import open_source
    from untwine.stream.joiner import JoinerConfig
    from untwine.stream.learner import StreamConfig, StreamLearner
    from untwine.train.run import load_feature_space

    if threads:
        torch.set_num_threads(threads)
    windows = {}
    for w in window:
        name, _, value = w.partition("=")
        try:
            windows[name] = float(value)
        except ValueError:
            raise typer.BadParameter(f"--window takes TASK=SECONDS, got {w!r}") from None
    task_list = [t.strip() for t in tasks.split(",")] if tasks else load_feature_space(run_dir).schema.task_names
    try:
        jc = JoinerConfig(tasks=task_list, windows=windows, adaptive=adaptive, quantile=quantile,
                          max_window_s=max_window, late=late)
        learner = StreamLearner(run_dir, out, StreamConfig(joiner=jc, batch_size=batch_size, lr=lr,
                                                           checkpoint_every=checkpoint_every, eval_every=eval_every,
                                                           log_predictions=log_predictions),
                                log=typer.echo)
    except ValueError as e:
        raise typer.BadParameter(str(e)) from None
    summary = learner.consume(open_source(source, block_ms=block_ms), drain=drain, max_events=max_events)
    typer.echo(json.dumps(summary, indent=2))


@data_app.command("prepare")
def data_prepare(name: str = typer.Argument(..., help="recipe name (p1 ... p7, t1)"),
                 out: Path = typer.Option(..., "--out", "-o", help="output folder"),
                 force: bool = typer.Option(False, help="rebuild even if up to date")) -> None:
    """Build a benchmark dataset from the local raw files, exactly as PROTOCOLS.md splits it."""
    from untwine.data.recipes import prepare

    typer.echo(str(prepare(name, out, force=force)))


@data_app.command("download")
def data_download(name: str = typer.Argument(..., help="dataset name"),
                  dest: Path = typer.Option(Path("data"), "--dest", "-d", help="destination folder")) -> None:
    """Download a full public dataset (the only command that uses the network)."""
    from untwine.data.download import download

    typer.echo(str(download(name, dest)))


@app.command()
def recall(config: Path = typer.Argument(..., exists=True, help="recall YAML (dataset, two-tower, channels, merge)"),
           overrides: Optional[List[str]] = typer.Argument(None, help="dotted overrides, e.g. train.seed=2"),
           run_dir: Optional[Path] = typer.Option(None, help="run directory (default from config)")) -> None:
    """Fit the recall channels (two-tower, ItemCF, Swing, popularity, ...) and evaluate them on full ranking."""
    from untwine.retrieval.run import RecallConfig, run_recall

    cfg = RecallConfig.load(config, list(overrides or []))
    result = run_recall(cfg, run_dir=run_dir)
    for name, m in result["test"].items():
        typer.echo(f"test {name}: " + " ".join(f"{k}={_fmt(v)}" for k, v in m.items() if "@" in k))


@app.command()
def export(run_dirs: List[Path] = typer.Argument(..., exists=True, file_okay=False,
                                                 help="one recall run (untwine recall) and at most one ranking run"),
           out: Path = typer.Option(..., "-o", "--out", help="bundle directory (replaced atomically)"),
           settings: Optional[List[str]] = typer.Option(None, "--set", help="pipeline setting, e.g. prerank_size=300")) -> None:
    """Write a serving bundle: weights (safetensors), vocabularies, catalogue, ANN index, pipeline, hashed manifest."""
    from untwine.serving.bundle import PipelineConfig, export_bundle
    from untwine.train.config import apply_overrides

    pipeline = PipelineConfig.model_validate(apply_overrides({}, list(settings or [])))
    export_bundle(run_dirs, out, pipeline, log=typer.echo)


@app.command()
def serve(bundle: Path = typer.Argument(..., exists=True, file_okay=False, help="bundle from untwine export"),
          host: str = typer.Option("127.0.0.1", help="bind address; 0.0.0.0 exposes the service to the network"),
          port: int = typer.Option(8000),
          threads: int = typer.Option(1, help="torch intra-op threads per worker"),
          processes: int = typer.Option(1, help="funnel worker processes (requests go to a free one); "
                                                "2 on 2 cores: benchmarks/results/serving/loadtest.md"),
          max_body_bytes: int = typer.Option(1 << 20, help="larger request bodies get 413"),
          admin_token: Optional[str] = typer.Option(None, envvar="UNTWINE_ADMIN_TOKEN",
                                                    help="required in X-Admin-Token for /admin/reload when set")) -> None:
    """Serve a bundle over HTTP: /recommend, /score, /health, /metrics, /admin/reload."""
    from untwine.serving.server import serve as run_server

    run_server(str(bundle), host=host, port=port, torch_threads=threads, max_body_bytes=max_body_bytes,
               admin_token=admin_token, processes=processes)


@app.command()
def quickstart(out: Path = typer.Option(Path("runs/quickstart"), help="where the data and runs go"),
               impressions: int = typer.Option(1_000_000, help="simulated impressions"),
               seed: int = typer.Option(2024)) -> None:
    """Simulate an ads log, train DNN and DCN-V2 on it, and compare with the oracle AUC."""
    from untwine.sim import SimConfig, write_dataset
    from untwine.train.config import ExperimentConfig
    from untwine.train.run import run_experiment
    from untwine.core.dataset_spec import DatasetSpec

    data_dir = out / "data"
    typer.echo(f"simulating {impressions:,} impressions into {data_dir} ...")
    yaml_path = write_dataset(SimConfig(n_impressions=impressions, seed=seed), data_dir)
    spec = DatasetSpec.from_yaml(yaml_path)
    oracle = spec.extra.get("oracle_auc", {}).get("test", {}).get("click", float("nan"))
    rows = []
    for name in ("dnn", "dcnv2"):
        cfg = ExperimentConfig.from_dict({
            "dataset": str(yaml_path), "model": {"name": name},
            "train": {"batch_size": 1024, "epochs": 6, "patience": 1, "seed": seed,
                      "embedding_optimizer": "sparse_adam"}})
        typer.echo(f"training {name} ...")
        r = run_experiment(cfg, run_dir=out / name, resume=False)
        m = r.test["click"] if "click" in r.test else next(iter(r.test.values()))
        rows.append((name, m["auc"], m.get("gauc", float("nan")), m["logloss"], r.train_samples_per_s, r.epochs_run))
    typer.echo("\nmodel    test AUC  test GAUC  logloss  train samples/s  epochs")
    for name, a, g, ll, sps, ep in rows:
        typer.echo(f"{name:8s} {a:8.4f}  {g:9.4f}  {ll:7.4f}  {sps:15,.0f}  {ep:6d}")
    typer.echo(f"{'oracle':8s} {oracle:8.4f}   (AUC of the simulator's true click probabilities)")
    typer.echo(f"\nruns in {out}/<model>/ (result.json, metrics.jsonl, best.safetensors)")


def main() -> None:  # pragma: no cover
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
