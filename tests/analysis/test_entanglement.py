"""Entanglement analysis: the selection of conflicting pairs, the between / pull-to-middle measures and the CLI."""
from __future__ import annotations

import json

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from untwine.analysis.entanglement import entanglement_report, zscore
from untwine.cli.main import app


def test_a_model_at_the_midpoint_is_fully_entangled_and_one_that_follows_a_is_not():
    rng = np.random.default_rng(0)
    da, db = rng.standard_normal(1000), rng.standard_normal(1000)
    za, zb = zscore(da), zscore(db)
    report = entanglement_report(da, db, {"middle": (za + zb) / 2, "follows a": da}, fraction=0.1)
    assert report["selected"] == 100
    picked = report["picked"]
    assert np.abs(za - zb)[picked].min() >= np.abs(za - zb)[np.setdiff1d(np.arange(1000), picked)].max()
    mid, follow = report["views"]["middle"], report["views"]["follows a"]
    assert mid["between"] > 0.9 and mid["pull_to_middle"] > 0.6  # z-scoring the midpoint rescales it a little
    assert follow["pull_to_middle"] == pytest.approx(0.0, abs=1e-9)  # exactly as far from the middle as A
    assert follow["corr_with_a"] == pytest.approx(1.0) and follow["between"] == 0.0


def test_analyze_entanglement_cli(tmp_path):
    rng = np.random.default_rng(1)
    n = 600
    u, i = rng.integers(0, 30, n), rng.integers(0, 40, n)
    y1 = (rng.random(n) < 0.3 + 0.4 * (u % 2)).astype(int)  # task 1 follows the user's parity
    y2 = (rng.random(n) < 0.3 + 0.4 * (i % 2)).astype(int)  # task 2 the item's
    rows = "".join(f"{a},{b},u{c},i{d}\n" for a, b, c, d in zip(y1, y2, u, i))
    (tmp_path / "train.csv").write_text("y1,y2,u,i\n" + rows)
    (tmp_path / "dataset.yaml").write_text(yaml.safe_dump({
        "name": "ent", "format": "csv", "train": "train.csv", "valid": "train.csv", "test": "train.csv",
        "schema": {"features": [{"name": "u", "kind": "categorical", "group": "user"},
                                {"name": "i", "kind": "categorical", "group": "item"}],
                   "labels": [{"name": "y1"}, {"name": "y2"}], "group_key": "u"}}))
    runner = CliRunner()
    runs = {}
    for name, model, tasks in (("a", "dnn", ["y1"]), ("b", "dnn", ["y2"]), ("mt", "stem", None)):
        (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump({
            "dataset": "dataset.yaml", "model": {"name": model, "hidden": [8], "embedding_init_std": 0.1},
            **({"tasks": tasks} if tasks else {}), "train": {"epochs": 1, "batch_size": 64, "progress": False}}))
        runs[name] = tmp_path / name
        res = runner.invoke(app, ["train", str(tmp_path / f"{name}.yaml"), "--run-dir", str(runs[name])])
        assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["analyze", "entanglement", str(runs["a"]), str(runs["b"]), str(runs["mt"])])
    assert res.exit_code == 0, res.output
    out = runs["mt"] / "entanglement"
    report = json.loads((out / "entanglement.json").read_text())
    assert report["tasks"] == ["y1", "y2"] and report["user"] == "u" and report["item"] == "i"
    assert report["pairs"] == n and report["selected"] == 60
    # STEM names its tables: the shared one, then one per task
    assert list(report["views"]) == ["multi-task stem shared", "multi-task stem y1 table", "multi-task stem y2 table"]
    assert len(report["gates"]["y1"]) == 3  # shared expert, then each task's
    assert (out / "distances.png").stat().st_size > 1000 and (out / "gates.png").stat().st_size > 1000


def test_distance_plot_draws_every_view(tmp_path, monkeypatch):
    from untwine.analysis import entanglement

    drawn = {}
    monkeypatch.setattr(entanglement, "save_figure", lambda fig, path: drawn.update(
        labels=[t.get_text() for t in fig.axes[0].get_legend().get_texts()]))
    rng = np.random.default_rng(0)
    views = {f"view {k}": rng.normal(size=100) for k in range(5)}
    entanglement.plot_distances(rng.normal(size=100), rng.normal(size=100), views, ("a", "b"), tmp_path / "d.png")
    assert drawn["labels"] == ["single-task a", "single-task b", *views]
