"""encode_record (one request, no pyarrow) gives exactly the arrays of encode_features over
table_from_records for the same record: random records over schemas with every feature kind."""
import numpy as np
import pyarrow as pa
import pytest

from untwine.data.encode import encode_features, table_from_records
from untwine.data.readers import BadInputError
from untwine.data.record import encode_record
from untwine.data.vocab import CountAccumulator, Vocab
from untwine.sim import SimConfig
from untwine.sim.writer import dataset_schema


def _vocabs(space, rng):
    vocabs = {}
    for f in space.sparse_features():
        if f.vocab_from is None:
            acc = CountAccumulator()
            acc.add(pa.array([str(x) for x in rng.integers(0, 30, 400)]))
            vocabs[f.name] = Vocab.from_counts(*acc.result())
    return vocabs


def _random_record(space, rng):
    s = space.schema
    rec = {}

    def pick(options, p=None):  # rng.choice would turn a mixed list into one numpy dtype
        return options[int(rng.choice(len(options), p=p))]

    for f in s.categorical:
        rec[f.source] = pick([str(rng.integers(0, 40)), int(rng.integers(0, 40)), None, "zz-unseen"])
    for f in s.numeric:
        rec[f.source] = pick([float(rng.normal() * 3), int(rng.integers(-5, 5)), None])
    for f in s.multi_categorical:
        n = int(rng.integers(0, f.max_len + 3))
        rec[f.source] = pick([[str(x) for x in rng.integers(0, 40, n)],
                              f.delimiter.join(str(x) for x in rng.integers(0, 40, n)), None, ""], p=[0.5, 0.3, 0.1, 0.1])
    for f in s.sequences:
        n = int(rng.integers(0, f.max_len + 8))
        rec[f.source] = [str(x) for x in rng.integers(0, 40, n)]
        if f.timestamps:
            rec[f.timestamps] = [int(x) for x in rng.integers(1_700_000_000, 1_700_100_000, n)]
        for side in f.side_fields:
            rec[side] = [str(x) for x in rng.integers(0, 40, n)]
    for f in s.vectors:
        rec[f.source] = [float(x) for x in rng.normal(size=f.dim)]
    if s.timestamp:
        rec[s.timestamp] = int(rng.integers(1_700_000_000, 1_800_000_000))
    if s.group_key and s.group_key not in rec:
        rec[s.group_key] = str(rng.integers(0, 9))
    return rec


def _space_of_sim():
    from untwine.core.features import FeatureSpace, NumericStats
    schema = dataset_schema(SimConfig(n_ads=50, n_users=40, ext_dim=4))
    stats = {f.name: NumericStats(transform=f.transform or "standard", mean=0.5, std=2.0, min=-3, max=9, count=10,
                                  missing=0) for f in schema.numeric}
    sizes = {f.name: 32 for f in schema.features if f.kind.value in ("categorical", "multi_categorical", "sequence")}
    return FeatureSpace(schema=schema, vocab_sizes=sizes, numeric_stats=stats)


@pytest.mark.parametrize("which", ["conftest", "sim"])
def test_encode_record_equals_the_table_path(make_space, which):
    space = make_space(1) if which == "conftest" else _space_of_sim()
    rng = np.random.default_rng(7)
    vocabs = _vocabs(space, rng)
    for _ in range(60):
        rec = _random_record(space, rng)
        want = encode_features(table_from_records([rec], space.schema), space, vocabs)
        got = encode_record(rec, space, vocabs)
        assert set(got) == set(want)
        for key in want:
            np.testing.assert_array_equal(got[key], want[key], err_msg=key)
            assert got[key].dtype == want[key].dtype and got[key].shape == want[key].shape, key


def test_bad_values_raise_like_the_table_path(make_space):
    space = make_space(1)
    rng = np.random.default_rng(0)
    vocabs = _vocabs(space, rng)
    good = _random_record(space, rng)
    for bad in ({"price": "3"}, {"user_id": ["a", "b"]}, {"img": [1.0, 2.0]}, {"img": "x"}):
        rec = {**good, **bad}
        with pytest.raises(BadInputError):
            encode_features(table_from_records([rec], space.schema), space, vocabs)
        with pytest.raises(BadInputError):
            encode_record(rec, space, vocabs)
