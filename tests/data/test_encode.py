import os
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from untwine.core.dataset_spec import DatasetSpec
from untwine.data.encode import encode_with_vocab, prepare
from untwine.data.loader import SplitArrays
from untwine.data.vocab import OOV

SCHEMA = {
    "features": [
        {"name": "user", "kind": "categorical", "group": "user"},
        {"name": "item", "kind": "categorical", "group": "item"},
        {"name": "tags", "kind": "multi_categorical", "max_len": 2, "group": "item"},
        {"name": "price", "kind": "numeric", "transform": "log1p_standard", "group": "item"},
        {"name": "hist", "kind": "sequence", "max_len": 3, "vocab_from": "item", "timestamps": "hist_ts",
         "side_fields": {"hist_tag": "tags"}, "group": "user"},
        {"name": "vec", "kind": "vector", "dim": 2},
    ],
    "labels": [{"name": "click"}, {"name": "buy", "mask_column": "click"}],
    "group_key": "user",
}


def write(tmp_path, name, rows):
    cols = list(zip(*rows))
    table = pa.table({
        "user": pa.array(cols[0]), "item": pa.array(cols[1]), "tags": pa.array(cols[2]),
        "price": pa.array(cols[3], pa.float64()), "hist": pa.array(cols[4]), "hist_ts": pa.array(cols[5]),
        "hist_tag": pa.array(cols[6]), "vec": pa.array(cols[7], pa.list_(pa.float32())),
        "click": pa.array(cols[8], pa.int8()), "buy": pa.array(cols[9], pa.int8())})
    pq.write_table(table, tmp_path / name)
    return name


TRAIN = [
    ("u1", "i1", "t1|t2|t3", 1.0, "i2|i3|i1|i2", "1|2|3|4", "t1|t1|t2|t3", [0.1, 0.2], 1, 0),
    ("u2", "i2", "t2", None, "", "", "", [0.3, 0.4], 1, 1),
    ("u1", "i2", "", 100.0, "i1", "9", "t2", [0.5, 0.6], 0, 0),
]
TEST = [("u9", "i7", "t9|t1", 3.0, "i7|i1", "5|6", "t9|t1", [0.0, 0.0], 0, 0)]


@pytest.fixture
def spec(tmp_path):
    write(tmp_path, "train.parquet", TRAIN)
    write(tmp_path, "test.parquet", TEST)
    d = DatasetSpec(name="toy", train=["train.parquet"], test=["test.parquet"], schema=SCHEMA, root=str(tmp_path))
    return d


def test_encoded_arrays(spec, tmp_path):
    p = prepare(spec, cache_dir=tmp_path / "c")
    a = SplitArrays.open(p, "train").arrays
    # vocab ids: item counts i1:1, i2:2 -> i2=2, i1=3
    assert a["categorical"][:, 1].tolist() == [3, 2, 2]
    # tag counts t2:2, t1:1, t3:1 -> t2=2, t1=3, t3=4 (ties by value); the first max_len are kept
    assert a["multi.tags"].tolist() == [[3, 2], [2, 0], [0, 0]]
    # sequences keep the most recent max_len, oldest first, item vocabulary shared
    assert a["seq.hist"].tolist() == [[OOV, 3, 2], [0, 0, 0], [3, 0, 0]]  # i3 unseen as a target item
    assert a["seq.hist.ts"].tolist() == [[2, 3, 4], [0, 0, 0], [9, 0, 0]]
    assert a["seq.hist.hist_tag"].tolist() == [[3, 2, 4], [0, 0, 0], [2, 0, 0]]
    np.testing.assert_allclose(a["vec.vec"], [[0.1, 0.2], [0.3, 0.4], [0.5, 0.6]])
    assert np.isnan(a["numeric_raw"][1, 0]) and a["numeric"][1, 0] == 0.0
    x = np.log1p(np.array([1.0, 100.0]))
    np.testing.assert_allclose(a["numeric"][[0, 2], 0], (x - x.mean()) / x.std(), rtol=1e-5)
    assert a["labels"].tolist() == [[1, 0], [1, 1], [0, 0]]
    assert a["label_mask"][:, 1].tolist() == [1, 1, 0]
    assert a["groups"][0] == a["groups"][2] != a["groups"][1]
    assert p.space.vocab_sizes["hist"] == p.space.vocab_sizes["item"] == 4


def test_unseen_values_at_test_time_map_to_oov(spec, tmp_path):
    p = prepare(spec, cache_dir=tmp_path / "c")
    a = SplitArrays.open(p, "test").arrays
    assert a["categorical"].tolist() == [[OOV, OOV]]
    assert a["multi.tags"].tolist() == [[OOV, 3]]  # t9 unseen, t1 known
    assert a["seq.hist"].tolist() == [[OOV, 3, 0]]


