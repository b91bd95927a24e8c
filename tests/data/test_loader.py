import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from untwine.core.dataset_spec import DatasetSpec
from untwine.data.encode import prepare
from untwine.data.loader import BatchLoader, SplitArrays

N = 103


@pytest.fixture
def data(tmp_path):
    ids = np.arange(N)
    pq.write_table(pa.table({"row": ids.astype(str), "x": ids.astype(float), "y": (ids % 2).astype(np.int8)}),
                   tmp_path / "t.parquet")
    spec = DatasetSpec(name="rows", train=["t.parquet"], root=str(tmp_path), schema={
        "features": [{"name": "row", "kind": "categorical"}, {"name": "x", "kind": "numeric", "transform": "none"}],
        "labels": [{"name": "y"}]})
    return SplitArrays.open(prepare(spec, cache_dir=tmp_path / "c"), "train"), spec.schema


def rows_of(loader):
    return [b.numeric_raw[:, 0].long().tolist() for b in loader]


def test_every_row_once_per_epoch_and_epochs_differ(data):
    arrays, schema = data
    loader = BatchLoader(arrays, schema, 10, shuffle=True, seed=1)
    e0 = rows_of(loader)
    assert sorted(sum(e0, [])) == list(range(N)) and len(e0) == 11
    loader.set_epoch(1)
    e1 = rows_of(loader)
    assert sorted(sum(e1, [])) == list(range(N)) and e0 != e1


def test_same_seed_same_order(data):
    arrays, schema = data
    assert rows_of(BatchLoader(arrays, schema, 10, True, seed=3)) == rows_of(BatchLoader(arrays, schema, 10, True, seed=3))
    assert rows_of(BatchLoader(arrays, schema, 10, True, seed=3)) != rows_of(BatchLoader(arrays, schema, 10, True, seed=4))


def test_eval_order_is_file_order(data):
    arrays, schema = data
    assert sum(rows_of(BatchLoader(arrays, schema, 16, shuffle=False)), []) == list(range(N))


def test_batch_fields_line_up(data):
    arrays, schema = data
    b = next(iter(BatchLoader(arrays, schema, 8, shuffle=True, seed=0)))
    x = b["x"].long()
    assert b.categorical.dtype == torch.int64 and b.labels.dtype == torch.float32
    assert torch.equal(b.labels[:, 0], (x % 2).float())
    assert len(b) == 8


def test_data_parallel_shards_are_disjoint_and_equal(data):
    arrays, schema = data
    shards = [rows_of(BatchLoader(arrays, schema, 10, True, seed=0, rank=r, world_size=2)) for r in range(2)]
    assert len(shards[0]) == len(shards[1]) == 5  # 11 batches: the odd one out is dropped for equal steps
    a, b = set(sum(shards[0], [])), set(sum(shards[1], []))
    assert not a & b
    evals = [sum(rows_of(BatchLoader(arrays, schema, 10, False, rank=r, world_size=2)), []) for r in range(2)]
    assert sorted(evals[0] + evals[1]) == list(range(N))  # evaluation covers every row exactly once


def test_background_errors_surface(data):
    arrays, schema = data
    broken = SplitArrays(arrays={k: v for k, v in arrays.arrays.items() if k != "labels"}, rows=arrays.rows)
    with pytest.raises(KeyError):
        list(BatchLoader(broken, schema, 10, True))


def test_drop_last(data):
    arrays, schema = data
    assert len(BatchLoader(arrays, schema, 10, True, drop_last=True)) == 10
