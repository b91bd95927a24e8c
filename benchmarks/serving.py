"""The serving benchmark of issue 7: a 100,000-ad simulated world, the foundation's DCN-V2 as the ranker,
the recall run (two-tower + ItemCF + Swing + popularity), one bundle, then the HTTP load test.

    python benchmarks/serving.py                  # build what is missing, then load-test (wrk, 20 s per level)
    python benchmarks/serving.py --duration 10 --concurrency 1 8

Steps (each skipped when its output exists; --rebuild redoes them):
  1. untwine simulate runs/sim100k --set n_ads=100000         (1M impressions, 100,000-ad catalogue)
  2. untwine train configs/serving/sim100k_dcnv2.yaml          -> runs/serving/sim100k-dcnv2
  3. untwine recall configs/serving/sim100k_recall.yaml        -> runs/serving/sim100k-recall
  4. untwine export ... -o runs/serving/bundle-sim100k          (IVF index, 1000 recalled, 500 ranked, 20 shown)
  5. request bodies from the test split's impressions (user, context, the impression's click history)
  6. benchmarks/loadtest.py --processes 2 at concurrency 1 / 8 / 32 -> benchmarks/results/serving/loadtest.{md,json}
  7. the same at concurrency 8 with a reload to a second bundle    -> benchmarks/results/serving/reload/loadtest.{md,json}
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq

REPO = Path(__file__).resolve().parents[1]
UNTWINE = str(REPO / ".venv" / "bin" / "untwine")
SIM = REPO / "runs" / "sim100k"
RUNS = REPO / "runs" / "serving"
BUNDLE = RUNS / "bundle-sim100k"
REQUESTS = RUNS / "requests-sim100k.json"
USER_COLUMNS = ("user_id", "age", "gender", "city_tier", "hour", "weekday", "position", "impression_ts")


def bundle_path(precision: str) -> Path:
    """The benchmark's bundle for a ranking format: fp32 / bf16 (what ``auto`` picks) share the first name."""
    return BUNDLE if precision in ("auto", "bf16", "fp32") else RUNS / f"bundle-sim100k-{precision}"


def sh(*cmd: str) -> None:
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, cwd=REPO)


