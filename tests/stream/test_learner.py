"""The stream learner end to end on the simulator's event log: counts, progressive validation, and a
crash / kill and restart that neither loses nor double-counts events."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from untwine.stream.events import JsonlSource, publish_to_redis
from untwine.stream.joiner import JoinerConfig
from untwine.stream.learner import StreamConfig, StreamLearner

TASKS = ["click", "conv1", "conv2"]
QUIET = dict(log=lambda *_: None)


def config(late="correction", every=700):
    return StreamConfig(joiner=JoinerConfig(tasks=TASKS, windows={"click": 120, "conv1": 3600, "conv2": 86400},
                                            late=late, min_delays=20),
                        batch_size=128, checkpoint_every=every, eval_every=400, log_predictions=True)


def test_stream_trains_on_every_impression_once_per_task(sim_stream, tmp_path):
    learner = StreamLearner(sim_stream["run"], tmp_path / "s", config(), **QUIET)
    before = learner.model_weights()
    summary = learner.consume(JsonlSource(sim_stream["events"]), drain=True)
    n = sim_stream["counts"]["impressions"]
    j = summary["joiner"]
    assert j["impressions"] == n and summary["pending"] == 0
    for t in TASKS:
        assert j[f"emitted_{t}"] == n
        assert j[f"positive_{t}"] + j[f"corrections_{t}"] == sim_stream["counts"][t]  # no label lost
    assert summary["trained"]["samples"] == 3 * n + summary["trained"]["corrections"]
    assert j["orphan_labels"] == 0 and j["late_labels"] == summary["trained"]["corrections"]
    after = learner.model_weights()
    assert any(not torch.equal(before[k], after[k]) for k in before)
    records = [json.loads(x) for x in (tmp_path / "s" / "progressive.jsonl").read_text().splitlines()]
    assert len(records) == (3 * n) // 400
    clicks = [r["tasks"]["click"] for r in records if "click" in r["tasks"]]  # the drained tail holds conversions
    assert len(clicks) > len(records) // 2 and sum(c["rows"] for c in clicks) <= n
    aucs = [c["auc"] for c in clicks if "auc" in c]  # a window with one class has no AUC
    assert len(aucs) > len(clicks) // 2 and 0.5 < sum(aucs) / len(aucs) < 1
    # windows adapted to the delays: clicks (30 s mean) far shorter than conversions (hours)
    assert summary["windows"]["click"] < 600 < summary["windows"]["conv1"]
    assert (tmp_path / "s" / "LATEST").exists() and len(list((tmp_path / "s").glob("ckpt-*"))) <= 2


class Crash(Exception):
    pass


class CrashingSource:
    """Yields the file's events and raises after ``after`` of them (a process dying mid-stream)."""

    def __init__(self, path, after):
        self.inner, self.after, self.resumable = JsonlSource(path), after, True

    def read(self, position=None):
        for k, item in enumerate(self.inner.read(position)):
            if k == self.after:
                raise Crash()
            yield item


def test_crash_and_restart_equals_the_uninterrupted_run(sim_stream, tmp_path):
    full = StreamLearner(sim_stream["run"], tmp_path / "full", config(), **QUIET)
    s_full = full.consume(JsonlSource(sim_stream["events"]), drain=True)
    crashed = StreamLearner(sim_stream["run"], tmp_path / "crash", config(), **QUIET)
    with pytest.raises(Crash):
        crashed.consume(CrashingSource(sim_stream["events"], after=4000))  # between checkpoints (every 700)
    resumed = StreamLearner(sim_stream["run"], tmp_path / "crash", config(), **QUIET)
    assert resumed.events == 3500  # the last checkpoint before the crash
    s_res = resumed.consume(JsonlSource(sim_stream["events"]), drain=True)
    assert s_res["joiner"] == s_full["joiner"] and s_res["trained"] == s_full["trained"]
    wf, wr = full.model_weights(), resumed.model_weights()
    assert all(torch.equal(wf[k], wr[k]) for k in wf)  # the same batches in the same order
    for log in ("progressive.jsonl", "predictions.csv"):
        assert (tmp_path / "crash" / log).read_text() == (tmp_path / "full" / log).read_text()
    n = sim_stream["counts"]["impressions"]
    assert len((tmp_path / "full" / "predictions.csv").read_text().splitlines()) == 1 + 3 * n


