"""The serving load test at concurrency 8 for two ranking formats, interleaved (issue 7): bf16 then int8, N
rounds, each run with its own server, so a drifting machine slows both alike.

    python benchmarks/serving.py --build-only --precision bf16    # the bundles, once each
    python benchmarks/serving.py --build-only --precision int8
    python benchmarks/serving_precision_ab.py [--rounds 3] [--duration 20]

Writes benchmarks/results/serving/precision_ab_<isa>.md and .json.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, machine, write_json  # noqa: E402
from serving import REPO, REQUESTS, RUNS, bundle_path  # noqa: E402

BUNDLES = {name: bundle_path(name) for name in ("bf16", "int8")}


def load_test(bundle: Path, duration: float, out: Path) -> dict:
    subprocess.run([sys.executable, "benchmarks/loadtest.py", "--bundle", str(bundle), "--requests", str(REQUESTS),
                    "--duration", str(duration), "--processes", "2", "--concurrency", "8", "--out", str(out)],
                   check=True, cwd=REPO)
    return json.loads((out / "loadtest.json").read_text())["runs"][0]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--duration", type=float, default=20.0)
    args = ap.parse_args()
    import torch

    for name, bundle in BUNDLES.items():
        got = json.loads((bundle / "pipeline.json").read_text())["rank_precision"]
        if got != name:
            raise SystemExit(f"{bundle} ranks in {got}, not {name}: python benchmarks/serving.py --build-only --precision {name}")
    isa = torch.backends.cpu.get_cpu_capability().lower()
    work = RUNS / "precision_ab"
    runs: dict[str, list[dict]] = {name: [] for name in BUNDLES}
    for r in range(args.rounds):
        for name, bundle in BUNDLES.items():
            runs[name].append(load_test(bundle, args.duration, work / f"{name}_{r + 1}"))
    lines = ["# Serving at concurrency 8: bf16 against int8 ranking, interleaved", "",
             f"`python benchmarks/serving_precision_ab.py --rounds {args.rounds} --duration {args.duration:g}`", "",
             f"Machine: {json.dumps(machine())}. The serving benchmark's bundles (100,000 ads, DCN-V2 ranking 500 "
             "candidates, `--processes 2`, wrk on the same cores), differing only in `rank_precision`; rounds "
             "alternate bf16 and int8, each with its own server.", "",
             "| round | format | QPS | p50 ms | p90 ms | p99 ms | errors | server: mean rank ms | server: mean funnel ms |",
             "|---:|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in range(args.rounds):
        for name in BUNDLES:
            x = runs[name][r]
            lat, stages = x["latency_ms"], x["server"]["mean_stage_ms"]
            lines.append(f"| {r + 1} | {name} | {x['qps']:.1f} | {lat['p50']:.2f} | {lat['p90']:.2f} | {lat['p99']:.2f} | "
                         f"{x['non_2xx'] + x['socket_errors']} | {stages['rank']:.2f} | {stages['total']:.2f} |")
    lines += ["", "| format | median QPS | median p99 ms | best p99 ms |", "|---|---:|---:|---:|"]
    for name, xs in runs.items():
        lines.append(f"| {name} | {statistics.median(x['qps'] for x in xs):.1f} | "
                     f"{statistics.median(x['latency_ms']['p99'] for x in xs):.2f} | {min(x['latency_ms']['p99'] for x in xs):.2f} |")
    out = RESULTS / "serving" / f"precision_ab_{isa}.md"
    out.write_text("\n".join(lines) + "\n")
    write_json(out.with_suffix(".json"), {"machine": machine(), "runs": runs})
    print("\n".join(lines))


if __name__ == "__main__":
    main()
