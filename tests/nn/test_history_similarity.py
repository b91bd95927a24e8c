"""Target-vs-history similarity (SPEC 2.3): cosine per behaviour, MNSE pooling and the SimTier histogram,
against per-item loops; padding and missing vectors; the sequence field that reads a vector table."""
from __future__ import annotations

import pytest
import torch

from untwine.core.features import FeatureSpace
from untwine.core.schema import Feature, Label, Schema
from untwine.nn.embedding import FieldEmbedding
from untwine.nn.sequence import HistorySimilarity, cosine_to_target


def test_cosine_to_target_matches_a_loop_and_marks_undefined_items():
    g = torch.Generator().manual_seed(0)
    target, items = torch.randn(3, 4, generator=g), torch.randn(3, 5, 4, generator=g)
    items[1, 2] = 0.0  # an item without a vector
    target[2] = 0.0  # a target without a vector
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]], dtype=torch.bool)
    cos, valid = cosine_to_target(target, items, mask)
    for b in range(3):
        for i in range(5):
            ok = bool(mask[b, i]) and items[b, i].norm() > 0 and target[b].norm() > 0
            assert bool(valid[b, i]) == ok
            if ok:
                expect = torch.dot(target[b], items[b, i]) / (target[b].norm() * items[b, i].norm())
                assert cos[b, i].item() == pytest.approx(expect.item(), abs=1e-6)


def test_simtier_histogram_hand_case():
    layer = HistorySimilarity(1, 3, "simtier", bins=4)
    sims = torch.tensor([[-1.0, 0.0, 0.95, 1.0, 0.3]]).unsqueeze(-1)  # bins of width 0.5 from -1
    mask = torch.tensor([[True, True, True, True, False]])  # the last position is padding
    valid = mask.clone().unsqueeze(-1)
    valid[0, 1, 0] = False  # s = 0 has no vector: counted in the history, not in a bin
    hist = layer.histogram(sims, valid, mask)
    assert hist[0, 0].tolist() == [0.25, 0.0, 0.0, 0.5]
    out = layer(sims, valid, mask)
    torch.testing.assert_close(out[0, 0], hist[0, 0] @ layer.weight[0] + layer.bias[0])


def test_mnse_similarity_is_the_mean_of_per_item_codes_and_padding_changes_nothing():
    torch.manual_seed(0)
    layer = HistorySimilarity(2, 4, "mnse", max_value=20, init_std=0.5)
    g = torch.Generator().manual_seed(1)
    sims = torch.rand(3, 6, 2, generator=g) * 2 - 1
    mask = torch.tensor([[1, 1, 1, 1, 0, 0], [1, 0, 0, 0, 0, 0], [0, 0, 0, 0, 0, 0]], dtype=torch.bool)
    valid = mask.unsqueeze(-1).expand(3, 6, 2).clone()
    valid[0, 1, 1] = False  # missing vector in table 1: the missing code, still in the mean
    out = layer(sims, valid, mask)
    mnse = layer.mnse
    for b in range(3):
        for p in range(2):
            items = [i for i in range(6) if mask[b, i]]
            if not items:
                expect = mnse(torch.zeros(1, 2, dtype=torch.long), torch.ones(1, 2, dtype=torch.bool))[0, p]
            else:
                vecs = []
                for i in items:
                    code = torch.round((sims[b, i] + 1) / 2 * 20).long().unsqueeze(0)
                    vecs.append(mnse(code, (~valid[b, i]).unsqueeze(0))[0, p])
                expect = torch.stack(vecs).mean(0)
            torch.testing.assert_close(out[b, p], expect)
    # padded positions may hold anything
    noisy = sims.clone()
    noisy[~mask] = 0.123
    torch.testing.assert_close(layer(noisy, valid, mask), out)


def space_with_table(similarity: str, encoder: str = "pool") -> FeatureSpace:
    feats = [Feature(name="item_id", kind="categorical", group="item"),
             Feature(name="cate", kind="categorical", group="item"),
             Feature(name="hist", kind="sequence", group="user", max_len=4, vocab_from="item_id",
                     side_fields={"hist_cate": "cate"},
                     encoding={"name": encoder, "similarity": similarity})]
    schema = Schema(features=feats, labels=[Label(name="y")],
                    vector_tables=[{"name": "text", "key": "item_id", "file": "t.parquet", "dim": 3},
                                   {"name": "i2v", "key": "item_id", "file": "i.parquet", "dim": 2}])
    return FeatureSpace(schema=schema, vocab_sizes={"item_id": 6, "cate": 4, "hist": 6})


