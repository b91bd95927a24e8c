"""Reference tests for FieldEmbedding and masked_mean against per-field lookups done by hand."""
from __future__ import annotations

import pytest
import torch

from untwine.core.schema import VectorEncoding
from untwine.nn.embedding import FieldEmbedding, masked_mean

D = 4


def owned_slices(fe: FieldEmbedding, space) -> dict[str, torch.Tensor]:
    """Each vocabulary owner's rows of the fused table (shared features map to their owner's slice)."""
    out = {}
    for f in space.sparse_features():
        owner = space.schema.vocab_owner(f)
        start = fe.offsets[owner]
        out[f.name] = fe.table.weight[start:start + space.vocab_size(owner)]
    return out


def pool(rows: torch.Tensor, ids: torch.Tensor, how: str) -> torch.Tensor:
    """Naive pooling of one row's ids: python loop over the non-padding positions."""
    picked = [rows[i] for i in ids.tolist() if i != 0]
    if not picked:
        return torch.zeros(rows.shape[1], dtype=rows.dtype)
    total = torch.stack(picked).sum(0)
    return total if how == "sum" else total / len(picked)


def naive_fields(fe: FieldEmbedding, space, batch) -> torch.Tensor:
    """(B, F, D) in the layer's field order: categorical, multi, sequences (+ side fields), numeric, vectors."""
    s = space.schema
    sl = owned_slices(fe, space)
    B = len(batch)
    rows = []
    for b in range(B):
        fields = []
        for j, f in enumerate(s.categorical):
            fields.append(sl[f.name][batch.categorical[b, j]])
        for f in s.multi_categorical:
            fields.append(pool(sl[f.name], batch.multi[f.name][b], f.pooling))
        for f in s.sequences:  # each sequence: its items, then its side fields
            fields.append(pool(sl[f.name], batch.seq[f.name][b], f.pooling))
            for side, ref in f.side_fields.items():
                fields.append(pool(sl[ref], batch.seq[f"{f.name}.{side}"][b], f.pooling))
        if fe.numeric is not None:
            scaled = fe.numeric.groups[0]  # value x field vector, the field's missing vector for NaN
            for k, _ in enumerate(s.numeric):
                fields.append(scaled.missing[k] if batch.numeric_raw[b, k].isnan()
                              else batch.numeric[b, k] * scaled.weight[k])
        for f in s.vectors:
            W, bias = fe.vector_proj[f.name].weight, fe.vector_proj[f.name].bias
            fields.append(W @ batch.vectors[f.name][b] + bias)
        rows.append(torch.stack(fields))
    return torch.stack(rows) if rows else torch.zeros(0, fe.num_fields, fe.dim)


def _fe(space, **kw):
    torch.manual_seed(0)
    return FieldEmbedding(space, D, init_std=1.0, **kw)


# ---------------------------------------------------------------- masked_mean

def test_masked_mean_hand_case():
    emb = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]],
                        [[7.0, 8.0], [9.0, 9.0], [1.0, 1.0]],
                        [[2.0, 2.0], [4.0, 4.0], [6.0, 6.0]]])
    ids = torch.tensor([[4, 0, 7], [0, 0, 0], [3, 5, 9]])
    torch.testing.assert_close(masked_mean(emb, ids), torch.tensor([[3.0, 4.0], [0.0, 0.0], [4.0, 4.0]]))
    torch.testing.assert_close(masked_mean(emb, ids, "sum"), torch.tensor([[6.0, 8.0], [0.0, 0.0], [12.0, 12.0]]))


# ---------------------------------------------------------------- table layout and lookups

def test_table_layout_disjoint_owner_slices(make_space):
    space = make_space()
    fe = _fe(space)
    owners = [f for f in space.sparse_features() if f.vocab_from is None]
    assert fe.table.num_embeddings == sum(space.vocab_size(f) for f in owners)
    spans = sorted((fe.offsets[f.name], fe.offsets[f.name] + space.vocab_size(f)) for f in owners)
    assert spans[0][0] == 0
    for (_, end), (start, _) in zip(spans, spans[1:]):
        assert end == start  # contiguous, non-overlapping
    assert spans[-1][1] == fe.table.num_embeddings


