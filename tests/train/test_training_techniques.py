"""End to end: ranking loss, repeated-exposure weighting + global calibration, negative down-sampling."""
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from untwine.train.config import ExperimentConfig
from untwine.train.run import evaluate_run, run_experiment

from conftest import experiment

QUIET = dict(log=lambda *_: None)


def run(dataset, run_dir, **train):
    return run_experiment(ExperimentConfig.from_dict(experiment(dataset, **train)), run_dir=run_dir, resume=False,
                          **QUIET)


@pytest.fixture
def repeated(tmp_path):
    """Users see the same few items again and again, with timestamps: most rows are repeated exposures."""
    rng = np.random.default_rng(0)
    t0 = 0
    for split, n in (("train", 6000), ("valid", 2000), ("test", 2000)):
        u, i = rng.integers(0, 30, n), rng.integers(0, 8, n)
        ts = t0 + np.sort(rng.integers(0, 100_000, n))
        t0 = int(ts.max()) + 1
        logit = np.where((u + i) % 3 == 0, 0.5, -2.0) + rng.normal(0, 0.3, n)
        y = rng.random(n) < 1 / (1 + np.exp(-logit))
        pq.write_table(pa.table({"user": u.astype(str), "item": i.astype(str), "ts": ts, "y": y.astype(np.int8)}),
                       tmp_path / f"{split}.parquet")
    spec = {"name": "repeated", "train": "train.parquet", "valid": "valid.parquet", "test": "test.parquet",
            "schema": {"features": [{"name": "user", "kind": "categorical", "group": "user"},
                                    {"name": "item", "kind": "categorical", "group": "item"}],
                       "labels": [{"name": "y"}], "group_key": "user", "timestamp": "ts"}}
    (tmp_path / "dataset.yaml").write_text(yaml.safe_dump(spec))
    return tmp_path / "dataset.yaml"


def mean_pred_over_rate(r, key="test"):
    return getattr(r, key)["y"]["calibration"]


def test_ranking_loss_trains_and_keeps_auc(learnable, tmp_path):
    plain = run(learnable, tmp_path / "plain")
    ranked = run(learnable, tmp_path / "ranked", ranking_weight=1.0, ranking_scope="group", ranking_pairs=8)
    assert ranked.test["y"]["auc"] > 0.85 and abs(ranked.test["y"]["auc"] - plain.test["y"]["auc"]) < 0.03


def test_rew_lowers_predictions_and_mean_calibration_restores_the_rate(repeated, tmp_path):
    base = run(repeated, tmp_path / "base", epochs=4)
    rew = run(repeated, tmp_path / "rew", epochs=4, calibration="mean",
              repeat_exposure={"item": "item", "window_seconds": None, "alpha": 1.0, "form": "linear", "cap": 4.0})
    # heavier negatives push the raw mean prediction below the observed rate ...
    assert mean_pred_over_rate(rew) < mean_pred_over_rate(base) - 0.1
    # ... and the global calibration fitted on validation brings it back on test
    assert rew.test_calibrated["y"]["calibration"] == pytest.approx(1.0, abs=0.08)
    assert rew.test_calibrated["y"]["auc"] == pytest.approx(rew.test["y"]["auc"], abs=1e-9)  # a monotone shift
    cal = json.loads((tmp_path / "rew" / "calibration.json").read_text())
    assert cal["y"]["name"] == "mean" and cal["y"]["shift"] > 0
    # evaluate reproduces the run's calibrated numbers from calibration.json
    assert evaluate_run(tmp_path / "rew")["y"]["calibration"] == pytest.approx(
        rew.test_calibrated["y"]["calibration"], abs=1e-6)


def test_rew_needs_a_timestamp_and_known_features(learnable, tmp_path):
    with pytest.raises(ValueError, match="timestamp"):
        run(learnable, tmp_path / "a", repeat_exposure={"item": "item"})
    with pytest.raises(ValueError, match="not a categorical feature"):
        run(learnable, tmp_path / "b", repeat_exposure={"item": "nope"})


def test_negative_downsampling_is_corrected_back_to_the_true_rate(repeated, tmp_path):
    sampled = run(repeated, tmp_path / "s", epochs=4, negative_keep_rate=0.25)
    raw_cfg = ExperimentConfig.from_dict(experiment(repeated, epochs=4, negative_keep_rate=0.25))
    assert raw_cfg.train.negative_keep_rate == 0.25
    # corrected predictions are calibrated on test; uncorrected ones would over-predict about 2-4x
    assert sampled.test["y"]["calibration"] == pytest.approx(1.0, abs=0.15)
    samples = [json.loads(x)["samples"] for x in (tmp_path / "s" / "metrics.jsonl").read_text().splitlines()
               if json.loads(x)["split"] == "train"]
    assert max(samples) < 6000 * 0.6  # the epochs really ran on the down-sampled rows
    assert evaluate_run(tmp_path / "s")["y"]["calibration"] == pytest.approx(sampled.test["y"]["calibration"],
                                                                             abs=1e-6)
