"""P5V: P5's samples plus per-item vector tables (text, train-only item2vec), aligned at encoding.

Needs the shared data folder and the text extra (``pip install 'untwine[text]'``); skips otherwise.
"""
from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest

from untwine.core.dataset_spec import DatasetSpec
from untwine.data.recipes import get_recipe, p5v_seq_ml100k_vectors

from test_pretrained import _vec, build_recipes, item2vec_of_train_file, item2vec_side  # noqa: E402

SPLITS = ("train", "valid", "test")


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    return build_recipes(tmp_path_factory, "p5v", "p5")


def test_registered_under_its_names():
    r = get_recipe("p5v")
    assert r is p5v_seq_ml100k_vectors.RECIPE and r.protocol == "P5V" and get_recipe("P5").key == "p5"


@pytest.mark.slow
def test_same_samples_as_p5_and_tables_in_the_schema(built):
    a, b = DatasetSpec.from_yaml(built["p5v"]), DatasetSpec.from_yaml(built["p5"])
    for s in SPLITS:
        assert pq.read_table(a.files(s)[0]).equals(pq.read_table(b.files(s)[0])), s
    assert [(t.name, t.key, t.dim) for t in a.schema.vector_tables] == [("text", "item_id", 384), ("i2v", "item_id", 32)]
    assert a.schema.features == b.schema.features


@pytest.mark.slow
def test_item2vec_from_train_targets_only_and_text_from_the_model(built):
    spec = DatasetSpec.from_yaml(built["p5v"])
    expect, item = item2vec_of_train_file(pq.read_table(spec.files("train")[0]))
    side, ids = item2vec_side(built["p5v"])
    np.testing.assert_array_equal(_vec(side, "vector"), expect[ids])
    assert not _vec(side, "vector")[~np.isin(ids, item)].any()  # never a train target: no vector
    text = pq.read_table(built["p5v"].parent / "item_text_vectors.parquet")
    np.testing.assert_allclose(np.linalg.norm(_vec(text, "vector"), axis=1), 1.0, atol=1e-5)


@pytest.mark.slow
def test_encoded_tables_follow_the_item_vocabulary(built, tmp_path):
    from untwine.data.encode import prepare as encode

    prepared = encode(DatasetSpec.from_yaml(built["p5v"]), cache_dir=tmp_path / "cache", log=lambda *a: None)
    vocab = prepared.vocab("item_id")
    text = prepared.vector_table("text")
    side = pq.read_table(built["p5v"].parent / "item_text_vectors.parquet")
    keys = side.column("item_id").to_pylist()
    ids = vocab.encode(side.column("item_id"))
    seen = ids >= 2
    np.testing.assert_array_equal(text[ids[seen]], _vec(side, "vector")[seen])
    assert text.shape == (vocab.size, 384) and not text[:2].any()
    assert seen.sum() < len(keys)  # movies never in a train sample stay out of the vocabulary
