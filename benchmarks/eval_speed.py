"""Evaluation speed against training speed per row (issue 8, part 3): T1's validation split (50,000 rows)
scored by the T1 runs that benchmarks/throughput.py leaves in benchmarks/.work/runs/, at several batch
sizes in fp32 and under bf16 autocast. Run benchmarks/throughput.py first.

    python benchmarks/eval_speed.py [--runs t1-dnn-raw-adam ...] [--batch-sizes 16384 4096 2048] [--threads 2]

Writes benchmarks/results/profile/eval_speed.md (scoring + metrics, as the trainer's valid pass).
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
    ap.add_argument("--runs", nargs="+", default=["t1-dnn-raw-adam", "t1-dnn-embed-adam", "t1-dcnv2-raw-adam",
                                                  "t1-dcnv2-embed-adam"])
    ap.add_argument("--batch-sizes", nargs="+", type=int, default=[16384, 4096, 2048])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=5)
    a = ap.parse_args()
    import statistics

    import torch

    from untwine.core.allocator import retain_freed_memory
    from untwine.core.dataset_spec import DatasetSpec
    from untwine.data.encode import prepare
    from untwine.data.loader import BatchLoader, SplitArrays
    from untwine.train.run import load_run
    from untwine.train.trainer import predict, task_metrics

    torch.set_num_threads(a.threads)
    retain_freed_memory()  # as the trainer does by default (train.allocator: retain)
    spec = DatasetSpec.from_yaml(WORK / "t1" / "dataset.yaml")
    prepared = prepare(spec, progress=False, log=lambda *_: None)
    data = SplitArrays.open(prepared, "valid")
    tasks = spec.schema.task_names

    def valid_pass(model, loader, precision: str) -> float:
        """Scoring and metrics of the whole validation split, as the trainer's valid pass; rows/s."""
        t0 = time.perf_counter()
        task_metrics(predict(model, loader, precision=precision), tasks)
        return data.rows / (time.perf_counter() - t0)

    lines = ["# Evaluation speed on T1 (issue 8)", "", f"`python benchmarks/eval_speed.py` ({' '.join(sys.argv[1:])})", "",
             f"Machine: {json.dumps(machine())}. Rows/s of scoring + metrics over the 50,000 validation rows, against "
             "the run's own training samples/s (result.json of benchmarks/throughput.py, same defaults: bf16 via "
             "train.precision auto, allocator retain). `first pass`: the process's first valid pass at the default "
             "batch 4096 in bf16 (oneDNN creates its kernels for each new shape on first use: the cost a one-epoch "
             f"run's only valid pass pays); the other columns are medians of {a.rounds} interleaved rounds, warm.", "",
             "| run | training samples/s | first pass rows/s (x train) | batch | fp32 rows/s | bf16 rows/s | fp32 / train | bf16 / train |",
             "|---|---|---|---|---|---|---|---|"]
    for name in a.runs:
        run = WORK / "runs" / name
        _, _, model = load_run(run)
        train = json.loads((run / "result.json").read_text())["train_samples_per_s"]
        loaders = {bs: BatchLoader(data, spec.schema, bs, shuffle=False) for bs in a.batch_sizes}
        first = valid_pass(model, BatchLoader(data, spec.schema, 4096, shuffle=False), "bf16")
        rates = {(bs, p): [] for bs in a.batch_sizes for p in ("fp32", "bf16")}
        for key in rates:
            valid_pass(model, loaders[key[0]], key[1])  # warm every shape once
        for _ in range(a.rounds):
            for key in rates:
                rates[key].append(valid_pass(model, loaders[key[0]], key[1]))
        for i, bs in enumerate(a.batch_sizes):
            fp32, bf16 = (statistics.median(rates[bs, p]) for p in ("fp32", "bf16"))
            head = f"{first:,.0f} ({first / train:.1f}x)" if i == 0 else ""
            lines.append(f"| {name} | {train:,.0f} | {head} | {bs} | {fp32:,.0f} | {bf16:,.0f} | "
                         f"{fp32 / train:.1f}x | {bf16 / train:.1f}x |")
            print(lines[-1], flush=True)
    out = RESULTS / "profile" / "eval_speed.md"
    out.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