@pytest.mark.parametrize("kw", [dict(), dict(numeric=False, vector=False), dict(multi=False, seq=False),
                                dict(categorical=False, seq=False), dict(side=False)])
@pytest.mark.parametrize("B", [1, 6])
def test_fused_lookup_equals_per_field_lookups(make_space, make_batch, kw, B):
    space = make_space(**kw)
    fe = _fe(space)
    batch = make_batch(space, B, seed=3)
    fields, dense = fe(batch)
    assert dense is None
    assert fields.shape == (B, fe.num_fields, D)
    torch.testing.assert_close(fields, naive_fields(fe, space, batch))
    assert fe.output_dim == fe.num_fields * D
    assert fe.flat(batch).shape == (B, fe.output_dim)
    torch.testing.assert_close(fe.flat(batch), fields.flatten(1))


def test_field_count(make_space):
    space = make_space()
    s = space.schema
    expected = (len(s.categorical) + len(s.multi_categorical) + len(s.sequences)
                + sum(len(f.side_fields) for f in s.sequences) + len(s.numeric) + len(s.vectors))
    assert _fe(space).num_fields == expected == 3 + 2 + 2 + 2 + 2


def test_empty_batch(make_space, make_batch):
    space = make_space()
    fe = _fe(space)
    fields, _ = fe(make_batch(space, 0))
    assert fields.shape == (0, fe.num_fields, D)


def test_sequence_shares_rows_with_vocab_owner(make_space, make_batch):
    space = make_space()
    fe = _fe(space)
    assert fe.offsets["hist"] == fe.offsets["item_id"]
    batch = make_batch(space, 5, seed=1)
    j_item = [f.name for f in space.schema.categorical].index("item_id")
    j_cate = [f.name for f in space.schema.categorical].index("item_cate")
    # history = [current item, pad...]; side field = [current category, pad...]
    batch.seq["hist"] = torch.zeros_like(batch.seq["hist"])
    batch.seq["hist"][:, 0] = batch.categorical[:, j_item]
    batch.seq["hist.cate"] = torch.zeros_like(batch.seq["hist.cate"])
    batch.seq["hist.cate"][:, 0] = batch.categorical[:, j_cate]
    fields, _ = fe(batch)
    n_cat, n_multi = len(space.schema.categorical), len(space.schema.multi_categorical)
    torch.testing.assert_close(fields[:, n_cat + n_multi], fields[:, j_item])
    torch.testing.assert_close(fields[:, n_cat + n_multi + 1], fields[:, j_cate])
    # and the sequence's gradient lands on item_id's rows only
    fe.zero_grad()
    fields[:, n_cat + n_multi].sum().backward()
    rows = set(torch.nonzero(fe.table.weight.grad.abs().sum(1)).flatten().tolist())
    assert rows == set((batch.categorical[:, j_item] + fe.offsets["item_id"]).tolist())


def test_pooling_ignores_padding(make_space):
    space = make_space(numeric=False, vector=False, seq=False)
    fe = _fe(space)
    s = space.schema
    n = 3
    from untwine.core.batch import Batch
    batch = Batch(categorical=torch.full((n, len(s.categorical)), 2, dtype=torch.long))
    batch.multi["tags"] = torch.tensor([[5, 0, 0, 0], [0, 0, 0, 0], [5, 3, 0, 0]])   # mean pooling
    batch.multi["genres"] = torch.tensor([[5, 0, 0], [0, 0, 0], [5, 3, 0]])           # sum pooling
    fields, _ = fe(batch)
    tags = fe.table.weight[fe.offsets["tags"]:]
    genres = fe.table.weight[fe.offsets["genres"]:]
    it, ig = len(s.categorical), len(s.categorical) + 1
    torch.testing.assert_close(fields[0, it], tags[5])
    torch.testing.assert_close(fields[1, it], torch.zeros(D))
    torch.testing.assert_close(fields[2, it], (tags[5] + tags[3]) / 2)
    torch.testing.assert_close(fields[0, ig], genres[5])
    torch.testing.assert_close(fields[1, ig], torch.zeros(D))
    torch.testing.assert_close(fields[2, ig], genres[5] + genres[3])


