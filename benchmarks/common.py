"""Shared helpers for the benchmark scripts: machine facts, result files, mean ± std."""
from __future__ import annotations

import json
import os
import platform
import resource
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent
RESULTS = ROOT / "results"
WORK = ROOT / ".work"


def machine() -> dict:
    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import torch

    # machines of one kind differ in vector units (AVX2 only, or AVX-512 with bf16), which decide the bf16
    # rates and what train.precision auto resolves to: a result names the one it ran on
    return {"cpu": cpu, "cores": os.cpu_count(), "isa": torch.backends.cpu.get_cpu_capability(),
            "python": platform.python_version(), "torch": torch.__version__, "torch_threads": torch.get_num_threads()}


def peak_rss_mb() -> float:
    """Peak resident memory of this process and its finished children, in MB."""
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return max(own, kids) / 1024


def peak_rss_self_mb() -> float:
    """This process's high-water RSS (VmHWM): unlike ru_maxrss it is not inherited across fork+exec."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def mean_std(xs: list[float]) -> str:
    xs = [x for x in xs if x == x]
    if not xs:
        return "-"
    if len(xs) == 1:
        return f"{xs[0]:.4f}"
    return f"{statistics.mean(xs):.4f} ± {statistics.stdev(xs):.4f}"


def write_json(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(obj, indent=2) + "\n")
    tmp.replace(path)


def load_runs(folder: Path) -> list[dict]:
    """Every per-run JSON record in ``folder``, in file-name order."""
    return [json.loads(f.read_text()) for f in sorted(Path(folder).glob("*.json"))]


def sim_dataset(impressions: int = 1_000_000, seed: int = 2024) -> Path:
    """The simulator's dataset.yaml for (impressions, seed), written once under runs/bench/ and shared by
    every benchmark that asks for the same world."""
    from untwine.sim import SimConfig, write_dataset

    folder = Path("runs/bench") / f"sim-{impressions}-s{seed}"
    if not (folder / "dataset.yaml").exists():
        write_dataset(SimConfig(n_impressions=impressions, seed=seed), folder)
    return folder / "dataset.yaml"


def run_json(cmd: list[str], env: dict | None = None, timeout: int = 7200) -> dict:
    """Run a command that prints one JSON object as its last stdout line; add its peak RSS."""
    import time

    t0 = time.perf_counter()
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **(env or {})}, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:4])} ... failed:\n{proc.stderr[-4000:]}")
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    out.setdefault("wall_seconds", time.perf_counter() - t0)
    after = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    out.setdefault("peak_rss_mb_upper_bound", max(after, before) / 1024)
    return out


PY = sys.executable


def sim_oracle(sim_dir: Path) -> tuple[float, float]:
    """Test AUC and GAUC of a simulated log's true click probabilities (the best any model can reach)."""
    import numpy as np
    import pyarrow.parquet as pq

    from untwine.metrics.classification import auc, gauc

    t = pq.read_table(Path(sim_dir) / "test.parquet", columns=["p_click", "click", "user_id"])
    p, y = t.column("p_click").to_numpy(), t.column("click").to_numpy()
    return auc(p, y), gauc(p, y, np.asarray(t.column("user_id").to_pylist())).value


def median_ms(fns: dict, rounds: int, per: int = 1) -> dict:
    """Median ms per unit (a call's time / ``per``) of each function, the functions interleaved within every
    round so a drifting machine slows all alike; each is called once first (oneDNN and MKL build their kernels
    per shape)."""
    import time

    times = {k: [] for k in fns}
    for f in fns.values():
        f()
    for _ in range(rounds):
        for k, f in fns.items():
            t0 = time.perf_counter()
            f()
            times[k].append((time.perf_counter() - t0) / per * 1e3)
    return {k: statistics.median(v) for k, v in times.items()}


def t1_prepared(threads: int):
    """The T1 cache for an in-process measurement: (spec, prepared), with the trainer's retain allocator,
    ``threads`` torch threads and seed 1."""
    import torch

    from untwine.core.allocator import retain_freed_memory
    from untwine.core.dataset_spec import DatasetSpec
    from untwine.data.encode import prepare
    from untwine.data.recipes import prepare as prepare_recipe

    retain_freed_memory()
    torch.set_num_threads(threads)
    torch.manual_seed(1)
    spec = DatasetSpec.from_yaml(prepare_recipe("t1", WORK / "t1"))
    return spec, prepare(spec, progress=False, log=lambda *_: None)


def write_isa_result(stem: str, lines: list[str]) -> Path:
    """results/profile/<stem>_<isa>.md (machines of one kind differ by vector ISA), printed too."""
    import torch

    out = RESULTS / "profile" / f"{stem}_{torch.backends.cpu.get_cpu_capability().lower()}.md"
    out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return out
