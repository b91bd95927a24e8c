import subprocess
import sys
import textwrap

import pytest
import torch
from safetensors.torch import load_file

from untwine.core.allocator import _glibc
from untwine.train.config import ExperimentConfig
from untwine.train.run import run_experiment

from conftest import experiment

needs_glibc = pytest.mark.skipif(_glibc() is None, reason="mallopt settings apply to glibc only")

# Allocate, touch and free 64 MiB (above glibc's largest dynamic mmap threshold), then report how much of it
# is still resident: with the system settings free() unmaps it, with retain it stays for the next allocation.
PROBE = textwrap.dedent("""
    import sys
    import numpy as np
    from untwine.core.allocator import retain_freed_memory

    def rss_mb():
        for line in open("/proc/self/status"):
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024

    if sys.argv[1] == "retain":
        print(retain_freed_memory(), file=sys.stderr)
    before = rss_mb()
    block = np.ones(64 << 20, dtype=np.uint8)
    del block
    print(rss_mb() - before)
""")


def retained_mb(mode: str) -> float:
    out = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True)
    return float(out.stdout)


@needs_glibc
def test_retain_keeps_freed_blocks_resident_and_system_returns_them():
    assert retained_mb("system") < 16
    assert retained_mb("retain") > 48


@needs_glibc
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_allocator_setting_leaves_training_bitwise_unchanged(learnable, tmp_path, precision):
    """Where freed memory goes cannot change arithmetic: the same weights either way."""
    script = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(__import__('pathlib').Path(__file__).parent)!r})
        from conftest import experiment
        from untwine.train.config import ExperimentConfig
        from untwine.train.run import run_experiment
        cfg = ExperimentConfig.from_dict(experiment({str(learnable)!r}, epochs=2, allocator=sys.argv[1],
                                                    precision={precision!r}))
        run_experiment(cfg, run_dir=sys.argv[2], log=lambda *_: None)
    """)
    for mode in ("retain", "system"):  # separate processes: mallopt is process-wide and not undone
        subprocess.run([sys.executable, "-c", script, mode, str(tmp_path / mode)], check=True)
    a, b = (load_file(str(tmp_path / m / "best.safetensors")) for m in ("retain", "system"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_run_logs_what_the_allocator_setting_did(learnable, tmp_path):
    lines = []
    run_experiment(ExperimentConfig.from_dict(experiment(learnable, epochs=1)), run_dir=tmp_path / "r",
                   log=lines.append)
    assert any(line.startswith("allocator") for line in lines)
