"""glibc malloc settings against the T1 training step (issue 8, lever 4): one untwine training child per
setting, one after another, each with ``train.allocator=system`` and the setting applied by mallopt first.

    python benchmarks/allocator_probe.py [--model dcnv2] [--numeric embed] [--repeats 1]

Settings: ``system`` (as the process starts), ``trim`` (only M_TRIM_THRESHOLD = 1 GiB: that also switches
off glibc's dynamic mmap threshold, so every block above 128 KiB is mmapped), ``mmap32`` (M_MMAP_THRESHOLD
= 32 MiB, the most glibc accepts, + trim 1 GiB), ``retain`` (M_MMAP_MAX = 0 + trim 1 GiB: what
``train.allocator: retain`` sets). Writes benchmarks/results/profile/allocator_probe.md.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import PY, RESULTS, ROOT, machine, run_json  # noqa: E402

from untwine.core.allocator import M_MMAP_MAX, M_MMAP_THRESHOLD, M_TRIM_THRESHOLD, RETAIN  # noqa: E402

SETTINGS = {"system": [], "trim": [(M_TRIM_THRESHOLD, 1 << 30)],
            "mmap32": [(M_MMAP_THRESHOLD, 32 << 20), (M_TRIM_THRESHOLD, 1 << 30)],
            "retain": list(RETAIN)}

# mallopt, then benchmarks/throughput.py's untwine child in the same process
CHILD = """
import ctypes, runpy, sys
libc = ctypes.CDLL("libc.so.6")
for option, value in {calls}:
    assert libc.mallopt(option, value) == 1, (option, value)
sys.argv = {argv}
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="dcnv2")
    ap.add_argument("--numeric", default="embed")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=1)
    a = ap.parse_args()
    argv = [str(ROOT / "throughput.py"), "--child", "untwine", "--dataset", "t1", "--model", a.model,
            "--numeric", a.numeric, "--opt", "adam", "--epochs", "1", "--threads", str(a.threads),
            "--allocator", "system"]
    rows = []
    for rep in range(a.repeats):
        for name, calls in SETTINGS.items():
            r = run_json([PY, "-c", CHILD.format(calls=calls, argv=argv)])
            rows.append({"setting": name, "repeat": rep, **r})
            print(json.dumps(rows[-1]), flush=True)
    lines = ["# glibc malloc settings and the T1 training step (issue 8, lever 4)", "",
             f"`python benchmarks/allocator_probe.py {' '.join(sys.argv[1:])}`", "",
             f"Machine: {json.dumps(machine())}. {a.model}, {a.numeric} numerics, T1, one epoch, batch 4096, "
             "untwine defaults otherwise (bf16 where auto picks it); one process per row, one after another.", "",
             "| setting | mallopt | repeat | precision | samples/s | valid pass rows/s | peak RSS MB |",
             "|---|---|---|---|---|---|---|"]
    names = {M_TRIM_THRESHOLD: "M_TRIM_THRESHOLD", M_MMAP_THRESHOLD: "M_MMAP_THRESHOLD", M_MMAP_MAX: "M_MMAP_MAX"}
    for r in rows:
        calls = ", ".join(f"{names[o]}={v}" for o, v in SETTINGS[r["setting"]]) or "-"
        lines.append(f"| {r['setting']} | {calls} | {r['repeat']} | {r['precision']} | {r['samples_per_s']:,.0f} | "
                     f"{r['eval_rows_per_s']:,.0f} | {r['peak_rss_mb']:,.0f} |")
    out = RESULTS / "profile" / "allocator_probe.md"
    out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
