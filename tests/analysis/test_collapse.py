"""Collapse analysis: IA's published properties, the rows it reads, and the CLI on a trained run."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import yaml
from typer.testing import CliRunner

from untwine.analysis.collapse import (collapse_report, embedding_tables, information_abundance, pair_spectra,
                                       singular_spectrum)
from untwine.cli.main import app
from untwine.data.vocab import NUM_RESERVED
from untwine.models import build_model


def test_ia_of_rank_one_matrix_is_one():
    rng = np.random.default_rng(0)
    m = np.outer(rng.standard_normal(50), rng.standard_normal(8))
    assert information_abundance(singular_spectrum(m)) == pytest.approx(1.0, abs=1e-9)


@pytest.mark.parametrize("d", [1, 4, 16])
def test_ia_of_orthogonal_matrix_is_its_dimension(d):
    q, _ = np.linalg.qr(np.random.default_rng(d).standard_normal((d, d)))
    assert information_abundance(singular_spectrum(q)) == pytest.approx(d, rel=1e-9)


def test_ia_hand_case_and_zero_matrix():
    assert information_abundance(np.array([4.0, 2.0, 1.0])) == pytest.approx(7 / 4)
    assert information_abundance(singular_spectrum(np.zeros((3, 2)))) == 0.0
    np.testing.assert_allclose(singular_spectrum(np.diag([3.0, 1.0, 2.0])), [3.0, 2.0, 1.0])


def test_tables_found_in_single_and_multi_embedding_models(make_space):
    space = make_space(1)
    assert [p for p, _ in embedding_tables(build_model("dnn", space))] == ["embedding"]
    assert [p for p, _ in embedding_tables(build_model("deepfm", space))] == ["embedding"]  # not its LR weights
    moe = build_model("hetero_moe", space, {"tables": [6, 4], "experts": [{"type": "gwpfm"}, {"type": "ipnn", "table": 1}]})
    assert [(p, t.dim) for p, t in embedding_tables(moe)] == [("tables.0", 6), ("tables.1", 4)]


def test_report_reads_the_rows_of_each_vocabulary_without_pad_and_oov(make_space):
    space = make_space(1, multi=False, seq=False, numeric=False, vector=False)
    model = build_model("dnn", space, {"embedding_dim": 3})
    table = model.embedding
    with torch.no_grad():
        table.table.weight.zero_()
        start = table.offsets["item_id"]
        table.table.weight[start:start + NUM_RESERVED] = 100.0  # PAD / OOV rows: must be ignored
        rows = table.table.weight[start + NUM_RESERVED:start + space.vocab_size("item_id")]
        rows[:, 0] = torch.arange(1, len(rows) + 1, dtype=torch.float)  # rank 1 -> IA 1
        c0 = table.offsets["item_cate"] + NUM_RESERVED
        table.table.weight[c0:c0 + 3] = torch.eye(3)  # item_cate: orthogonal rows, the rest zero
    report = collapse_report(model, space)
    fields = report["tables"][0]["fields"]
    assert fields["item_id"]["rows"] == space.vocab_size("item_id") - NUM_RESERVED
    assert fields["item_id"]["ia"] == pytest.approx(1.0)
    assert fields["item_cate"]["ia"] == pytest.approx(3.0)
    assert set(fields) == {"user_id", "item_id", "item_cate"}
    alarm = collapse_report(model, space, alarm=2.5)["collapsed"]
    assert {c["feature"] for c in alarm} == {"item_id", "user_id"}  # item_cate 3.0 >= 2.5


def test_frequency_weighting_follows_the_training_counts(make_space, tmp_path):
    """Counts from the run's vocabulary: a dominant value makes the weighted spectrum nearly rank one."""
    from untwine.data.vocab import Vocab
    import pyarrow as pa

    space = make_space(1, multi=False, seq=False, numeric=False, vector=False)
    model = build_model("dnn", space, {"embedding_dim": 2})
    n = space.vocab_size("item_cate") - NUM_RESERVED  # 5 values
    counts = np.array([10_000, 1, 1, 1, 1])
    for f in space.schema.categorical:
        k = space.vocab_size(f) - NUM_RESERVED
        Vocab(values=pa.array([f"v{i}" for i in range(k)]), counts=counts if f.name == "item_cate" else np.ones(k, int)
              ).save(tmp_path / f.name)
    with torch.no_grad():
        start = model.embedding.offsets["item_cate"] + NUM_RESERVED
        model.embedding.table.weight[start:start + n] = torch.tensor([[1.0, 0.0]] + [[0.0, 1.0]] * (n - 1))
    plain = collapse_report(model, space, tmp_path)["tables"][0]["fields"]["item_cate"]["ia"]
    weighted = collapse_report(model, space, tmp_path, frequency_weighted=True)["tables"][0]["fields"]["item_cate"]
    # unweighted: s = (2, 1) -> 1.5; weighted: s^2 = (10000, 4) / 10004 -> 1 + 2 / 100
    assert plain == pytest.approx(1.5)
    assert weighted["weighted"] and weighted["ia"] == pytest.approx(1.02, abs=1e-9)


