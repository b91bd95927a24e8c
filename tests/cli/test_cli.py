import json

import yaml
from typer.testing import CliRunner

from untwine.cli.main import app
from untwine.models import MODELS

runner = CliRunner()


def test_models_lists_every_registered_model():
    res = runner.invoke(app, ["models"])
    assert res.exit_code == 0
    for name in MODELS.names():
        assert name in res.output


def write_csv_dataset(tmp_path, bad_rows=""):
    rows = "".join(f"{i % 2},u{i % 7},{i * 0.5}\n" for i in range(300))
    (tmp_path / "train.csv").write_text("y,u,x\n" + rows + bad_rows)
    (tmp_path / "valid.csv").write_text("y,u,x\n" + rows[:2000])
    (tmp_path / "dataset.yaml").write_text(yaml.safe_dump({
        "name": "cli", "format": "csv", "train": "train.csv", "valid": "valid.csv", "test": "valid.csv",
        "schema": {"features": [{"name": "u", "kind": "categorical"}, {"name": "x", "kind": "numeric"}],
                   "labels": [{"name": "y"}]}}))
    (tmp_path / "exp.yaml").write_text(yaml.safe_dump({
        "dataset": "dataset.yaml", "model": {"name": "lr"}, "train": {"epochs": 2, "batch_size": 64, "progress": False}}))


def test_train_with_overrides_then_evaluate(tmp_path):
    write_csv_dataset(tmp_path)
    run = tmp_path / "run"
    res = runner.invoke(app, ["train", str(tmp_path / "exp.yaml"), "train.epochs=1", "model.name=dnn",
                              "model.hidden=[8]", "--run-dir", str(run)])
    assert res.exit_code == 0, res.output
    assert "test y:" in res.output
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    # the saved model config is fully resolved: a later change of a default cannot change the run
    assert cfg["model"]["name"] == "dnn" and cfg["model"]["hidden"] == [8] and cfg["train"]["epochs"] == 1
    assert cfg["model"]["embedding_dim"] == 10 and cfg["model"]["numeric_encoder"] == {
        "name": "scaled", "buckets": 20, "max_value": 1000, "bases": [2, 3, 10], "transform": "quantile", "combine": "sum"}
    res = runner.invoke(app, ["evaluate", str(run), "--split", "valid"])
    assert res.exit_code == 0, res.output
    assert 0.0 <= json.loads(res.output)["y"]["auc"] <= 1.0


def test_bad_rows_fail_by_default_and_are_counted_when_skipped(tmp_path):
    write_csv_dataset(tmp_path, bad_rows="1,u1\n0,u2,notanumber\n,u3,1\n")
    res = runner.invoke(app, ["train", str(tmp_path / "exp.yaml"), "--run-dir", str(tmp_path / "r1")])
    assert res.exit_code != 0
    assert "train.csv:302: expected 3 columns, found 2" in str(res.exception)
    res = runner.invoke(app, ["train", str(tmp_path / "exp.yaml"), "--run-dir", str(tmp_path / "r2"),
                              "--on-bad-rows", "skip"])
    assert res.exit_code == 0, res.output
    assert "skipped 3 bad rows" in res.output


def test_schema_naming_a_missing_column_fails_before_work(tmp_path):
    write_csv_dataset(tmp_path)
    spec = yaml.safe_load((tmp_path / "dataset.yaml").read_text())
    spec["schema"]["features"].append({"name": "price", "kind": "numeric"})
    (tmp_path / "dataset.yaml").write_text(yaml.safe_dump(spec))
    res = runner.invoke(app, ["train", str(tmp_path / "exp.yaml"), "--run-dir", str(tmp_path / "r")])
    assert res.exit_code != 0
    assert "['price']" in str(res.exception)
    assert not (tmp_path / "r").exists()