def test_padding_row_gets_no_gradient(make_space, make_batch):
    space = make_space(numeric=False, vector=False)
    fe = _fe(space)
    batch = make_batch(space, 8, seed=2)
    fields, _ = fe(batch)
    w = torch.rand(fields.shape, generator=torch.Generator().manual_seed(0)) + 0.5
    (fields * w).sum().backward()
    grad_rows = set(torch.nonzero(fe.table.weight.grad.abs().sum(1)).flatten().tolist())
    looked_up = set((batch.categorical + fe.cat_offsets).flatten().tolist())
    for name, ids in [*batch.multi.items()]:
        looked_up |= {fe.offsets[name] + i for i in ids.flatten().tolist() if i}
    looked_up |= {fe.offsets["item_id"] + i for i in batch.seq["hist"].flatten().tolist() if i}
    looked_up |= {fe.offsets["item_cate"] + i for i in batch.seq["hist.cate"].flatten().tolist() if i}
    assert grad_rows == looked_up
    for name in ["tags", "genres", "item_id", "item_cate"]:  # padding rows of pooled fields' vocabularies
        assert fe.offsets[name] not in grad_rows


def test_sparse_gradient_rows_are_the_looked_up_ids(make_space, make_batch):
    space = make_space(vector=False)
    batch = make_batch(space, 6, seed=4)
    dense_fe, sparse_fe = _fe(space), _fe(space, sparse=True)
    for fe in (dense_fe, sparse_fe):
        fields, _ = fe(batch)
        (fields * torch.arange(1.0, 1.0 + fields.shape[1]).view(1, -1, 1)).sum().backward()
    g = sparse_fe.table.weight.grad
    assert g.is_sparse
    assert dense_fe.table.weight.grad.layout == torch.strided
    dense_g = g.coalesce().to_dense()
    torch.testing.assert_close(dense_g, dense_fe.table.weight.grad)
    nonzero = set(torch.nonzero(dense_g.abs().sum(1)).flatten().tolist())
    expected = set((batch.categorical + sparse_fe.cat_offsets).flatten().tolist())
    for name, ids in batch.multi.items():
        expected |= {sparse_fe.offsets[name] + i for i in ids.flatten().tolist() if i}
    expected |= {sparse_fe.offsets["item_id"] + i for i in batch.seq["hist"].flatten().tolist() if i}
    expected |= {sparse_fe.offsets["item_cate"] + i for i in batch.seq["hist.cate"].flatten().tolist() if i}
    assert nonzero == expected
    # sparse indices never name a row outside the looked-up ones (padding rows appear at most with zeros)
    idx = set(g.coalesce().indices().flatten().tolist())
    assert expected <= idx
    assert sparse_fe.embedding_parameters() == [sparse_fe.table.weight]


# ---------------------------------------------------------------- numeric and vector fields

def test_numeric_embed_is_value_times_field_vector(make_space, make_batch):
    space = make_space(multi=False, seq=False, vector=False)
    fe = _fe(space, numeric_mode="embed")
    batch = make_batch(space, 5, seed=5)
    fields, dense = fe(batch)
    assert dense is None
    n_cat = len(space.schema.categorical)
    for k in range(len(space.schema.numeric)):
        for b in range(5):
            # the normalised value (batch.numeric), not numeric_raw
            scaled = fe.numeric.groups[0]
            want = scaled.missing[k] if batch.numeric_raw[b, k].isnan() else batch.numeric[b, k] * scaled.weight[k]
            torch.testing.assert_close(fields[b, n_cat + k], want)


