"""P7 and P6 (PROTOCOLS.md): popularity, tags, cold start, ItemCF, Swing, two-tower and the merged funnel
list, full ranking; mean ± std over seeds (the two-tower's init and batch order; the item-based channels
are deterministic).

- P7: MovieLens 1M, all 3,883 movies ranked, train items excluded; Recall/NDCG@20/50/100.
- P6: Amazon Beauty leave-one-out, all 12,101 items ranked, every earlier item excluded; HR/NDCG@10/20
  (one target per user: HR@K = Recall@K).

    python benchmarks/retrieval.py --protocol p7 --seeds 2024 2025 2026   # runs untwine recall per seed
    python benchmarks/retrieval.py --protocol p6 --report                 # tables from the saved runs

Writes benchmarks/results/retrieval/<protocol>.md and .json; runs under runs/bench/<protocol>-recall-s*.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, machine, write_json  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
RUNS = REPO / "runs" / "bench"
OUT = RESULTS / "retrieval"
CHANNEL_ORDER = ["popularity", "tags", "coldstart", "itemcf", "swing", "two_tower", "merged"]


DESCRIPTION = {
    "p7": ("P7 recall-ml1m: full-ranking retrieval",
           "MovieLens 1M implicit pairs, per-user 80/10/10 split (PROTOCOLS.md P7). Every channel ranks all "
           "3,883 movies of movies.dat; the user's train items are excluded; metrics on the test items of "
           "each of the 6,040 users.", (20, 50, 100), "Recall"),
    "p6": ("P6 seq-beauty, retrieval form: full-ranking retrieval",
           "Amazon Beauty (S3-Rec), leave-one-out (PROTOCOLS.md P6). Every channel ranks all 12,101 items; all "
           "of the user's earlier items are excluded (the history's first item included); the target is the "
           "last item of each of the 22,363 users, so HR@K = Recall@K.", (10, 20), "HR"),
}


def run_seed(protocol: str, seed: int, threads: int) -> None:
    run_dir = RUNS / f"{protocol}-recall-s{seed}"
    cmd = [str(REPO / ".venv" / "bin" / "untwine"), "recall", str(REPO / "configs" / protocol / "recall.yaml"),
           f"train.seed={seed}", f"train.threads={threads}", "train.progress=false", "--run-dir", str(run_dir)]
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True)
    print(f"seed {seed}: {time.perf_counter() - t0:.0f}s", flush=True)


def report(protocol: str, seeds: list[int], threads: int) -> None:
    results = {}
    for seed in seeds:
        path = RUNS / f"{protocol}-recall-s{seed}" / "result.json"
        if path.exists():
            results[seed] = json.loads(path.read_text())
    if not results:
        raise SystemExit(f"no results under {RUNS}/{protocol}-recall-s*")
    title, text, ks, recall_name = DESCRIPTION[protocol]
    lines = [f"# {title} ({len(results)} seed(s): {sorted(results)})", "",
             text + " Mean ± std over seeds (item-based channels are deterministic: std 0).",
             "", "| channel | " + " | ".join(f"{recall_name}@{k} | NDCG@{k}" for k in ks) + " |",
             "|---|" + "---|---|" * len(ks)]
    summary, merged_line = {}, ""
    for name in CHANNEL_ORDER:
        rows = [r["test"][name] for r in results.values() if name in r["test"]]
        if not rows:
            continue
        summary[name] = {m: [r[m] for r in rows] for m in rows[0] if "@" in m}
        if name == "merged":  # one list of `total` candidates: only its recall at that length means anything
            total = next(int(k.split("@")[1]) for k in rows[0] if k.startswith("recall@"))
            merged_line = (f"Merged funnel list ({total} candidates by the quotas of the config, deduplicated): "
                           f"Recall@{total} {_ms([r[f'recall@{total}'] for r in rows])}, "
                           f"HitRate@{total} {_ms([r[f'hit_rate@{total}'] for r in rows])}.")
            continue
        cells = []
        for k in ks:
            cells += [_ms([r[f"recall@{k}"] for r in rows]), _ms([r[f"ndcg@{k}"] for r in rows])]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["", merged_line] if merged_line else []
    fits = {n: statistics.mean(r["fit_seconds"][n] for r in results.values() if n in r["fit_seconds"])
            for n in next(iter(results.values()))["fit_seconds"]}
    tt = [r["two_tower_fit"] for r in results.values() if "two_tower_fit" in r]
    lines += ["", "Fit time (s, mean over seeds): " + ", ".join(f"{n} {v:.1f}" for n, v in fits.items()) + ".",
              f"Two-tower best epoch {[t['best_epoch'] for t in tt]}, training "
              f"{statistics.mean(t['train_samples_per_s'] for t in tt):,.0f} samples/s." if tt else "",
              "", f"Config: `configs/{protocol}/recall.yaml`. Command: `python benchmarks/retrieval.py --protocol "
              f"{protocol} --seeds {' '.join(map(str, sorted(results)))} --threads {threads}`.",
              f"Machine: {machine()['cpu']}, {machine()['cores']} cores, {threads} torch thread(s) per run."]
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / f"{protocol}.md").write_text("\n".join(lines) + "\n")
    write_json(OUT / f"{protocol}.json", {"seeds": sorted(results), "test": summary, "fit_seconds": fits})
    print("\n".join(lines))


def _ms(xs: list[float]) -> str:
    if len(xs) == 1:
        return f"{xs[0]:.4f}"
    return f"{statistics.mean(xs):.4f} ± {statistics.stdev(xs):.4f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--protocol", choices=sorted(DESCRIPTION), default="p7")
    ap.add_argument("--seeds", type=int, nargs="+", default=[2024, 2025, 2026])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--report", action="store_true", help="only rebuild the tables from saved runs")
    args = ap.parse_args()
    if not args.report:
        for seed in args.seeds:
            run_seed(args.protocol, seed, args.threads)
    report(args.protocol, args.seeds, args.threads)


if __name__ == "__main__":
    main()
