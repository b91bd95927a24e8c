"""The serving benchmark of issue 7: a 100,000-ad simulated world, the foundation's DCN-V2 as the ranker,
the recall run (two-tower + ItemCF + Swing + popularity), one bundle, then the HTTP load test.

    python benchmarks/serving.py                  # build what is missing, then load-test (wrk, 20 s per level)
    python benchmarks/serving.py --duration 10 --concurrency 1 8

Steps (each skipped when its output exists; --rebuild redoes them):
  1. untwine simulate runs/sim100k --set n_ads=100000         (1M impressions, 100,000-ad catalogue)
  2. untwine train configs/serving/sim100k_dcnv2.yaml          -> runs/serving/sim100k-dcnv2
  3. untwine recall configs/serving/sim100k_recall.yaml        -> runs/serving/sim100k-recall
  4. untwine export ... -o runs/serving/bundle-sim100k          (HNSW index, 1000 recalled, 500 ranked, 20 shown)
  5. request bodies from the test split's impressions (user, context, the impression's click history)
  6. benchmarks/loadtest.py --reload-during                     -> benchmarks/results/serving/loadtest.{md,json}
"""
from __future__ import annotations

import argparse
import json
import shutil
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
    ap.add_argument("--precision", default="bf16", choices=["fp32", "bf16"], help="ranking forward (rank_export.md)")
    ap.add_argument("--funnel-threads", type=int, default=None)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    if args.rebuild or not (SIM / "items.parquet").exists():
        sh(UNTWINE, "simulate", str(SIM), "--set", "n_ads=100000")
    rank, recall = RUNS / "sim100k-dcnv2", RUNS / "sim100k-recall"
    if args.rebuild or not (rank / "result.json").exists():
        sh(UNTWINE, "train", "configs/serving/sim100k_dcnv2.yaml", "train.threads=2", "train.progress=false",
           "--run-dir", str(rank), "--no-resume")
    if args.rebuild or not (recall / "result.json").exists():
        sh(UNTWINE, "recall", "configs/serving/sim100k_recall.yaml", "train.threads=2", "train.progress=false",
           "--run-dir", str(recall))
    if args.rebuild or not (BUNDLE / "manifest.json").exists():
        sh(UNTWINE, "export", str(recall), str(rank), "-o", str(BUNDLE), "--set", f"index.kind={args.index}",
           "--set", "recall_total=1000", "--set", "prerank_size=500", "--set", f"rerank.k={args.k}",
           "--set", "rerank.depth=50", "--set", f"rank_precision={args.precision}")
    REQUESTS.write_text(json.dumps(request_bodies(args.requests, args.k)))
    second = RUNS / "bundle-sim100k-b"  # the reload swaps in a second copy (same content, another path)
    if second.exists():
        shutil.rmtree(second)
    shutil.copytree(BUNDLE, second)
    cmd = [sys.executable, "benchmarks/loadtest.py", "--bundle", str(BUNDLE), "--requests", str(REQUESTS),
           "--duration", str(args.duration), "--concurrency", *map(str, args.concurrency),
           "--reload-during", "--reload-bundle", str(second)]
    if args.funnel_threads:
        cmd += ["--funnel-threads", str(args.funnel_threads)]
    if args.out:
        cmd += ["--out", str(args.out)]
    sh(*cmd)


if __name__ == "__main__":
    main()