def test_numeric_raw_mode_returns_dense_block(make_space, make_batch):
    space = make_space()
    emb_fe, raw_fe = _fe(space, numeric_mode="embed"), _fe(space, numeric_mode="raw")
    n_num = len(space.schema.numeric)
    assert raw_fe.num_fields == emb_fe.num_fields - n_num
    assert raw_fe.output_dim == raw_fe.num_fields * D + n_num
    assert raw_fe.numeric is None
    batch = make_batch(space, 4, seed=6)
    fields, dense = raw_fe(batch)
    assert fields.shape == (4, raw_fe.num_fields, D)
    torch.testing.assert_close(dense, batch.numeric)
    torch.testing.assert_close(fields, naive_fields(raw_fe, space, batch))
    flat = raw_fe.flat(batch)
    assert flat.shape == (4, raw_fe.output_dim)
    torch.testing.assert_close(flat, torch.cat([fields.flatten(1), batch.numeric], dim=1))


def test_vector_feature_is_projected(make_space, make_batch):
    space = make_space(multi=False, seq=False, numeric=False)
    fe = _fe(space)
    proj = fe.vector_proj["img"]
    assert (proj.in_features, proj.out_features) == (5, D)
    batch = make_batch(space, 3, seed=7)
    fields, _ = fe(batch)
    v = batch.vectors["img"]
    expected = torch.stack([torch.stack([sum(proj.weight[i, k] * v[b, k] for k in range(5)) + proj.bias[i]
                                         for i in range(D)]) for b in range(3)])
    torch.testing.assert_close(fields[:, -2], expected)  # the last field is user_img's projection


def test_similarity_encoding_is_mnse_of_the_mapped_cosine(make_space, make_batch):
    space = make_space(multi=False, seq=False, numeric=False)
    fe = _fe(space, vector_encoding=VectorEncoding(name="similarity", max_value=20))
    assert not fe.vector_proj and fe.pairs == [("user_img", "img")]
    batch = make_batch(space, 6, seed=7)
    batch.vectors["user_img"][1] = 0.0  # no user vector: the missing slot
    batch.vectors["img"][4] = -2.5 * batch.vectors["user_img"][4]  # cosine -1 -> code 0
    fields, _ = fe(batch)
    assert fields.shape[1] == fe.num_fields == 3 + 1
    for b in range(6):
        u, v = batch.vectors["user_img"][b], batch.vectors["img"][b]
        if b == 1:
            want = fe.similarity(torch.zeros(1, 1, dtype=torch.long), torch.ones(1, 1, dtype=torch.bool))[0, 0]
        else:
            cos = float(u @ v / (u.norm() * v.norm()))
            code = round((cos + 1) / 2 * 20)
            assert b != 4 or code == 0
            want = fe.similarity.value_table(0)[code]
        torch.testing.assert_close(fields[b, -1], want)
    # the cosine ignores the vectors' scale
    batch.vectors["img"] = batch.vectors["img"] * 7.0
    torch.testing.assert_close(fe(batch)[0], fields)


def test_drop_encoding_ignores_vectors(make_space, make_batch):
    space = make_space(multi=False, seq=False, numeric=False)
    fe = _fe(space, vector_encoding=VectorEncoding(name="drop"))
    assert fe.num_fields == 3 and fe(make_batch(space, 2))[0].shape == (2, 3, D)


def test_init_std_is_honoured(make_space):
    space = make_space()
    torch.manual_seed(0)
    fe = FieldEmbedding(space, 16, init_std=0.01)
    std = fe.table.weight.std().item()
    assert 0.008 < std < 0.012


def test_numeric_only_raw_mode_gives_empty_fields_and_dense():
    from untwine.core.batch import Batch
    from untwine.core.features import FeatureSpace
    from untwine.core.schema import Feature, Label, Schema
    space = FeatureSpace(schema=Schema(features=[Feature(name="x", kind="numeric"), Feature(name="z", kind="numeric")],
                                       labels=[Label(name="y")]))
    fe = FieldEmbedding(space, D, numeric_mode="raw")
    assert fe.num_fields == 0 and fe.output_dim == 2
    batch = Batch(numeric=torch.randn(3, 2))
    fields, dense = fe(batch)
    assert fields.shape == (3, 0, D)
    torch.testing.assert_close(dense, batch.numeric)
    torch.testing.assert_close(fe.flat(batch), batch.numeric)
