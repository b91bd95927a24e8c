"""Data preparation: untwine's encode (read, fit vocabularies, encode, cache) vs FuxiCTR's dataset build on T1,
and peak memory of encoding a 5-million-row CSV.

    python benchmarks/prepare_bench.py [--rows-5m 5000000] [--skip-5m] [--no-peers]

Each measurement runs in a fresh process with an empty cache; peak RSS is the process's ru_maxrss
(FuxiCTR: the sampled peak of its whole process tree, Ray workers included).
Results: benchmarks/results/prepare/prepare.json and prepare.md.
"""
from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import peak_rss_self_mb as peak_rss_mb, PY, RESULTS, ROOT, WORK, machine, run_json, write_json  # noqa: E402


def child(args) -> None:
    from untwine.core.dataset_spec import DatasetSpec
    from untwine.data.encode import prepare

    cache = Path(args.cache)
    shutil.rmtree(cache, ignore_errors=True)
    t0 = time.perf_counter()
    p = prepare(DatasetSpec.from_yaml(args.yaml), cache_dir=cache)
    seconds = time.perf_counter() - t0
    print(json.dumps({"seconds": seconds, "rows": p.rows, "peak_rss_mb": peak_rss_mb()}))


def make_big_csv(rows: int) -> Path:
    """T1-shaped CSV of ``rows`` training rows (written once, chunk by chunk from the recipe's parquet)."""
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    from untwine.data.recipes import prepare as recipe

    out = WORK / f"t1_{rows}"
    csv = out / "train.csv"
    if csv.exists():
        return out / "dataset_csv.yaml"
    yaml_path = recipe("t1", out, train=rows, eval=1000)
    pf = pq.ParquetFile(out / "train.parquet") if (out / "train.parquet").exists() else None
    src = pf or pq.ParquetFile(next(out.rglob("train.parquet")))
    with pacsv.CSVWriter(csv, src.schema_arrow) as w:
        for rb in src.iter_batches(262_144):
            w.write_batch(rb)
    import yaml

    spec = yaml.safe_load(Path(yaml_path).read_text())
    spec.update({"name": f"t1-csv-{rows}", "format": "csv", "train": [str(csv)], "valid": [], "test": []})
    (out / "dataset_csv.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    return out / "dataset_csv.yaml"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--child", action="store_true")
    ap.add_argument("--yaml")
    ap.add_argument("--cache")
    ap.add_argument("--rows-5m", type=int, default=5_000_000)
    ap.add_argument("--skip-5m", action="store_true")
    ap.add_argument("--no-peers", action="store_true")
    args = ap.parse_args()
    if args.child:
        return child(args)
    from untwine.data.recipes import prepare as recipe

    t1_yaml = recipe("t1", WORK / "t1")
    res = {"machine": machine()}
    res["untwine_t1"] = run_json([PY, __file__, "--child", "--yaml", str(t1_yaml), "--cache", str(WORK / "cache_bench")])
    print("untwine T1:", res["untwine_t1"], flush=True)
    venv_py = ROOT / "peers" / ".venv" / "bin" / "python"
    if not args.no_peers and venv_py.exists():
        out = WORK / "fuxictr_build.json"
        subprocess.run([str(venv_py), str(ROOT / "peers" / "run_peer.py"), "--lib", "fuxictr", "--model", "dnn",
                        "--dataset", str(t1_yaml.parent), "--seed", "1", "--numerics", "embedded", "--rebuild",
                        "--max-train-epochs", "1", "--quiet", "--out", str(out)], check=True, capture_output=True)
        r = json.loads(out.read_text())
        res["fuxictr_t1"] = {"seconds": r["timings"]["build_s"] + r["timings"].get("stage_s", 0),
                             "peak_rss_mb": r["timings"].get("build_peak_tree_rss_mb"), "timings": r["timings"]}
        print("FuxiCTR T1 build:", res["fuxictr_t1"]["seconds"], res["fuxictr_t1"]["peak_rss_mb"], flush=True)
    if not args.skip_5m:
        big = make_big_csv(args.rows_5m)
        res["untwine_csv_5m"] = run_json([PY, __file__, "--child", "--yaml", str(big), "--cache", str(WORK / "cache_5m")])
        print("untwine 5M CSV:", res["untwine_csv_5m"], flush=True)
        shutil.rmtree(WORK / "cache_5m", ignore_errors=True)
    write_json(RESULTS / "prepare" / "prepare.json", res)
    u, f = res["untwine_t1"], res.get("fuxictr_t1")
    lines = ["# Data preparation (`python benchmarks/prepare_bench.py`)", "", f"Machine: {json.dumps(res['machine'])}", "",
             "| what | seconds | peak RSS MB |", "|---|---|---|",
             f"| untwine: T1 read + fit vocabularies + encode + cache (1.1M rows, parquet) | {u['seconds']:.1f} | {u['peak_rss_mb']:.0f} |"]
    if f:
        lines.append(f"| FuxiCTR 2.3.10 dataset build, T1 (process tree incl. Ray) | {f['seconds']:.1f} | {f['peak_rss_mb'] or float('nan'):.0f} |")
        lines.append(f"| ratio FuxiCTR / untwine | {f['seconds'] / u['seconds']:.2f}x | {(f['peak_rss_mb'] or 0) / u['peak_rss_mb']:.2f}x |")
    if "untwine_csv_5m" in res:
        c = res["untwine_csv_5m"]
        lines.append(f"| untwine: {args.rows_5m:,}-row T1-shaped CSV | {c['seconds']:.1f} | {c['peak_rss_mb']:.0f} |")
    (RESULTS / "prepare" / "prepare.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
