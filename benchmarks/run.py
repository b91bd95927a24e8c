"""`make bench`: every benchmark of the foundation, one after another (about an hour on 2 cores).

    python benchmarks/run.py [--quick]

1. throughput: T1 and P1, DNN and DCN-V2, untwine vs model-bound loop vs peers (benchmarks/throughput.py)
2. data preparation: T1 vs FuxiCTR's build, and a 5M-row CSV (benchmarks/prepare_bench.py)
3. accuracy: P1 and P2, DNN / DeepFM / DCN-V2, seeds 1-3 (benchmarks/accuracy.py)
4. with --encoders: the feature-encoder experiments (benchmarks/encoders.py sequence / numeric / vector /
   history_similarity, then the plots of benchmarks/encoder_plots.py; about three more hours on 2 cores)
5. with --collapse: the multi-embedding lookup cost (benchmarks/multi_embedding.py) and the embedding
   scaling experiment on P1, P2 and the simulator (benchmarks/collapse.py; about two more hours)
Peers run only when benchmarks/peers/.venv exists (`make bench-peers` creates it).
Run on an otherwise idle machine: timings under load are meaningless.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="P1 only, one seed, no 5M CSV")
    ap.add_argument("--encoders", action="store_true", help="also the feature-encoder experiments")
    ap.add_argument("--collapse", action="store_true", help="also the multi-embedding cost and scaling experiments")
    a = ap.parse_args()
    py = sys.executable
    steps = [[py, str(HERE / "throughput.py")] + (["--datasets", "p1"] if a.quick else []),
             [py, str(HERE / "prepare_bench.py")] + (["--skip-5m"] if a.quick else []),
             [py, str(HERE / "accuracy.py"), "--protocols", "p1", "--tag", "p1"] + (["--seeds", "1"] if a.quick else []),
             [py, str(HERE / "accuracy.py"), "--protocols", "p2", "--tag", "p2"] + (["--seeds", "1"] if a.quick else [])]
    if a.encoders:
        seeds = ["--seeds", "1"] if a.quick else []
        steps += [[py, str(HERE / "encoders.py"), exp, *seeds]
                  for exp in ("sequence", "numeric", "vector", "history_similarity")]
        steps += [[py, str(HERE / "encoder_plots.py"), "attention", "--run", f"runs/bench/encoders/sequence/{r}"]
                  for r in ("p5_tin_s1", "p5_tin_norm_s1", "p5_tin_norm_keep_s1", "p6_tin_s1", "p6_tin_norm_keep_s1")]
        steps += [[py, str(HERE / "encoder_plots.py"), plot] for plot in ("mnse", "similarity", "history_similarity")]
    if a.collapse:
        steps += [[py, str(HERE / "multi_embedding.py")],
                  [py, str(HERE / "collapse.py"), *(["--protocols", "p1", "--seeds", "1"] if a.quick else [])]]
    for cmd in steps:
        print("+", " ".join(cmd[1:]), flush=True)
        subprocess.run(cmd, check=True)


if __name__ == "__main__":
    main()