@pytest.mark.parametrize("similarity", ["mnse", "simtier"])
@pytest.mark.parametrize("encoder", ["pool", "din", "tim"])
def test_sequence_field_adds_one_similarity_field_per_table(similarity, encoder, make_batch):
    space = space_with_table(similarity, encoder)
    torch.manual_seed(0)
    fe = FieldEmbedding(space, 5)
    plain = FieldEmbedding(space_with_table("none", encoder), 5)
    assert fe.num_fields == plain.num_fields + 2
    assert fe.field_names()[-2:] == ["hist~text", "hist~i2v"]
    seq = fe.sequences[0]
    g = torch.Generator().manual_seed(3)
    seq.set_vector_table("text", torch.randn(6, 3, generator=g))
    seq.set_vector_table("i2v", torch.randn(6, 2, generator=g))
    batch = make_batch(space, 5)
    fields, _ = fe(batch)
    assert fields.shape == (5, fe.num_fields, 5)
    torch.testing.assert_close(fields[:, -2:], seq.similarity_fields(batch))
    assert "sequences.0.vector_table_text" in fe.state_dict()  # saved with the weights
    with pytest.raises(ValueError, match="expects \\(6, 3\\)"):
        seq.set_vector_table("text", torch.zeros(5, 3))


def test_similarity_needs_a_table_keyed_by_the_sequence_vocabulary():
    feats = [Feature(name="item_id", kind="categorical"),
             Feature(name="hist", kind="sequence", max_len=4, vocab_from="item_id", encoding={"name": "pool", "similarity": "mnse"})]
    space = FeatureSpace(schema=Schema(features=feats, labels=[Label(name="y")]), vocab_sizes={"item_id": 6, "hist": 6})
    with pytest.raises(ValueError, match="needs a vector table keyed by 'item_id'"):
        FieldEmbedding(space, 4)
    with pytest.raises(ValueError, match="must name a categorical feature"):
        Schema(features=feats, labels=[Label(name="y")], vector_tables=[{"name": "t", "key": "hist", "file": "x", "dim": 2}])


def test_matmul_and_gather_paths_agree_with_raw_cosines(make_batch, monkeypatch):
    space = space_with_table("mnse")
    torch.manual_seed(0)
    fe = FieldEmbedding(space, 4)
    seq = fe.sequences[0]
    g = torch.Generator().manual_seed(5)
    raw = {"text": torch.randn(6, 3, generator=g) * 7, "i2v": torch.randn(6, 2, generator=g)}
    raw["text"][3] = 0.0  # item 3 has no text vector
    for name, rows in raw.items():
        seq.set_vector_table(name, rows)
    batch = make_batch(space, 6)
    captured = []
    monkeypatch.setattr(seq.similarity, "forward", lambda s, v, m: captured.append((s, v)) or s.new_zeros(len(s), 2, 4))
    seq.similarity_fields(batch)
    monkeypatch.setattr(type(seq), "GRAM_LIMIT", 0)
    seq.similarity_fields(batch)
    (s_mm, v_mm), (s_g, v_g) = captured
    assert torch.equal(v_mm, v_g)
    torch.testing.assert_close(s_mm[v_mm], s_g[v_g], rtol=1e-5, atol=1e-6)
    ids, target = batch.seq["hist"], batch.categorical[:, 0]
    expect, valid = cosine_to_target(raw["text"][target], raw["text"][ids], ids > 0)
    assert torch.equal(valid, v_mm[..., 0])
    torch.testing.assert_close(s_mm[..., 0][valid], expect[valid], rtol=1e-5, atol=1e-6)


def test_similarity_pairs_with_different_encodings_are_an_error():
    feats = [Feature(name="u1", kind="vector", dim=2, pair="i1", encoding={"name": "similarity", "max_value": 10}),
             Feature(name="i1", kind="vector", dim=2),
             Feature(name="u2", kind="vector", dim=2, pair="i2", encoding={"name": "similarity", "max_value": 50}),
             Feature(name="i2", kind="vector", dim=2)]
    space = FeatureSpace(schema=Schema(features=feats, labels=[Label(name="y")]))
    with pytest.raises(ValueError, match="must share one encoding"):
        FieldEmbedding(space, 4)
