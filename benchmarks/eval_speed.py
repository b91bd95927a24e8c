"""Evaluation speed against training speed per row (issue 8, part 3): T1's validation split (50,000 rows)
scored by the T1 runs that benchmarks/throughput.py leaves in benchmarks/.work/runs/, at several batch
sizes in fp32 and under bf16 autocast. Run benchmarks/throughput.py first.

    python benchmarks/eval_speed.py [--runs t1-dnn-raw-adam t1-dcnv2-embed-adam] [--threads 2]

Writes benchmarks/results/profile/eval_speed.md (best of 3 passes; metrics excluded, they take ~5 ms).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, WORK, machine  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", nargs="+", default=["t1-dnn-raw-adam", "t1-dcnv2-embed-adam"])
    ap.add_argument("--batch-sizes", nargs="+", type=int, default=[16384, 4096, 2048])
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    import torch

    from untwine.core.dataset_spec import DatasetSpec
    from untwine.data.encode import prepare
    from untwine.data.loader import BatchLoader, SplitArrays
    from untwine.train.run import load_run
    from untwine.train.trainer import predict

    torch.set_num_threads(a.threads)
    spec = DatasetSpec.from_yaml(WORK / "t1" / "dataset.yaml")
    prepared = prepare(spec, progress=False, log=lambda *_: None)
    data = SplitArrays.open(prepared, "valid")
    lines = ["# Evaluation speed on T1 (issue 8)", "", "`python benchmarks/eval_speed.py`", "",
             f"Machine: {json.dumps(machine())}. Rows/s scoring the 50,000 validation rows (best of 3), against "
             "the run's own training samples/s (result.json of benchmarks/throughput.py).", "",
             "| run | training samples/s | batch | fp32 rows/s | bf16 autocast rows/s | fp32 / train | bf16 / train |",
             "|---|---|---|---|---|---|---|"]
    for name in a.runs:
        run = WORK / "runs" / name
        _, _, model = load_run(run)
        train = json.loads((run / "result.json").read_text())["train_samples_per_s"]
        for bs in a.batch_sizes:
            loader = BatchLoader(data, spec.schema, bs, shuffle=False)
            rates = {}
            for precision in ("fp32", "bf16"):
                best = float("inf")
                for _ in range(3):
                    t0 = time.perf_counter()
                    predict(model, loader, precision=precision)
                    best = min(best, time.perf_counter() - t0)
                rates[precision] = data.rows / best
            lines.append(f"| {name} | {train:,.0f} | {bs} | {rates['fp32']:,.0f} | {rates['bf16']:,.0f} | "
                         f"{rates['fp32'] / train:.1f}x | {rates['bf16'] / train:.1f}x |")
            print(lines[-1], flush=True)
    out = RESULTS / "profile" / "eval_speed.md"
    out.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
