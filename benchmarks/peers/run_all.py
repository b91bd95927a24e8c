#!/usr/bin/env python
"""Run the peer matrix and summarise it. Run with the peers venv python (benchmarks/peers/.venv).

    PY=benchmarks/peers/.venv/bin/python
    $PY benchmarks/peers/run_all.py accuracy            # P1, P2 x dnn, deepfm, dcnv2 x seeds 1-3 x fuxictr, deepctr
    $PY benchmarks/peers/run_all.py accuracy --libs rechub          # the optional third peer
    $PY benchmarks/peers/run_all.py throughput          # T1 + P1 x dcnv2, dnn, 1 training epoch, both numerics on T1
    $PY benchmarks/peers/run_all.py summary             # rewrite accuracy.md / throughput.md from the JSONs

Each run is its own process (``run_peer.py``), so memory peaks and Ray clusters do not mix; its log
goes to benchmarks/.work/peers/logs/. Datasets come from the untwine recipes: a missing
``<data-root>/<p1|p2|t1>/dataset.yaml`` is prepared with the untwine venv's python
(``from untwine.data.recipes import prepare``). Existing result JSONs are kept unless ``--force``.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
RESULTS = REPO / "benchmarks" / "results" / "peers"
WORK = REPO / "benchmarks" / ".work"
LIB_NAMES = {"fuxictr": "FuxiCTR", "deepctr": "DeepCTR-Torch", "rechub": "torch-rechub"}
MODEL_NAMES = {"dnn": "DNN", "deepfm": "DeepFM", "dcnv2": "DCN-V2"}
NATIVE = {"fuxictr": "embedded", "deepctr": "raw", "rechub": "raw"}
SUPPORTS = {"fuxictr": ("embedded", "raw"), "deepctr": ("raw",), "rechub": ("raw",)}

# PROTOCOLS.md "Peer reference numbers", test AUC mean and std (model seeds 2024-2026 there).
REFERENCE_AUC = {
    ("P1", "dnn"): {"fuxictr": (0.9300, 0.0042), "deepctr": (0.9279, 0.0004), "rechub": (0.9383, 0.0010)},
    ("P1", "deepfm"): {"fuxictr": (0.9324, 0.0040), "deepctr": (0.9280, 0.0003), "rechub": (0.9373, 0.0006)},
    ("P1", "dcnv2"): {"fuxictr": (0.9323, 0.0037), "deepctr": (0.9284, 0.0004), "rechub": (0.9382, 0.0007)},
    ("P2", "dnn"): {"fuxictr": (0.7082, 0.0033), "deepctr": (0.7062, 0.0014), "rechub": (0.6919, 0.0044)},
    ("P2", "deepfm"): {"fuxictr": (0.7035, 0.0020), "deepctr": (0.7062, 0.0024), "rechub": (0.6857, 0.0159)},
    ("P2", "dcnv2"): {"fuxictr": (0.7071, 0.0009), "deepctr": (0.7055, 0.0002), "rechub": (0.6959, 0.0102)},
}
REFERENCE_SPS = {  # training samples/s, PROTOCOLS.md (noisy, another run of a machine of this class)
    ("P1", "dnn"): {"fuxictr": "15.1k", "deepctr": "36.2k", "rechub": "30.8k"},
    ("P1", "dcnv2"): {"fuxictr": "13.7k", "deepctr": "32.2k", "rechub": "27.7k"},
    ("T1", "dcnv2"): {"fuxictr": "11.2k (embedded)", "deepctr": "20.3k (raw)", "rechub": "12.5k (raw)"},
}


def ensure_dataset(key: str, data_root: Path, untwine_python: str) -> Path:
    out = data_root / key
    if (out / "dataset.yaml").exists():
        return out
    print(f"preparing {key} with the untwine recipe into {out} ...", flush=True)
    code = f"from untwine.data.recipes import prepare; print(prepare({key!r}, {str(out)!r}))"
    subprocess.run([untwine_python, "-c", code], check=True, cwd=REPO)
    return out


def run_one(cmd: list[str], out: Path, log: Path, force: bool) -> dict | None:
    if out.exists() and not force:
        print(f"keep   {out.relative_to(REPO)}", flush=True)
        return json.loads(out.read_text())
    log.parent.mkdir(parents=True, exist_ok=True)
    t = time.perf_counter()
    with open(log, "w") as fh:
        rc = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, cwd=REPO).returncode
    if rc != 0 or not out.exists():
        print(f"FAILED ({rc}) {' '.join(cmd[1:])}  log: {log}", flush=True)
        return None
    r = json.loads(out.read_text())
    extra = f" GAUC {r['test']['gauc']:.4f}" if "gauc" in r["test"] else ""
    print(f"done   {out.relative_to(REPO)}: AUC {r['test']['auc']:.4f}{extra} epochs {r['epochs_run']} "
          f"{r['train']['samples_per_s']:,.0f}/s ({time.perf_counter() - t:.0f}s)", flush=True)
    return r


def _jobs(args, tasks):
    if args.jobs <= 1:
        for t in tasks:
            run_one(*t, force=args.force)
    else:
        with ThreadPoolExecutor(args.jobs) as ex:
            list(ex.map(lambda t: run_one(*t, force=args.force), tasks))


def accuracy(args) -> None:
    tasks = []
    for proto in args.protocols:
        ds = ensure_dataset(proto, args.data_root, args.untwine_python)
        for lib in args.libs:
            for model in args.models:
                for seed in args.seeds:
                    name = f"{proto}_{model}_{lib}_s{seed}"
                    out = RESULTS / "accuracy" / f"{name}.json"
                    cmd = [sys.executable, str(HERE / "run_peer.py"), "--lib", lib, "--model", model,
                           "--dataset", str(ds), "--seed", str(seed), "--out", str(out),
                           "--work-dir", str(WORK / "peers")]
                    tasks.append((cmd, out, WORK / "peers" / "logs" / "accuracy" / f"{name}.log"))
    _jobs(args, tasks)
    summarize_accuracy()


def throughput(args) -> None:
    tasks = []
    for key in args.sets:
        ds = ensure_dataset(key, args.data_root, args.untwine_python)
        has_numeric = key == "t1"
        for lib in args.libs:
            modes = SUPPORTS[lib] if has_numeric else (NATIVE[lib],)
            for model in args.models:
                for mode in modes:
                    for seed in args.seeds:
                        tag = f"_{mode}" if has_numeric else ""
                        name = f"{key}_{model}_{lib}{tag}_s{seed}"
                        out = RESULTS / "throughput" / f"{name}.json"
                        cmd = [sys.executable, str(HERE / "run_peer.py"), "--lib", lib, "--model", model,
                               "--dataset", str(ds), "--seed", str(seed), "--numerics", mode,
                               "--max-train-epochs", str(args.epochs), "--out", str(out),
                               "--work-dir", str(WORK / "peers")]
                        tasks.append((cmd, out, WORK / "peers" / "logs" / "throughput" / f"{name}.log"))
    _jobs(args, tasks)  # --jobs 1 is the default: parallel runs would share the 2 cores
    summarize_throughput()


def _load(folder: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))]


def _ms(xs: list[float], digits: int = 4) -> str:
    xs = [x for x in xs if x is not None and not np.isnan(x)]
    if not xs:
        return "—"
    if len(xs) == 1:
        return f"{xs[0]:.{digits}f}"
    return f"{np.mean(xs):.{digits}f} ± {np.std(xs, ddof=1):.{digits}f}"


def summarize_accuracy() -> Path | None:
    runs = _load(RESULTS / "accuracy")
    if not runs:
        return None
    groups: dict[tuple, list[dict]] = {}
    for r in runs:
        groups.setdefault((r["dataset"]["protocol"], r["model"], r["lib"]), []).append(r)
    libs = [lib for lib in LIB_NAMES if any(k[2] == lib for k in groups)]
    protos = sorted({k[0] for k in groups})
    lines = ["# Peer libraries: accuracy", "",
             "Written by `benchmarks/peers/run_all.py` from the JSONs in `accuracy/` (one per run). Test metrics "
             "are computed by the harness from each library's test predictions (tie-aware AUC; GAUC weights "
             "users by impressions and skips one-class users). mean ± std over model seeds; std is the sample "
             "std (ddof 1). Training defaults of PROTOCOLS.md; see `benchmarks/peers/README.md`.", "",
             "## Test AUC, side by side (reference: PROTOCOLS.md, seeds 2024-2026)", "",
             "| protocol | model | " + " | ".join(f"{LIB_NAMES[lib]}" for lib in libs) + " | "
             + " | ".join(f"ref {LIB_NAMES[lib]}" for lib in libs) + " |",
             "|---|---|" + "---|" * (2 * len(libs))]
    for proto in protos:
        for model in MODEL_NAMES:
            cells, refs = [], []
            for lib in libs:
                rs = groups.get((proto, model, lib), [])
                cells.append(_ms([r["test"]["auc"] for r in rs]) + (f" (n={len(rs)})" if rs and len(rs) != 3 else ""))
                ref = REFERENCE_AUC.get((proto, model), {}).get(lib)
                refs.append(f"{ref[0]:.4f} ± {ref[1]:.4f}" if ref else "—")
            if any(c != "—" for c in cells):
                lines.append(f"| {proto} | {MODEL_NAMES[model]} | " + " | ".join(cells) + " | " + " | ".join(refs) + " |")
    lines += ["", "## All metrics", "",
              "| protocol | model | library | seeds | test AUC | logloss | GAUC | epochs run | best epoch | "
              "Δ AUC vs ref (in ref std) |", "|---|---|---|---|---|---|---|---|---|---|"]
    for proto in protos:
        for model in MODEL_NAMES:
            for lib in libs:
                rs = groups.get((proto, model, lib))
                if not rs:
                    continue
                aucs = [r["test"]["auc"] for r in rs]
                ref = REFERENCE_AUC.get((proto, model), {}).get(lib)
                delta = "—"
                if ref:
                    d = np.mean(aucs) - ref[0]
                    delta = f"{d:+.4f} ({d / ref[1]:+.1f})" if ref[1] else f"{d:+.4f}"
                seeds = ",".join(str(r["seed"]) for r in sorted(rs, key=lambda r: r["seed"]))
                lines.append(
                    f"| {proto} | {MODEL_NAMES[model]} | {LIB_NAMES[lib]} | {seeds} | {_ms(aucs)} | "
                    f"{_ms([r['test']['logloss'] for r in rs])} | {_ms([r['test'].get('gauc') for r in rs])} | "
                    f"{_ms([r['epochs_run'] for r in rs], 1)} | {_ms([r['best_epoch'] for r in rs], 1)} | {delta} |")
    skipped = {(r["dataset"]["protocol"], r["test"].get("groups_skipped"), r["test"].get("groups_used"))
               for r in runs if "gauc" in r["test"]}
    for proto, sk, used in sorted(skipped):
        lines.append(f"\nGAUC on {proto}: {used} users used, {sk} one-class users skipped (test split).")
    m = runs[0]["machine"]
    v = runs[0]["versions"]
    vers = sorted({(r["lib_name"], r["versions"].get({"fuxictr": "fuxictr", "deepctr": "deepctr-torch",
                                                     "rechub": "torch-rechub"}[r["lib"]])) for r in runs})
    lines += ["", f"Machine: {m['nproc']} cores, {m['cpu_model']}, torch {v['torch']} with "
                  f"{m['torch_threads']} threads; " + ", ".join(f"{n} {ver}" for n, ver in vers) + "."]
    path = RESULTS / "accuracy.md"
    path.write_text("\n".join(lines) + "\n")
    print(f"wrote {path.relative_to(REPO)}")
    return path


def summarize_throughput() -> Path | None:
    runs = _load(RESULTS / "throughput")
    if not runs:
        return None
    lines = ["# Peer libraries: training throughput", "",
             "Written by `benchmarks/peers/run_all.py throughput`. Training samples/s over pure training epochs "
             "(evaluation excluded, each epoch timed separately); peak RSS of the run's process and, for FuxiCTR, "
             "of its whole process tree (Ray workers included, sampled every 0.5 s). Timings are only as good as the "
             "machine was quiet: see the load averages. Reference: PROTOCOLS.md.", "",
             "| set | model | library | numerics | batch | epochs | samples/s | reference | peak RSS MB (self / tree) | "
             "data prep s | load avg start→end |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    key = lambda r: (r["dataset"]["protocol"] or "", r["model"], list(LIB_NAMES).index(r["lib"]), r["numerics"] or "")
    for r in sorted(runs, key=key):
        proto = r["dataset"]["protocol"]
        ref = REFERENCE_SPS.get((proto, r["model"]), {}).get(r["lib"], "—")
        t = r["timings"]
        prep = t.get("build_s", t.get("prepare_s"))
        prep_s = f"{prep:.1f}" + (" (FuxiCTR build" + (", cached)" if t.get("build_reused") else ")")
                                  if "build_s" in t else "")
        rss = r["peak_rss"]
        la = r["machine"]
        lines.append(
            f"| {proto} | {MODEL_NAMES[r['model']]} | {r['lib_name']} | {r['numerics'] or '—'} | "
            f"{r['config']['batch_size']} | {r['epochs_run']} | {r['train']['samples_per_s']:,.0f} | {ref} | "
            f"{rss['self_mb']:.0f} / {rss.get('tree_peak_sampled_mb', 0):.0f} | {prep_s} | "
            f"{la['loadavg_start'][0]:.1f}→{la['loadavg_end'][0]:.1f} |")
    path = RESULTS / "throughput.md"
    path.write_text("\n".join(lines) + "\n")
    print(f"wrote {path.relative_to(REPO)}")
    return path


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("mode", choices=["accuracy", "throughput", "summary"])
    ap.add_argument("--libs", nargs="+", default=None, choices=list(LIB_NAMES))
    ap.add_argument("--models", nargs="+", default=None, choices=list(MODEL_NAMES))
    ap.add_argument("--protocols", nargs="+", default=["p1", "p2"], help="accuracy: datasets (recipe keys)")
    ap.add_argument("--sets", nargs="+", default=["t1", "p1"], help="throughput: datasets (recipe keys)")
    ap.add_argument("--seeds", nargs="+", type=int, default=None)
    ap.add_argument("--epochs", type=int, default=1, help="throughput: training epochs per run")
    ap.add_argument("--jobs", type=int, default=1, help="runs at once (accuracy only; keep 1 for timings)")
    ap.add_argument("--force", action="store_true", help="rerun even if the result JSON exists")
    ap.add_argument("--data-root", type=Path, default=WORK)
    ap.add_argument("--untwine-python", default=str(REPO / ".venv" / "bin" / "python"))
    args = ap.parse_args(argv)
    if args.mode == "accuracy":
        args.libs = args.libs or ["fuxictr", "deepctr"]
        args.models = args.models or ["dnn", "deepfm", "dcnv2"]
        args.seeds = args.seeds or [1, 2, 3]
        accuracy(args)
    elif args.mode == "throughput":
        args.libs = args.libs or ["fuxictr", "deepctr"]
        args.models = args.models or ["dcnv2", "dnn"]
        args.seeds = args.seeds or [1]
        if args.jobs != 1:
            print("note: --jobs > 1 makes throughput runs share the cores", file=sys.stderr)
        throughput(args)
    else:
        summarize_accuracy()
        summarize_throughput()
    return 0


if __name__ == "__main__":
    sys.exit(main())
