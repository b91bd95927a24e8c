import json

import pytest
import torch
import yaml

import untwine.train.precision as precision_module
from untwine.train.config import ExperimentConfig
from untwine.train.precision import BF16_MIN_SPEEDUP, measure_bf16_speedup, resolve_precision
from untwine.train.run import run_experiment

from conftest import experiment


@pytest.fixture
def probe(monkeypatch):
    """Replace the timing probe with given (fp32 ms, bf16 ms) and count its calls."""
    calls = []

    def install(fp32_ms, bf16_ms, has_bf16=True):
        def fake(threads, *args, **kwargs):
            calls.append(threads)
            return fp32_ms, bf16_ms
        monkeypatch.setattr(precision_module, "measure_bf16_speedup", fake)
        monkeypatch.setattr(precision_module, "_cpu_has_bf16", lambda: has_bf16)
        return calls
    return install


@pytest.mark.parametrize("asked", ["fp32", "bf16"])
def test_explicit_precision_passes_through_without_probing(probe, asked):
    calls = probe(10.0, 1.0)
    choice = resolve_precision(asked, "cpu", deterministic=True)
    assert (choice.precision, choice.requested, calls) == (asked, asked, [])


def test_unknown_precision_is_refused():
    with pytest.raises(ValueError, match="fp16"):
        resolve_precision("fp16")


@pytest.mark.parametrize("fp32_ms, bf16_ms, expected", [
    (10.0, 10.0 / (BF16_MIN_SPEEDUP + 0.05), "bf16"),
    (10.0, 10.0 / (BF16_MIN_SPEEDUP - 0.05), "fp32"),
    (10.0, 20.0, "fp32"),  # bf16 slower, as plain bf16 products were on a Xeon without AMX
])
def test_auto_follows_the_measured_speedup(probe, fp32_ms, bf16_ms, expected):
    calls = probe(fp32_ms, bf16_ms)
    choice = resolve_precision("auto", "cpu")
    assert choice.precision == expected and choice.requested == "auto"
    assert calls == [torch.get_num_threads()]
    assert (choice.fp32_ms, choice.bf16_ms) == (round(fp32_ms, 3), round(bf16_ms, 3))
    assert f"{fp32_ms / bf16_ms:.2f}x" in choice.reason


@pytest.mark.parametrize("device, deterministic, has_bf16, why", [
    ("cpu", True, True, "deterministic"),
    ("cuda:0", False, True, "cuda"),
    ("cpu", False, False, "no native bf16"),
])
def test_auto_stays_fp32_without_probing(probe, device, deterministic, has_bf16, why):
    calls = probe(10.0, 1.0, has_bf16=has_bf16)
    choice = resolve_precision("auto", device, deterministic)
    assert choice.precision == "fp32" and calls == [] and why in choice.reason


def test_probe_measures_both_formats_and_restores_threads():
    before = torch.get_num_threads()
    fp32_ms, bf16_ms = measure_bf16_speedup.__wrapped__(1, batch=64, width=16, rounds=2)
    assert fp32_ms > 0 and bf16_ms > 0
    assert torch.get_num_threads() == before


@pytest.mark.parametrize("fp32_ms, bf16_ms, expected", [(10.0, 2.0, "bf16"), (10.0, 20.0, "fp32")])
def test_run_records_the_resolved_precision(probe, learnable, tmp_path, fp32_ms, bf16_ms, expected):
    """A run saved with auto would score differently on another machine: its config says what it trained in."""
    probe(fp32_ms, bf16_ms)
    cfg = ExperimentConfig.from_dict(experiment(learnable, epochs=1))
    assert cfg.train.precision == "auto"
    lines = []
    result = run_experiment(cfg, run_dir=tmp_path / "run", log=lines.append)
    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert saved["train"]["precision"] == expected
    recorded = json.loads((tmp_path / "run" / "result.json").read_text())["precision"]
    assert recorded == result.precision and recorded["precision"] == expected and recorded["requested"] == "auto"
    assert any(f"train.precision auto -> {expected}" in line for line in lines)


def test_resumed_run_keeps_the_precision_it_started_in(probe, learnable, tmp_path):
    """The probe may answer differently after a restart (another machine, a noisy neighbour)."""
    probe(10.0, 2.0)
    cfg = ExperimentConfig.from_dict(experiment(learnable, epochs=1, patience=10))
    run_experiment(cfg, run_dir=tmp_path / "run", log=lambda *_: None)
    probe(10.0, 20.0)  # now the probe would say fp32
    longer = ExperimentConfig.from_dict(experiment(learnable, epochs=2, patience=10))
    result = run_experiment(longer, run_dir=tmp_path / "run", resume=True, log=lambda *_: None)
    assert result.precision["precision"] == "bf16" and "resumed" in result.precision["reason"]
    assert yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["train"]["precision"] == "bf16"
