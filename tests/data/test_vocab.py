import numpy as np
import pyarrow as pa
import pytest

from untwine.data.vocab import MISSING, OOV, PAD, CountAccumulator, Vocab, fnv1a64, fnv1a64_text


def naive_fnv1a64(s: str) -> int:
    h = 0xCBF29CE484222325
    for b in s.encode():
        h = ((h ^ b) * 0x100000001B3) % 2**64
    return h


def test_fnv1a64_matches_reference_and_published_vectors():
    values = ["", "a", "foobar", "ünïcode", "x" * 40]
    got = fnv1a64(pa.array(values)).tolist()
    assert got == [naive_fnv1a64(v) for v in values]
    assert got[1] == 0xAF63DC4C8601EC8C  # FNV-1a 64 test vector for "a"
    assert got[2] == 0x85944171F73967E8  # ... and for "foobar"


def test_fnv1a64_of_one_text_equals_the_vectorised_hash():
    values = ["", "a", "foobar", "ünïcode", "x" * 40, "12345", None]
    assert [fnv1a64_text(v) for v in values] == fnv1a64(pa.array(values, pa.string())).tolist()
    assert fnv1a64_text(None) == fnv1a64_text(MISSING)


def test_fnv1a64_on_sliced_arrays():
    arr = pa.array(["zz", "a", "foobar"]).slice(1)
    assert fnv1a64(arr).tolist() == [naive_fnv1a64("a"), naive_fnv1a64("foobar")]


def test_ids_ordered_by_count_then_value_and_min_count():
    acc = CountAccumulator()
    acc.add(pa.array(["b", "a", "c", "b", "a", None]))
    acc.add(pa.array(["d", "b"]))
    v = Vocab.from_counts(*acc.result(), min_count=2)
    assert v.values.to_pylist() == ["b", "a"]  # b:3, a:2; c, d, missing below min_count
    ids = v.encode(pa.array(["a", "b", "c", "zzz", None])).tolist()
    assert ids == [3, 2, OOV, OOV, OOV]
    assert v.size == 4 and PAD == 0


def test_missing_value_gets_its_own_id_when_frequent():
    acc = CountAccumulator()
    acc.add(pa.array([None, None, "a"]))
    v = Vocab.from_counts(*acc.result())
    assert v.encode(pa.array([None])).tolist() == [2]
    assert v.decode(np.array([2, 3, 1, 0])) == [MISSING, "a", None, None]


def test_accumulator_merges_many_chunks_exactly():
    rng = np.random.default_rng(0)
    data = rng.integers(0, 50, size=5000)
    acc = CountAccumulator()
    for part in np.array_split(data, 40):  # more chunks than the compaction threshold
        acc.add(pa.array(part.astype(str)))
    vals, counts = acc.result()
    got = dict(zip(vals.to_pylist(), counts.tolist()))
    want = {str(k): int(c) for k, c in zip(*np.unique(data, return_counts=True))}
    assert got == want


def test_hashing_vocab_is_stable_and_in_range():
    v = Vocab.hashing(7)
    ids = v.encode(pa.array(["a", "b", "a", None]))
    assert ids[0] == ids[2]
    assert ((ids >= 2) & (ids < 9)).all()
    assert v.size == 9
    assert ids[0] == 2 + naive_fnv1a64("a") % 7


def test_save_load_roundtrip(tmp_path):
    v = Vocab.from_counts(pa.array(["x", "y"]), np.array([5, 9]), min_count=1)
    v.save(tmp_path / "f")
    w = Vocab.load(tmp_path / "f")
    assert w.values.to_pylist() == ["y", "x"] and w.size == v.size
    with pytest.raises(ValueError):
        Vocab.hashing(3).decode(np.array([2]))


def test_small_inputs_take_the_dict_path_with_identical_ids():
    """Requests (a few values) are looked up in a cached dict; files go through pyarrow's index_in: same ids."""
    from untwine.data.vocab import SMALL_INPUT

    rng = np.random.default_rng(0)
    acc = CountAccumulator()
    acc.add(pa.array([str(x) for x in rng.integers(0, 500, 5000)] + [None] * 3))
    v = Vocab.from_counts(*acc.result(), min_count=2)
    probe = [str(x) for x in rng.integers(0, 700, 3 * SMALL_INPUT)] + [None, MISSING]
    big = v.encode(pa.array(probe))  # longer than SMALL_INPUT: index_in
    small = np.concatenate([v.encode(pa.array(probe[i:i + 50])) for i in range(0, len(probe), 50)])
    assert len(probe) > SMALL_INPUT and (big == small).all()
    assert (big == OOV).any() and (big > OOV).any()