def test_second_run_reuses_cache_and_a_changed_file_does_not(spec, tmp_path):
    first = prepare(spec, cache_dir=tmp_path / "c")
    assert not first.from_cache
    second = prepare(spec, cache_dir=tmp_path / "c")
    assert second.from_cache and second.root == first.root
    time.sleep(0.01)
    write(tmp_path, "train.parquet", TRAIN[:2])
    third = prepare(spec, cache_dir=tmp_path / "c")
    assert not third.from_cache and third.root != first.root and third.rows["train"] == 2


def test_a_changed_schema_changes_the_fingerprint(spec, tmp_path):
    first = prepare(spec, cache_dir=tmp_path / "c")
    schema = dict(SCHEMA, features=[dict(f, min_count=2) if f["name"] == "item" else f for f in SCHEMA["features"]])
    other = prepare(spec.model_copy(update={"schema_": type(spec.schema).model_validate(schema)}),
                    cache_dir=tmp_path / "c")
    assert other.root != first.root
    assert other.space.vocab_sizes["item"] == 3  # only i2 survives min_count=2


def test_no_temporary_folders_left_behind(spec, tmp_path):
    prepare(spec, cache_dir=tmp_path / "c")
    assert [n for n in os.listdir(tmp_path / "c") if "tmp" in n] == []


def test_encode_with_saved_vocab_matches_training_encoding(spec, tmp_path):
    p = prepare(spec, cache_dir=tmp_path / "c")
    q = encode_with_vocab(spec, p.space, p.root / "vocab", "test", cache_dir=tmp_path / "c2")
    for name, arr in SplitArrays.open(p, "test").arrays.items():
        np.testing.assert_array_equal(arr, SplitArrays.open(q, "test").arrays[name])


def test_vector_of_wrong_width_is_an_error(tmp_path):
    rows = [r[:7] + ([0.1, 0.2, 0.3],) + r[8:] for r in TRAIN]
    write(tmp_path, "train.parquet", rows)
    spec = DatasetSpec(name="v", train=["train.parquet"], schema=SCHEMA, root=str(tmp_path))
    with pytest.raises(ValueError, match="expected a vector of 2 numbers, found 3"):
        prepare(spec, cache_dir=tmp_path / "c")


def test_misaligned_timestamps_are_an_error(tmp_path):
    rows = [TRAIN[0][:5] + ("1|2",) + TRAIN[0][6:]] + TRAIN[1:]
    write(tmp_path, "train.parquet", rows)
    spec = DatasetSpec(name="ts", train=["train.parquet"], schema=SCHEMA, root=str(tmp_path))
    with pytest.raises(ValueError, match="'hist_ts' has 2 entries but sequence 'hist' has 4"):
        prepare(spec, cache_dir=tmp_path / "c")


def test_numeric_stats_hold_train_quantiles_and_integer_flag(spec, tmp_path):
    st = prepare(spec, cache_dir=tmp_path / "c").space.numeric_stats["price"]
    # train prices 1.0, missing, 100.0: quantiles of the raw values, missing excluded
    assert len(st.quantiles) == 1001
    assert st.quantiles[0] == 1.0 and st.quantiles[-1] == 100.0
    assert st.quantiles[500] == pytest.approx(np.quantile([1.0, 100.0], 0.5))
    assert st.integer and st.missing == 1


def test_quantile_reservoir_is_uniform_over_a_long_stream(monkeypatch):
    from untwine.data import encode

    monkeypatch.setattr(encode, "QUANTILE_SAMPLE", 2_000)
    acc = encode._NumericAccumulator("standard")
    values = np.arange(100_000, dtype=np.float64)  # in order: a biased sampler keeps the head or the tail
    for chunk in np.array_split(values, 37):
        acc.add(chunk)
    q = acc.stats().quantiles
    assert acc.sample.size == 2_000 and acc.seen == 100_000
    for p in (0.1, 0.5, 0.9):
        assert abs(q[int(p * 1000)] - p * 100_000) < 4_000  # within a few sampling standard errors
    assert acc.stats().integer
    acc.add(np.array([0.5]))
    assert not acc.stats().integer