def test_killed_process_resumes_from_its_checkpoint(sim_stream, tmp_path):
    out = tmp_path / "k"
    cmd = [sys.executable, "-m", "untwine.cli.main", "stream", str(sim_stream["run"]), str(sim_stream["events"]),
           "--out", str(out), "--checkpoint-every", "300", "--batch-size", "64", "--threads", "1",
           "--window", "click=120", "--window", "conv1=3600", "--window", "conv2=86400"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while time.time() < deadline and not (out / "LATEST").exists():
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)  # right after the first checkpoint: ~300 of ~6,000 events in
    proc.wait()
    assert (out / "LATEST").exists(), proc.stderr.read().decode()[-2000:]
    state = json.loads((out / (out / "LATEST").read_text().strip() / "state.json").read_text())
    n = sim_stream["counts"]["impressions"]
    total_events = n + sum(sim_stream["counts"][t] for t in TASKS)
    assert 0 < state["events"] < total_events  # killed mid-stream
    res = subprocess.run([*cmd, "--drain"], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    summary = json.loads(res.stdout[res.stdout.rindex("\n{\n") + 1:])  # the summary printed last
    assert summary["events"] == total_events
    for t in TASKS:
        assert summary["joiner"][f"emitted_{t}"] == n
    assert summary["joiner"]["duplicate_impressions"] == 0 and summary["joiner"]["duplicate_labels"] == 0
    ckpt = out / (out / "LATEST").read_text().strip()
    weights = load_file(str(ckpt / "model.safetensors"))
    assert all(torch.isfinite(v).all() for v in weights.values())


@pytest.mark.parametrize("late", ["ignore", "fake_negative"])
def test_late_label_policies_run(sim_stream, tmp_path, late):
    s = StreamLearner(sim_stream["run"], tmp_path / late, config(late=late), **QUIET).consume(
        JsonlSource(sim_stream["events"]), drain=True)
    n = sim_stream["counts"]["impressions"]
    assert all(s["joiner"][f"emitted_{t}"] == n for t in TASKS)
    assert (s["trained"]["corrections"] == 0) == (late == "ignore")


def test_unknown_task_and_unseekable_resume_are_errors(sim_stream, tmp_path):
    bad = StreamConfig(joiner=JoinerConfig(tasks=["click", "buy"]))
    with pytest.raises(ValueError, match="buy"):
        StreamLearner(sim_stream["run"], tmp_path / "a", bad, **QUIET)
    learner = StreamLearner(sim_stream["run"], tmp_path / "b", config(), **QUIET)
    learner.consume(JsonlSource(sim_stream["events"]), max_events=50)
    again = StreamLearner(sim_stream["run"], tmp_path / "b", config(), **QUIET)
    with pytest.raises(ValueError, match="cannot seek"):
        again.consume(JsonlSource("-"))


def test_redis_source_gives_the_same_model_as_the_file_and_resumes(sim_stream, redis_url, tmp_path):
    from untwine.stream.events import open_source

    events = [json.loads(x) for x in sim_stream["events"].read_text().splitlines()]
    assert publish_to_redis(iter(events), redis_url, "ev") == len(events)
    source = open_source(f"{redis_url}?stream=ev")
    from_file = StreamLearner(sim_stream["run"], tmp_path / "f", config(), **QUIET)
    from_file.consume(JsonlSource(sim_stream["events"]), drain=True)
    part = StreamLearner(sim_stream["run"], tmp_path / "r", config(), **QUIET)
    with pytest.raises(Crash):
        part.consume(CrashingRedis(source, 1500))
    resumed = StreamLearner(sim_stream["run"], tmp_path / "r", config(), **QUIET)
    assert resumed.events == 1400 and isinstance(resumed.position, str) and "-" in resumed.position
    s = resumed.consume(source, drain=True)
    assert s["events"] == len(events)
    wf, wr = from_file.model_weights(), resumed.model_weights()
    assert all(torch.equal(wf[k], wr[k]) for k in wf)


class CrashingRedis:
    resumable = True

    def __init__(self, source, after):
        self.source, self.after = source, after

    def read(self, position=None):
        for k, item in enumerate(self.source.read(position)):
            if k == self.after:
                raise Crash()
            yield item
