"""Machine, versions and memory: what every result JSON records next to its numbers."""
from __future__ import annotations

import os
import platform
import resource
import threading
import time
from importlib import metadata

PAGE = os.sysconf("SC_PAGE_SIZE")


def machine() -> dict:
    cpu = None
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_gb = None
    try:
        for line in open("/proc/meminfo"):
            if line.startswith("MemTotal:"):
                mem_gb = round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    return {"nproc": len(os.sched_getaffinity(0)), "cpu_count": os.cpu_count(), "cpu_model": cpu,
            "mem_total_gb": mem_gb, "platform": platform.platform(), "hostname": platform.node(),
            "loadavg_start": list(os.getloadavg())}


def versions(*dists: str) -> dict:
    out = {"python": platform.python_version()}
    for d in ("torch", "numpy", "pandas", "pyarrow", "scikit-learn", *dists):
        try:
            out[d] = metadata.version(d)
        except metadata.PackageNotFoundError:
            out[d] = None
    return out


def _children_of() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/stat") as fh:
                ppid = int(fh.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        kids.setdefault(ppid, []).append(int(pid))
    return kids


def tree_rss_bytes(root: int | None = None) -> tuple[int, int]:
    """(summed RSS of ``root`` and all its descendants, number of processes)."""
    root = root or os.getpid()
    kids = _children_of()
    todo, total, n = [root], 0, 0
    while todo:
        pid = todo.pop()
        try:
            with open(f"/proc/{pid}/statm") as fh:
                total += int(fh.read().split()[1]) * PAGE
            n += 1
        except OSError:
            pass
        todo.extend(kids.get(pid, []))
    return total, n


class TreeRssSampler:
    """Samples the summed RSS of this process tree (Ray's raylet and workers included) in a thread."""

    def __init__(self, interval: float = 0.5):
        self.interval = interval
        self.peak = 0
        self.peak_procs = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            rss, n = tree_rss_bytes()
            if rss > self.peak:
                self.peak, self.peak_procs = rss, n
            self._stop.wait(self.interval)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def peak_rss(sampler: TreeRssSampler | None = None) -> dict:
    """ru_maxrss of this process and of its waited-for children, plus the sampled process-tree peak."""
    me = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    ch = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    out = {"self_mb": round(me, 1), "children_max_mb": round(ch, 1)}
    if sampler is not None:
        out["tree_peak_sampled_mb"] = round(sampler.peak / 2**20, 1)
        out["tree_peak_processes"] = sampler.peak_procs
    return out


class Clock:
    def __init__(self):
        self.t0 = time.perf_counter()

    def __call__(self) -> float:
        return time.perf_counter() - self.t0