def test_multi_embedding_report_has_the_tables_side_by_side(make_space):
    space = make_space(1, multi=False, seq=False, numeric=False, vector=False)
    torch.manual_seed(0)
    moe = build_model("hetero_moe", space, {"tables": [3, 3], "embedding_init_std": 1.0, "experts": [
        {"type": "flat_dnn"}, {"type": "flat_dnn", "table": 1}]})
    report = collapse_report(moe, space)
    assert report["combined"]["dim"] == 6
    t0, t1 = (t.table.weight.detach().double() for t in moe.tables)
    start, size = moe.tables[0].offsets["user_id"] + NUM_RESERVED, space.vocab_size("user_id") - NUM_RESERVED
    both = torch.cat([t0[start:start + size], t1[start:start + size]], dim=1).numpy()
    assert report["combined"]["fields"]["user_id"]["ia"] == pytest.approx(information_abundance(singular_spectrum(both)))


def test_pair_spectra_measure_elementwise_products(make_space, make_batch):
    space = make_space(1)
    torch.manual_seed(0)
    model = build_model("dnn", space, {"embedding_dim": 4, "embedding_init_std": 1.0})
    batches = [make_batch(space, 40, seed=s) for s in range(3)]
    (table,) = pair_spectra(model, batches, max_rows=100)
    assert table["rows"] == 100 and len(table["ia"]) == len(table["fields"]) == model.embedding.num_fields
    with torch.no_grad():
        fields = torch.cat([model.embedding(b)[0] for b in batches])[:100].double()
    expected = information_abundance(singular_spectrum(fields[:, 0] * fields[:, 1]))
    assert table["ia"][0][1] == pytest.approx(expected) and table["ia"][1][0] is None


def test_analyze_collapse_cli_writes_json_and_plots(tmp_path):
    rows = "".join(f"{(i * 7) % 3 == 0:d},u{i % 23},c{i % 5},{i * 0.5}\n" for i in range(400))
    (tmp_path / "train.csv").write_text("y,u,c,x\n" + rows)
    (tmp_path / "dataset.yaml").write_text(yaml.safe_dump({
        "name": "cli", "format": "csv", "train": "train.csv", "valid": "train.csv", "test": "train.csv",
        "schema": {"features": [{"name": "u", "kind": "categorical", "group": "user"},
                                {"name": "c", "kind": "categorical", "group": "item"},
                                {"name": "x", "kind": "numeric"}], "labels": [{"name": "y"}]}}))
    (tmp_path / "exp.yaml").write_text(yaml.safe_dump({
        "dataset": "dataset.yaml", "model": {"name": "hetero_moe", "tables": [6, 4], "hidden": [8], "expert_dim": 8,
                                             "experts": [{"type": "gwpfm"}, {"type": "ipnn", "table": 1}]},
        "train": {"epochs": 1, "batch_size": 64, "progress": False}}))
    runner = CliRunner()
    run = tmp_path / "run"
    assert runner.invoke(app, ["train", str(tmp_path / "exp.yaml"), "--run-dir", str(run)]).exit_code == 0
    res = runner.invoke(app, ["analyze", "collapse", str(run), "--pairs", "200", "--weighted"])
    assert res.exit_code == 0, res.output
    out = json.loads((run / "collapse" / "collapse.json").read_text())["run"]
    assert [t["dim"] for t in out["tables"]] == [6, 4] and out["frequency_weighted"]
    assert set(out["tables"][0]["fields"]) == {"u", "c"}
    assert out["pairs"][0]["rows"] == 200
    for png in ("spectra_run.png", "ia_per_feature.png", "pair_ia_run_0.png", "pair_ia_run_1.png"):
        assert (run / "collapse" / png).stat().st_size > 1000
    res = runner.invoke(app, ["analyze", "collapse", str(run), "--alarm", "1000", "--out", str(tmp_path / "a")])
    assert res.exit_code == 0  # no feature can reach IA 1000 (ceiling min(n, d)): nothing to alarm on
    # c has 5 values in a 4-wide table: its ceiling is 4, reached only by a perfectly flat spectrum
    res = runner.invoke(app, ["analyze", "collapse", str(run), "--alarm", "4", "--out", str(tmp_path / "b")])
    assert res.exit_code == 1 and "collapsed: run tables.1 c IA" in res.output