def test_sample_timestamp_is_encoded_and_checked(tmp_path):
    schema = {"features": [{"name": "item", "kind": "categorical"}], "labels": [{"name": "click"}],
              "timestamp": "ts"}
    pq.write_table(pa.table({"item": ["a", "b"], "ts": pa.array([1_700_000_000, 1_700_000_123], pa.int64()),
                             "click": pa.array([0, 1], pa.int8())}), tmp_path / "train.parquet")
    spec = DatasetSpec(name="ts", train=["train.parquet"], schema=schema, root=str(tmp_path))
    a = SplitArrays.open(prepare(spec, cache_dir=tmp_path / "c"), "train").arrays
    assert a["timestamp"].dtype == np.int64 and a["timestamp"].tolist() == [1_700_000_000, 1_700_000_123]
    pq.write_table(pa.table({"item": ["a", "b"], "ts": pa.array([5, None], pa.int64()),
                             "click": pa.array([0, 1], pa.int8())}), tmp_path / "bad.parquet")
    bad = DatasetSpec(name="ts-bad", train=["bad.parquet"], schema=schema, root=str(tmp_path))
    with pytest.raises(Exception, match=r"row 2.*timestamp column 'ts' is empty"):
        prepare(bad, cache_dir=tmp_path / "c2")


def with_vector_table(tmp_path, rows, dim=3):
    pq.write_table(pa.table({"item": [k for k, _ in rows], "vector": pa.array([v for _, v in rows],
                                                                             pa.list_(pa.float32()))}),
                   tmp_path / "item_vectors.parquet")
    schema = {**SCHEMA, "vector_tables": [{"name": "text", "key": "item", "file": "item_vectors.parquet", "dim": dim}]}
    write(tmp_path, "train.parquet", TRAIN)
    write(tmp_path, "test.parquet", TEST)
    return DatasetSpec(name="toy-vt", train=["train.parquet"], test=["test.parquet"], schema=schema, root=str(tmp_path))


def test_vector_table_is_aligned_with_the_key_vocabulary(tmp_path):
    logs = []
    spec = with_vector_table(tmp_path, [("i1", [1, 0, 0]), ("i7", [0, 0, 9]), ("i2", [0, 2, 0])])
    p = prepare(spec, cache_dir=tmp_path / "c", log=logs.append)
    table = p.vector_table("text")
    vocab = p.vocab("item")
    assert table.shape == (vocab.size, 3) and table.dtype == np.float32
    i1, i2 = vocab.encode(pa.array(["i1", "i2"]))
    assert table[i1].tolist() == [1, 0, 0] and table[i2].tolist() == [0, 2, 0]
    assert not table[:2].any()  # PAD and OOV rows are zero
    assert any("1 of 3 keys are not in the 'item' vocabulary" in m for m in logs)  # i7: test only, dropped
    # a changed side file re-encodes
    time.sleep(0.01)
    spec2 = with_vector_table(tmp_path, [("i1", [5, 5, 5])])
    assert prepare(spec2, cache_dir=tmp_path / "c").root != p.root


def test_vector_table_of_wrong_width_names_file_and_row(tmp_path):
    spec = with_vector_table(tmp_path, [("i1", [1, 0, 0]), ("i2", [1, 2])])
    with pytest.raises(Exception, match=r"item_vectors.parquet: row 2, column 'vector': expected a vector of 3"):
        prepare(spec, cache_dir=tmp_path / "c")


def test_training_fills_the_table_and_evaluation_reads_it_from_the_weights(tmp_path):
    import torch
    import yaml

    from untwine.train.config import ExperimentConfig
    from untwine.train.run import evaluate_run, load_run, run_experiment

    spec = with_vector_table(tmp_path, [("i1", [1, 0, 0]), ("i2", [0, 2, 0])])
    spec = spec.model_copy(update={"valid": ["train.parquet"]})
    (tmp_path / "dataset.yaml").write_text(yaml.safe_dump(spec.model_dump(mode="json", by_alias=True, exclude={"root"})))
    cfg = ExperimentConfig.from_dict({"dataset": str(tmp_path / "dataset.yaml"),
                                      "model": {"name": "dnn", "hidden": [4], "sequence_encoder": {
                                          "name": "pool", "similarity": "simtier"}},
                                      "train": {"epochs": 1, "batch_size": 2, "progress": False}})
    r = run_experiment(cfg, run_dir=tmp_path / "run", log=lambda *_: None)
    _, _, model = load_run(tmp_path / "run")
    buf = model.embedding.sequences[0].vector_table_text
    trained = r.model_object.embedding.sequences[0]
    assert torch.equal(buf, trained.vector_table_text)
    assert sorted(buf.abs().sum(dim=1).tolist())[-2:] == [1.0, 1.0]  # i1 and i2, normalised; the rest zero
    assert buf.abs().sum() == 2.0
    assert "click" in evaluate_run(tmp_path / "run", split="test")
