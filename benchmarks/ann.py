"""ANN index recall against speed for the embedding recall channels (issue 7): untwine.retrieval.VectorIndex
(faiss) on a seeded Gaussian mixture on the unit sphere, the goal being recall@100 >= 0.95 of exact search
at >= 5x its QPS on 100k items.

    python benchmarks/ann.py [--items 100000] [--dim 64 32] [--queries 2000] [--threads 1 2] [--out DIR]

Items: 500 clusters of unequal size (Zipf-like weights) and unequal spread around random unit centres,
L2-normalised; queries are drawn from the same mixture (user vectors sit near the item clusters they like).
Reference: exact inner-product search (flat) top-100. For IVF-Flat (nlist 256, 1024; nprobe sweep), IVF-PQ
(nlist 1024, d/4 bytes a vector) and HNSW (M 16, 32; efSearch sweep): recall@100 (mean |ANN & exact| / 100),
QPS of ``VectorIndex.search`` over all queries in batches of ``--batch`` (best of up to 3 passes, wall clock),
build time (at the largest thread count), index bytes (``to_bytes()``). A sweep stops once recall reaches
0.999. The runtime parameter reaches each index through ``VectorIndex.from_bytes``, as a served bundle loads it.

The machine is shared with other jobs, so one exact measurement can be several times off. Exact search is
therefore timed again before every index configuration and at the end ("checkpoints"); ratios over exact use
the median checkpoint at the same thread count, and the report shows the checkpoints' range.

Operating point per thread count: the fastest configuration with recall@100 >= 0.95, its QPS ratio over exact
and its single-query latency p50/p99 (queries one at a time, as a request handler with one thread sends them).

Writes DIR/ann.md, DIR/ann.json and DIR/ann_recall_qps.png (DIR defaults to benchmarks/results/retrieval).
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, machine, write_json  # noqa: E402

RECALL_GOAL = 0.95
QPS_GOAL = 5.0
SATURATED = 0.999  # recall beyond which a longer sweep only measures a slower exact search
SCOPES = ("ivf_flat", "ivf_pq", "hnsw", "any")


def mixture(n_items: int, n_queries: int, dim: int, clusters: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Items and queries from one Gaussian mixture on the unit sphere (float32, unit norm)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dim))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    # categories differ in size and in how tight they are, as item catalogues do
    weights = 1.0 / np.arange(1, clusters + 1) ** 0.7
    weights /= weights.sum()
    spread = rng.uniform(0.6, 1.4, size=clusters)  # norm of the within-cluster noise, relative to the centre

    def draw(m: int) -> np.ndarray:
        c = rng.choice(clusters, size=m, p=weights)
        x = centres[c] + spread[c, None] / np.sqrt(dim) * rng.standard_normal((m, dim))
        return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)

    return draw(n_items), draw(n_queries)


def recall_at(found: np.ndarray, exact: np.ndarray) -> float:
    """Mean |found & exact| / k per query (padding -1 never matches)."""
    k = exact.shape[1]
    hits = [np.intersect1d(f[f >= 0], e, assume_unique=True).size for f, e in zip(found, exact)]
    return float(np.mean(hits)) / k


def batch_qps(index, queries: np.ndarray, k: int, batch: int, passes: int = 3) -> tuple[dict, np.ndarray]:
    """Queries per second over all queries in batches, and the result ids.

    The fastest of up to ``passes`` passes (the least disturbed on a shared machine); passes stop after 3 s
    so slow configurations do not cost minutes. Also the process CPU time, for the JSON: at 1 thread it tells
    a pass slowed by other jobs (wall >> CPU) from a slow configuration."""
    wall, cpu, ids, spent = float("inf"), float("inf"), None, 0.0
    for _ in range(passes):
        w0, c0 = time.perf_counter(), time.process_time()
        parts = [index.search(queries[i:i + batch], k)[1] for i in range(0, len(queries), batch)]
        elapsed, used = time.perf_counter() - w0, time.process_time() - c0
        wall, cpu, ids, spent = min(wall, elapsed), min(cpu, used), np.concatenate(parts), spent + elapsed
        if spent > 3.0:
            break
    return {"qps": len(queries) / wall, "queries_per_cpu_s": len(queries) / max(cpu, 1e-9)}, ids


def single_query_latency_ms(index, queries: np.ndarray, k: int) -> dict:
    times = np.empty(len(queries))
    for i in range(len(queries)):
        t0 = time.perf_counter()
        index.search(queries[i:i + 1], k)
        times[i] = time.perf_counter() - t0
    return {"p50_ms": float(np.percentile(times, 50) * 1e3), "p99_ms": float(np.percentile(times, 99) * 1e3),
            "queries": len(queries)}


def sweeps(dim: int, nprobes: list[int], efs: list[int], ef_construction: int) -> list[dict]:
    """Index configurations: the structural part of IndexConfig plus the swept runtime parameter."""
    out = [{"label": f"IVF{nlist},Flat", "kind": "ivf_flat", "config": {"kind": "ivf_flat", "nlist": nlist},
            "param": "nprobe", "values": [p for p in nprobes if p <= nlist]} for nlist in (256, 1024)]
    out.append({"label": f"IVF1024,PQ{dim // 4}", "kind": "ivf_pq",
                "config": {"kind": "ivf_pq", "nlist": 1024, "pq_m": dim // 4},
                "param": "nprobe", "values": nprobes})
    out += [{"label": f"HNSW{m}", "kind": "hnsw",
             "config": {"kind": "hnsw", "m": m, "ef_construction": ef_construction},
             "param": "ef_search", "values": efs} for m in (16, 32)]
    return out


def run_dim(dim: int, a: argparse.Namespace, progress) -> dict:
    import faiss

    from untwine.retrieval.index import IndexConfig, VectorIndex

    items, queries = mixture(a.items, a.queries, dim, a.clusters, a.seed)
    latency_queries = queries[:a.latency_queries]
    build_threads = max(a.threads)
    faiss.omp_set_num_threads(build_threads)
    t0 = time.perf_counter()
    exact_index = VectorIndex(IndexConfig(kind="flat")).build(items)
    exact = {"build_s": time.perf_counter() - t0, "bytes": int(exact_index.to_bytes().size),
             "checkpoints": {t: [] for t in a.threads}, "latency": {}}

    def checkpoint(passes: int = 1) -> np.ndarray:
        ids = None
        for threads in a.threads:
            faiss.omp_set_num_threads(threads)
            timing, found = batch_qps(exact_index, queries, a.k, a.batch, passes)
            exact["checkpoints"][threads].append(timing)
            ids = found if ids is None else ids
            progress.set_postfix_str(f"d={dim} exact {threads}t {timing['qps']:,.0f} q/s")
        return ids

    exact_ids = checkpoint(passes=3)
    for threads in a.threads:
        faiss.omp_set_num_threads(threads)
        exact["latency"][threads] = single_query_latency_ms(exact_index, latency_queries, a.k)
    # the reference must be exact: numpy's float32 scores rank the same top-k
    numpy_top = np.argsort(-(queries[:50] @ items.T), axis=1)[:, :a.k]
    assert recall_at(exact_ids[:50], numpy_top) > 0.999

    results, buffers = [], {}
    for spec in sweeps(dim, a.nprobe, a.ef_search, a.ef_construction):
        if results:
            checkpoint()
        faiss.omp_set_num_threads(build_threads)
        progress.set_postfix_str(f"d={dim} building {spec['label']}")
        t0 = time.perf_counter()
        index = VectorIndex(IndexConfig(**spec["config"])).build(items)
        build_s = time.perf_counter() - t0
        buffers[spec["label"]] = buf = index.to_bytes()
        del index
        entry = {**{k: v for k, v in spec.items() if k != "values"}, "build_s": build_s,
                 "build_threads": build_threads, "bytes": int(buf.size), "points": []}
        for value in spec["values"]:
            tuned = VectorIndex.from_bytes(buf, IndexConfig(**spec["config"], **{spec["param"]: value}))
            point = {spec["param"]: value, "timing": {}}
            for threads in a.threads:
                faiss.omp_set_num_threads(threads)
                timing, ids = batch_qps(tuned, queries, a.k, a.batch)
                point["timing"][threads] = timing
                point.setdefault("recall", recall_at(ids, exact_ids))
                progress.set_postfix_str(f"d={dim} {spec['label']} {spec['param']}={value} {threads}t "
                                         f"recall {point['recall']:.3f} {timing['qps']:,.0f} q/s")
            entry["points"].append(point)
            progress.update(1)
            if point["recall"] >= SATURATED:
                break
        progress.update(len(spec["values"]) - len(entry["points"]))
        results.append(entry)
    checkpoint()

    exact["qps"] = {t: statistics.median(c["qps"] for c in exact["checkpoints"][t]) for t in a.threads}
    for entry in results:
        for point in entry["points"]:
            point["qps"] = {t: point["timing"][t]["qps"] for t in a.threads}
            point["ratio_over_exact"] = {t: point["qps"][t] / exact["qps"][t] for t in a.threads}

    operating = {}
    for threads in a.threads:
        faiss.omp_set_num_threads(threads)
        operating[threads] = {}
        for scope in SCOPES:
            candidates = [(entry, point) for entry in results if scope in ("any", entry["kind"])
                          for point in entry["points"] if point["recall"] >= RECALL_GOAL]
            if not candidates:
                operating[threads][scope] = None
                continue
            entry, point = max(candidates, key=lambda c: c[1]["qps"][threads])
            config = {**entry["config"], entry["param"]: point[entry["param"]]}
            index = VectorIndex.from_bytes(buffers[entry["label"]], IndexConfig(**config))
            operating[threads][scope] = {
                "label": entry["label"], "config": config, "recall": point["recall"], "qps": point["qps"][threads],
                "ratio_over_exact": point["ratio_over_exact"][threads],
                "latency": single_query_latency_ms(index, latency_queries, a.k)}
    return {"dim": dim, "items": len(items), "exact": exact, "indexes": results, "operating": operating}


def fmt_qps(x: float) -> str:
    return f"{x:,.0f}"


def plural(threads: int) -> str:
    return f"{threads} thread{'s' * (threads > 1)}"


def report(runs: list[dict], meta: dict, a: argparse.Namespace) -> list[str]:
    threads = a.threads
    lines = ["# ANN index: recall@100 against QPS (issue 7)", "",
             f"`{meta['command']}`", "",
             f"Machine: {meta['machine']['cpu']}, {meta['machine']['cores']} cores, shared with other jobs "
             f"(1-minute load average {meta['load_average'][0]:.2f} at the start, {meta['load_average_end'][0]:.2f} "
             f"at the end); Python {meta['machine']['python']}, faiss {meta['faiss']}, numpy {meta['numpy']}. "
             f"Total time {meta['seconds']:.0f} s.", "",
             f"Data: {a.items:,} items and {a.queries:,} queries from one Gaussian mixture on the unit sphere "
             f"({a.clusters} clusters, Zipf-like sizes, within-cluster noise norm uniform in [0.6, 1.4], seed "
             f"{a.seed}), L2-normalised; inner-product metric. Reference: exact flat search top-{a.k}; "
             f"recall@{a.k} = mean |ANN & exact| / {a.k}. QPS: `VectorIndex.search` over all queries in batches "
             f"of {a.batch}, wall clock, best of up to 3 passes. Exact search is timed again before every index "
             "configuration and at the end; \"x exact\" divides by the median of those checkpoints at the same "
             f"thread count. Build at {max(threads)} threads. A sweep stops once recall reaches {SATURATED}. "
             f"Latency: one query per call over the first {a.latency_queries:,} queries.", ""]
    for run in runs:
        exact = run["exact"]
        lines += [f"## d = {run['dim']}", ""]
        parts = []
        for t in threads:
            seen = [c["qps"] for c in exact["checkpoints"][t]]
            parts.append(f"{plural(t)} {fmt_qps(exact['qps'][t])} q/s (median of {len(seen)} checkpoints, range "
                         f"{fmt_qps(min(seen))} to {fmt_qps(max(seen))}), single query p50 / p99 "
                         f"{exact['latency'][t]['p50_ms']:.2f} / {exact['latency'][t]['p99_ms']:.2f} ms")
        lines += ["Exact (flat): " + "; ".join(parts) + f"; {exact['bytes'] / 2**20:.1f} MiB.", ""]
        for kind, title in (("ivf_flat", "IVF-Flat"), ("ivf_pq", "IVF-PQ"), ("hnsw", "HNSW")):
            entries = [e for e in run["indexes"] if e["kind"] == kind]
            if not entries:
                continue
            param = entries[0]["param"]
            head = " | ".join(f"q/s {t}t | x exact {t}t" for t in threads)
            lines += [f"### {title}", "", f"| index | {param} | recall@{a.k} | {head} | build s | MiB |",
                      "|---|---|---|" + "---|---|" * len(threads) + "---|---|"]
            for e in entries:
                for p in e["points"]:
                    cells = " | ".join(f"{fmt_qps(p['qps'][t])} | {p['ratio_over_exact'][t]:.1f}x" for t in threads)
                    lines.append(f"| {e['label']} | {p[param]} | {p['recall']:.4f} | {cells} | "
                                 f"{e['build_s']:.1f} | {e['bytes'] / 2**20:.1f} |")
            lines.append("")
        lines += [f"### Operating points (fastest with recall@{a.k} >= {RECALL_GOAL})", "",
                  f"| threads | scope | index | setting | recall@{a.k} | q/s | x exact (median) | x exact (fastest) | "
                  f"single-query p50 / p99 ms | goal ({RECALL_GOAL}, {QPS_GOAL:.0f}x) against median / fastest |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for t in threads:
            for scope, chosen in run["operating"][t].items():
                if chosen is None:
                    lines.append(f"| {t} | {scope} | none reaches {RECALL_GOAL} | | | | | | | no |")
                    continue
                param = "nprobe" if "nprobe" in chosen["config"] else "ef_search"
                # against the fastest exact checkpoint: the ratio's lower bound on a noisy machine
                fastest = chosen["qps"] / max(c["qps"] for c in exact["checkpoints"][t])
                met = " / ".join("yes" if r >= QPS_GOAL else "no" for r in (chosen["ratio_over_exact"], fastest))
                lines.append(f"| {t} | {scope} | {chosen['label']} | {param}={chosen['config'][param]} | "
                             f"{chosen['recall']:.4f} | {fmt_qps(chosen['qps'])} | {chosen['ratio_over_exact']:.1f}x | "
                             f"{fastest:.1f}x | {chosen['latency']['p50_ms']:.3f} / "
                             f"{chosen['latency']['p99_ms']:.3f} | {met} |")
        lines.append("")
    lines += ["![recall@100 against QPS](ann_recall_qps.png)", ""]
    return lines


def plot(runs: list[dict], threads: list[int], k: int, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(runs), figsize=(7.5 * len(runs), 6), squeeze=False)
    styles = dict(zip(threads, ["-", "--", ":", "-."]))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, run in zip(axes[0], runs):
        for i, e in enumerate(run["indexes"]):
            for t in threads:
                ax.plot([p["recall"] for p in e["points"]], [p["qps"][t] for p in e["points"]], styles[t],
                        marker="o", ms=3, color=colours[i % len(colours)], label=f"{e['label']} ({plural(t)})")
        for t in threads:
            ax.axhline(run["exact"]["qps"][t], color="black", ls=styles[t], lw=1, label=f"exact ({plural(t)})")
        ax.axvline(RECALL_GOAL, color="grey", lw=0.8)
        ax.set_yscale("log")
        ax.set_xlabel(f"recall@{k} vs exact")
        ax.set_ylabel("queries / s (batched, wall clock)")
        ax.set_title(f"{run['items']:,} items, d = {run['dim']}")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7, loc="lower left", ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def rebuild_report(out: Path) -> None:
    """ann.md and the plot again from ann.json (JSON turned the thread-count keys into strings)."""

    def int_keys(obj):
        if isinstance(obj, dict):
            return {int(k) if isinstance(k, str) and k.isdigit() else k: int_keys(v) for k, v in obj.items()}
        if isinstance(obj, list):
            return [int_keys(v) for v in obj]
        return obj

    saved = int_keys(json.loads((out / "ann.json").read_text()))
    a = argparse.Namespace(**{**saved["args"], "out": out})
    for run in saved["runs"]:
        run.setdefault("items", a.items)
    plot(saved["runs"], a.threads, a.k, out / "ann_recall_qps.png")
    (out / "ann.md").write_text("\n".join(report(saved["runs"], saved, a)) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--items", type=int, default=100_000)
    ap.add_argument("--dim", type=int, nargs="+", default=[64])
    ap.add_argument("--queries", type=int, default=2_000)
    ap.add_argument("--out", type=Path, default=RESULTS / "retrieval")
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--k", type=int, default=100)
    ap.add_argument("--batch", type=int, default=256, help="queries per search call")
    ap.add_argument("--latency-queries", type=int, default=1_000)
    ap.add_argument("--clusters", type=int, default=500)
    ap.add_argument("--nprobe", type=int, nargs="+", default=[1, 2, 4, 8, 16, 32, 64, 128])
    ap.add_argument("--ef-search", type=int, nargs="+", default=[16, 32, 64, 128, 256, 512])
    ap.add_argument("--ef-construction", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--report", action="store_true", help="only rebuild ann.md and the plot from --out/ann.json")
    a = ap.parse_args()
    if a.report:
        rebuild_report(a.out)
        return
    import faiss
    from tqdm import tqdm

    t0 = time.perf_counter()
    meta = {"command": "python benchmarks/ann.py " + shlex.join(sys.argv[1:]), "machine": machine(),
            "faiss": faiss.__version__, "numpy": np.__version__, "load_average": os.getloadavg()}
    total = sum(len(s["values"]) for d in a.dim for s in sweeps(d, a.nprobe, a.ef_search, a.ef_construction))
    with tqdm(total=total, desc="ann", unit="point") as progress:
        runs = [run_dim(d, a, progress) for d in a.dim]
    meta["seconds"] = time.perf_counter() - t0
    meta["load_average_end"] = os.getloadavg()
    a.out.mkdir(parents=True, exist_ok=True)
    write_json(a.out / "ann.json", {**meta, "args": {k: str(v) if isinstance(v, Path) else v
                                                     for k, v in vars(a).items()}, "runs": runs})
    plot(runs, a.threads, a.k, a.out / "ann_recall_qps.png")
    (a.out / "ann.md").write_text("\n".join(report(runs, meta, a)) + "\n")
    for run in runs:
        for t in a.threads:
            best = run["operating"][t]["any"]
            if best is None:
                print(f"d={run['dim']} {t}t: no configuration reaches recall@{a.k} {RECALL_GOAL}")
            else:
                print(f"d={run['dim']} {t}t: {best['label']} {best['config']} recall {best['recall']:.4f} "
                      f"{best['qps']:,.0f} q/s = {best['ratio_over_exact']:.1f}x exact")
    print(f"wrote {a.out}/ann.md in {meta['seconds']:.0f} s")


if __name__ == "__main__":
    main()