def test_train_tin_on_p5_from_yaml_alone(shared_data, tmp_path):
    """The P5 config with the TIM sequence encoder trains end to end (a few steps) and the run
    records the encoder; DIN and TIN are listed by `untwine models`."""
    from pathlib import Path

    config = Path(__file__).resolve().parents[2] / "configs" / "p5" / "dnn.yaml"
    run = tmp_path / "run"
    res = runner.invoke(app, ["train", str(config), "model.sequence_encoder=tim", "train.epochs=1",
                              "train.max_steps_per_epoch=3", "train.progress=false", "--run-dir", str(run)])
    assert res.exit_code == 0, res.output
    assert "test label: auc=" in res.output
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["model"]["sequence_encoder"]["name"] == "tim"
    assert saved["model"]["sequence_encoder"]["attention_norm"] is True
    assert json.loads((run / "feature_space.json").read_text())["schema"]["timestamp"] == "timestamp"
    listed = runner.invoke(app, ["models"]).output
    assert "din " in listed and "tin " in listed


def test_moments_pctr_on_p1_from_yaml_then_analyze_collapse(shared_data, tmp_path):
    """The shipped heterogeneous-MoE config trains on P1 (a few steps) and `untwine analyze collapse`
    writes the JSON and plots for its two tables."""
    from pathlib import Path

    config = Path(__file__).resolve().parents[2] / "configs" / "p1" / "moments_pctr.yaml"
    run = tmp_path / "run"
    res = runner.invoke(app, ["train", str(config), "train.epochs=1", "train.max_steps_per_epoch=3",
                              "train.progress=false", "--run-dir", str(run)])
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["analyze", "collapse", str(run)])
    assert res.exit_code == 0, res.output
    report = json.loads((run / "collapse" / "collapse.json").read_text())["run"]
    assert [t["dim"] for t in report["tables"]] == [30, 10]
    assert {"user", "item", "city"} <= set(report["tables"][0]["fields"])
    assert report["combined"]["dim"] == 40
    assert (run / "collapse" / "spectra_run.png").exists() and (run / "collapse" / "ia_per_feature.png").exists()


def test_simulate_then_train_a_sim_config(tmp_path):
    from pathlib import Path

    res = runner.invoke(app, ["simulate", str(tmp_path / "sim"), "--impressions", "3000", "--seed", "3"])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "sim" / "dataset.yaml").exists()
    config = Path(__file__).resolve().parents[2] / "configs" / "sim" / "me_dcnv2.yaml"
    res = runner.invoke(app, ["train", str(config), f"dataset={tmp_path / 'sim' / 'dataset.yaml'}", "train.epochs=1",
                              "train.batch_size=512", "train.progress=false", "--run-dir", str(tmp_path / "run")])
    assert res.exit_code == 0, res.output
    assert "test click: auc=" in res.output


def test_task_weights_must_name_tasks(tmp_path):
    write_csv_dataset(tmp_path)
    res = runner.invoke(app, ["train", str(tmp_path / "exp.yaml"), "train.task_weights={nope: 0.2}",
                              "--run-dir", str(tmp_path / "r")])
    assert res.exit_code != 0 and "train.task_weights names ['nope']" in str(res.exception)
    res = runner.invoke(app, ["train", str(tmp_path / "exp.yaml"), "train.task_weights={y: 0.5}", "train.epochs=1",
                              "--run-dir", str(tmp_path / "r2")])
    assert res.exit_code == 0, res.output


def test_analyze_calibration_plots_raw_and_calibrated(tmp_path):
    write_csv_dataset(tmp_path)
    run = tmp_path / "run"
    res = runner.invoke(app, ["train", str(tmp_path / "exp.yaml"), "train.calibration=platt", "--run-dir", str(run)])
    assert res.exit_code == 0, res.output
    out = tmp_path / "cal"
    res = runner.invoke(app, ["analyze", "calibration", str(run), "--out", str(out), "--bins", "4"])
    assert res.exit_code == 0, res.output
    report = json.loads((out / "calibration.json").read_text())
    curves = report["tasks"]["y"]
    assert set(curves) == {"raw", "calibrated"}
    n_test = len((tmp_path / "valid.csv").read_text().splitlines()) - 1
    assert sum(curves["raw"]["count"]) == n_test and (out / "reliability_y.png").stat().st_size > 0
    # Platt fitted on valid (= test here) leaves the mean prediction at the rate, the raw model need not
    assert abs(curves["calibrated"]["calibration"] - 1) < 0.02