def request_bodies(n: int, k: int) -> list[dict]:
    """/recommend bodies from the first ``n`` test impressions with a non-empty history."""
    t = pq.read_table(SIM / "test.parquet", columns=[*USER_COLUMNS, "user_ext_vec", "hist_ad_id", "hist_ts"])
    bodies = []
    for row in t.slice(0, 20 * n).to_pylist():
        if not row["hist_ad_id"]:
            continue
        user = {c: str(row[c]) for c in USER_COLUMNS if c != "impression_ts"}
        user["impression_ts"] = int(row["impression_ts"])
        user["user_ext_vec"] = [round(float(x), 5) for x in row["user_ext_vec"]]
        user["hist_ts"] = [int(x) for x in row["hist_ts"].split("|")]
        bodies.append({"user": user, "history": row["hist_ad_id"].split("|"), "k": k})
        if len(bodies) == n:
            break
    return bodies


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rebuild", action="store_true")
    ap.add_argument("--requests", type=int, default=500)
    ap.add_argument("--k", type=int, default=20)
    ap.add_argument("--duration", type=float, default=20.0)
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    ap.add_argument("--index", default="ivf_flat", help="ANN index of the two-tower channel")
    ap.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "int8"],
                    help="ranking forward (rank_export.md, int8_scoring_*.md); auto: bf16 where train.precision "
                         "auto would pick it, else fp32")
    ap.add_argument("--funnel-threads", type=int, default=None)
    ap.add_argument("--processes", type=int, default=2, help="funnel worker processes of the server")
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--repeats", type=int, default=3, help="extra concurrency-8 runs (the machine is noisy)")
    ap.add_argument("--build-only", action="store_true", help="build the runs, bundles and requests, no load test")
    args = ap.parse_args()
    if args.precision == "auto":  # bf16 is emulated, slower than fp32, on CPUs without native bf16 (AVX2 only)
        from untwine.train.precision import resolve_precision

        choice = resolve_precision("auto")
        print(f"rank precision auto -> {choice.precision}: {choice.reason}", flush=True)
        args.precision = choice.precision
    if args.rebuild or not (SIM / "items.parquet").exists():
        sh(UNTWINE, "simulate", str(SIM), "--set", "n_ads=100000")
    rank, recall = RUNS / "sim100k-dcnv2", RUNS / "sim100k-recall"
    if args.rebuild or not (rank / "result.json").exists():
        sh(UNTWINE, "train", "configs/serving/sim100k_dcnv2.yaml", "train.threads=2", "train.progress=false",
           "--run-dir", str(rank), "--no-resume")
    if args.rebuild or not (recall / "result.json").exists():
        sh(UNTWINE, "recall", "configs/serving/sim100k_recall.yaml", "train.threads=2", "train.progress=false",
           "--run-dir", str(recall))
    bundle = bundle_path(args.precision)
    if args.rebuild or not (bundle / "manifest.json").exists():
        sh(UNTWINE, "export", str(recall), str(rank), "-o", str(bundle), "--set", f"index.kind={args.index}",
           "--set", "recall_total=1000", "--set", "prerank_size=500", "--set", f"rerank.k={args.k}",
           "--set", "rerank.depth=50", "--set", f"rank_precision={args.precision}")
    elif json.loads((bundle / "pipeline.json").read_text())["rank_precision"] != args.precision:
        raise SystemExit(f"{bundle} was exported with another rank_precision; pass --rebuild")
    REQUESTS.write_text(json.dumps(request_bodies(args.requests, args.k)))
    # the reload swaps in another bundle (re-ranking 40 deep instead of 50: another id, same models)
    second = bundle.with_name(bundle.name + "-b")
    if args.rebuild or not (second / "manifest.json").exists():
        sh(UNTWINE, "export", str(recall), str(rank), "-o", str(second), "--set", f"index.kind={args.index}",
           "--set", "recall_total=1000", "--set", "prerank_size=500", "--set", f"rerank.k={args.k}",
           "--set", "rerank.depth=40", "--set", f"rank_precision={args.precision}")
    if args.build_only:
        return
    out = args.out or REPO / "benchmarks" / "results" / "serving"
    base = [sys.executable, "benchmarks/loadtest.py", "--bundle", str(bundle), "--requests", str(REQUESTS),
            "--duration", str(args.duration), "--processes", str(args.processes)]
    if args.funnel_threads:
        base += ["--funnel-threads", str(args.funnel_threads)]
    sh(*base, "--concurrency", *map(str, args.concurrency), "--out", str(out))
    sh(*base, "--concurrency", "8", "--reload-during", "--reload-bundle", str(second), "--out", str(out / "reload"))
    rows = []
    for i in range(args.repeats):
        sh(*base, "--concurrency", "8", "--out", str(out / "repeats" / f"run{i + 1}"))
        run = json.loads((out / "repeats" / f"run{i + 1}" / "loadtest.json").read_text())["runs"][0]
        rows.append(run)
    if rows:
        lines = ["# Concurrency 8, repeated", "", f"{len(rows)} more runs of `benchmarks/loadtest.py --processes "
                 f"{args.processes} --concurrency 8 --duration {args.duration:g}` after the main table, same server "
                 f"settings (each run starts its own server).", "",
                 "| run | QPS | p50 ms | p90 ms | p99 ms | errors |", "|---:|---:|---:|---:|---:|---:|"]
        lines += [f"| {i + 1} | {r['qps']:.1f} | {r['latency_ms']['p50']:.2f} | {r['latency_ms']['p90']:.2f} | {r['latency_ms']['p99']:.2f} | "
                  f"{r['non_2xx'] + r['socket_errors']} |" for i, r in enumerate(rows)]
        (out / "repeats" / "repeats.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
