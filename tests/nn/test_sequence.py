"""Sequence encoders against naive per-item loops: TIM, DIN, pooling; masking, permutation, time buckets."""
from __future__ import annotations

import math

import pytest
import torch

from untwine.core.features import FeatureSpace
from untwine.core.schema import Feature, Label, Schema, SequenceEncoding
from untwine.nn.embedding import FieldEmbedding
from untwine.nn.sequence import (DINAttention, TemporalInterest, gap_buckets, log_gap_boundaries, masked_pool,
                                 recency_positions)

E, L, B = 6, 7, 5


def _inputs(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    target = torch.randn(B, E, generator=g)
    behaviour = torch.randn(B, L, E, generator=g)
    lengths = torch.tensor([0, L, 3, 1, 5])
    mask = torch.arange(L).unsqueeze(0) < lengths.unsqueeze(1)
    buckets = torch.randint(1, 10, (B, L), generator=g)
    return target, behaviour, mask, buckets


def _layer_norm(x):
    return (x - x.mean()) / torch.sqrt(x.var(unbiased=False) + 1e-12)


def naive_tim(m: TemporalInterest, target, behaviour, mask, buckets):
    """u = sum_i alpha_i (b~_i * a~), one sample and one behaviour at a time, in float64."""
    Wq, Wk = m.query.weight.double(), m.key.weight.double()
    P = m.time.weight.double() if m.time is not None else None
    out = []
    for b in range(target.shape[0]):
        a = target[b].double()
        if P is not None:
            a = a + P[0] if m.combine == "sum" else torch.cat([a, P[0]])
        items, scores = [], []
        for i in range(behaviour.shape[1]):
            if not mask[b, i]:
                continue
            x = behaviour[b, i].double()
            if P is not None:
                p = P[buckets[b, i]]
                x = x + p if m.combine == "sum" else torch.cat([x, p])
            items.append(x)
            qa, kx = (_layer_norm(a), _layer_norm(x)) if m.normalise else (a, x)
            scores.append(float(((Wq @ qa) @ (Wk @ kx)).detach()) / math.sqrt(len(a)))
        u = torch.zeros(len(a), dtype=torch.float64)
        if items:
            mx = max(scores)
            w = [math.exp(s - mx) for s in scores]
            z = sum(w)
            for wi, x in zip(w, items):
                u += (wi / z) * (x * a if m.target_aware else x)
        out.append(u)
    return torch.stack(out)


@pytest.mark.parametrize("normalise", [False, True])
@pytest.mark.parametrize("combine", ["sum", "concat"])
@pytest.mark.parametrize("temporal,target_aware", [(True, True), (False, True), (True, False)])
def test_tim_equals_naive_loop(combine, temporal, target_aware, normalise):
    torch.manual_seed(0)
    m = TemporalInterest(E, 12, temporal=temporal, target_aware=target_aware, combine=combine, time_dim=3,
                         normalise=normalise)
    target, behaviour, mask, buckets = _inputs()
    got = m(target, behaviour, mask, buckets)
    want = naive_tim(m, target, behaviour, mask, buckets)
    assert got.shape == want.shape == (B, E + (3 if temporal and combine == "concat" else 0))
    torch.testing.assert_close(got.double(), want, atol=1e-6, rtol=1e-6)
    assert torch.all(got[0] == 0)  # empty history encodes to zeros


def test_tim_padding_changes_nothing():
    torch.manual_seed(0)
    m = TemporalInterest(E, 12)
    target, behaviour, mask, buckets = _inputs()
    noisy = torch.where(mask.unsqueeze(-1), behaviour, torch.randn_like(behaviour) * 100)
    other_buckets = torch.where(mask, buckets, torch.randint(0, 12, buckets.shape))
    torch.testing.assert_close(m(target, behaviour, mask, buckets), m(target, noisy, mask, other_buckets))


def test_tim_attention_is_softmax_over_valid_items_and_target_aware_product():
    torch.manual_seed(0)
    m = TemporalInterest(E, 12)
    target, behaviour, mask, buckets = _inputs()
    u, alpha = m(target, behaviour, mask, buckets, return_attention=True)
    torch.testing.assert_close(alpha.sum(1)[1:], torch.ones(B - 1))
    assert torch.all(alpha[~mask] == 0) and torch.all(alpha[0] == 0)
    a_t, b_t = m.encode(target, behaviour, buckets)
    # the representation sum_i alpha_i (b~_i * a~) taken item by item equals the factored form
    torch.testing.assert_close(u, (alpha.unsqueeze(-1) * (b_t * a_t.unsqueeze(1))).sum(1), atol=1e-6, rtol=1e-5)


def test_normalised_attention_does_not_depend_on_the_embeddings_scale():
    torch.manual_seed(0)
    m = TemporalInterest(E, 12, temporal=False, normalise=True)
    target, behaviour, mask, _ = _inputs()
    _, alpha = m(target, behaviour, mask, return_attention=True)
    _, alpha_small = m(target * 1e-3, behaviour * 1e-3, mask, return_attention=True)
    torch.testing.assert_close(alpha, alpha_small, atol=1e-4, rtol=1e-3)
    plain = TemporalInterest(E, 12, temporal=False)
    plain.load_state_dict(m.state_dict())
    _, alpha_plain = plain(target * 1e-3, behaviour * 1e-3, mask, return_attention=True)
    valid = mask.sum(1, keepdim=True).float().clamp_min(1)
    assert torch.allclose(alpha_plain[1:], (mask.float() / valid)[1:], atol=1e-4)  # tiny embeddings: uniform


def test_keep_history_appends_the_attended_history():
    torch.manual_seed(0)
    m = TemporalInterest(E, 12, keep_history=True)
    target, behaviour, mask, buckets = _inputs()
    u, alpha = m(target, behaviour, mask, buckets, return_attention=True)
    a_t, b_t = m.encode(target, behaviour, buckets)
    h = (alpha.unsqueeze(-1) * b_t).sum(1)
    assert u.shape == (B, 2 * E) == (B, m.repr_dim)
    torch.testing.assert_close(u, torch.cat([h * a_t, h], dim=-1), atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(u[:, :E].double(), naive_tim(m, target, behaviour, mask, buckets), atol=1e-6, rtol=1e-6)


def test_tim_gradients_reach_time_query_key_and_inputs():
    torch.manual_seed(0)
    m = TemporalInterest(E, 12)
    target, behaviour, mask, buckets = _inputs()
    behaviour.requires_grad_(True)
    m(target, behaviour, mask, buckets).pow(2).sum().backward()
    for name, p in m.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert torch.all(behaviour.grad[~mask] == 0) and behaviour.grad[mask].abs().sum() > 0
    assert torch.isfinite(behaviour.grad).all()


def test_din_equals_naive_loop_and_is_unnormalised():
    torch.manual_seed(0)
    m = DINAttention(E, (8, 4))
    target, behaviour, mask, _ = _inputs()
    got = m(target, behaviour, mask)
    for b in range(B):
        want = torch.zeros(E)
        for i in range(L):
            if mask[b, i]:
                x, a = behaviour[b, i], target[b]
                w = m.score(torch.cat([x, a, x - a, x * a]).unsqueeze(0))[0, 0]
                want += w * x
        torch.testing.assert_close(got[b], want, atol=1e-5, rtol=1e-5)
    w = m.weights(target, behaviour, mask)
    assert not torch.allclose(w[1].sum(), torch.tensor(1.0))  # no softmax: weights keep their scale


def test_masked_pool_hand_case():
    x = torch.tensor([[[1.0], [3.0], [100.0]], [[5.0], [0.0], [0.0]]])
    mask = torch.tensor([[True, True, False], [False, False, False]])
    torch.testing.assert_close(masked_pool(x, mask), torch.tensor([[2.0], [0.0]]))
    torch.testing.assert_close(masked_pool(x, mask, "sum"), torch.tensor([[4.0], [0.0]]))


def test_log_gap_buckets_by_hand():
    bounds = log_gap_boundaries(6, base=2.0, unit=1.0)
    assert bounds.tolist() == [0.0, 1.0, 3.0, 7.0, 15.0]
    gaps = torch.tensor([[0, 1, 2, 3, 4, 7, 8, 15, 16, 10**9, -5]])
    assert gap_buckets(gaps, bounds).tolist() == [[0, 1, 2, 2, 3, 3, 4, 4, 5, 5, 0]]
    hours = log_gap_boundaries(4, base=10.0, unit=3600.0)
    assert gap_buckets(torch.tensor([[1800, 3600 * 9, 3600 * 10]]), hours).tolist() == [[1, 1, 2]]


def test_recency_positions_count_back_from_the_most_recent():
    mask = torch.tensor([[True, True, True, False], [True, False, False, False], [False] * 4])
    assert recency_positions(mask).tolist() == [[3, 2, 1, 0], [1, 0, 0, 0], [0, 0, 0, 0]]


# ---------------------------------------------------------------- inside FieldEmbedding
def _seq_space(timestamps: bool = True) -> FeatureSpace:
    feats = [Feature(name="user_id", kind="categorical", group="user"),
             Feature(name="item_id", kind="categorical", group="item"),
             Feature(name="cate", kind="categorical", group="item"),
             Feature(name="hist", kind="sequence", group="user", vocab_from="item_id", max_len=6,
                     timestamps="hist_ts" if timestamps else None, side_fields={"hist_cate": "cate"})]
    schema = Schema(features=feats, labels=[Label(name="click")], timestamp="ts" if timestamps else None)
    return FeatureSpace(schema=schema, vocab_sizes={"user_id": 9, "item_id": 20, "cate": 5, "hist": 20})


def _seq_batch(space, make_batch, n=8):
    b = make_batch(space, n, seed=3)
    g = torch.Generator().manual_seed(5)
    mask = b.seq["hist"] > 0
    if space.schema.timestamp:
        b.timestamp = torch.randint(10**8, 2 * 10**8, (n,), generator=g)
        gaps = torch.randint(0, 10**7, mask.shape, generator=g)
        b.seq["hist.ts"] = torch.where(mask, b.timestamp.unsqueeze(1) - gaps, torch.zeros_like(gaps))
    return b


@pytest.mark.parametrize("timestamps", [True, False])
def test_tim_field_matches_naive_loop_over_the_table(make_batch, timestamps):
    space = _seq_space(timestamps)
    torch.manual_seed(0)
    spec_formula = SequenceEncoding(name="tim", attention_norm=False, keep_history=False)
    fe = FieldEmbedding(space, 4, init_std=1.0, sequence_encoding=spec_formula)
    batch = _seq_batch(space, make_batch)
    fields, _ = fe(batch)
    assert fields.shape == (len(batch), 3 + 2, 4)
    seq = fe.sequences[0]
    W = fe.table.weight
    behaviour = torch.cat([W[batch.seq["hist"] + fe.offsets["item_id"]], W[batch.seq["hist.hist_cate"] + fe.offsets["cate"]]], -1)
    target = torch.cat([W[batch["item_id"] + fe.offsets["item_id"]], W[batch["cate"] + fe.offsets["cate"]]], -1)
    mask = batch.seq["hist"] > 0
    if timestamps:  # bucket k holds gaps up to 2^k - 1 seconds
        gap = (batch.timestamp.unsqueeze(1) - batch.seq["hist.ts"]).double()
        buckets = torch.ceil(torch.log2(gap + 1)).long().clamp(max=31)
    else:
        buckets = recency_positions(mask)
    want = naive_tim(seq.encoder, target, behaviour, mask, buckets)
    torch.testing.assert_close(fields[:, 3:].flatten(1).double(), want, atol=1e-6, rtol=1e-6)
    # the default (attention_norm + keep_history): the normalised-attention product, then the attended history
    torch.manual_seed(0)
    default = FieldEmbedding(space, 4, init_std=1.0, sequence_encoding=SequenceEncoding(name="tim"))
    enc = default.sequences[0].encoder
    assert enc.normalise and enc.keep_history
    out = default(batch)[0]
    assert out.shape == (len(batch), 3 + 4, 4)
    W = default.table.weight
    behaviour = torch.cat([W[batch.seq["hist"] + default.offsets["item_id"]],
                           W[batch.seq["hist.hist_cate"] + default.offsets["cate"]]], -1)
    target = torch.cat([W[batch["item_id"] + default.offsets["item_id"]], W[batch["cate"] + default.offsets["cate"]]], -1)
    u, alpha = enc(target, behaviour, mask, buckets, return_attention=True)
    a_t, b_t = enc.encode(target, behaviour, buckets)
    torch.testing.assert_close(out[:, 3:5].flatten(1).double(), naive_tim(enc, target, behaviour, mask, buckets),
                               atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(out[:, 5:].flatten(1), (alpha.unsqueeze(-1) * b_t).sum(1), atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("name", ["tim", "din", "pool"])
def test_sequence_encoders_are_invariant_to_a_permutation_with_timestamps(make_batch, name):
    space = _seq_space(True)
    torch.manual_seed(0)
    fe = FieldEmbedding(space, 4, init_std=1.0, sequence_encoding=SequenceEncoding(name=name))
    batch = _seq_batch(space, make_batch)
    perm = torch.randperm(6, generator=torch.Generator().manual_seed(1))
    shuffled = batch.__class__(**{**batch.__dict__, "seq": {k: v[:, perm] for k, v in batch.seq.items()}})
    torch.testing.assert_close(fe(batch)[0], fe(shuffled)[0], atol=1e-6, rtol=1e-5)


def test_tim_without_timestamps_is_order_aware(make_batch):
    space = _seq_space(False)
    torch.manual_seed(0)
    fe = FieldEmbedding(space, 4, init_std=1.0, sequence_encoding=SequenceEncoding(name="tim"))
    batch = _seq_batch(space, make_batch)
    rev = batch.__class__(**{**batch.__dict__, "seq": {k: v.flip(1) for k, v in batch.seq.items()}})
    # reversed, the padding comes first: recency positions change, so the output must change
    assert not torch.allclose(fe(batch)[0][1], fe(rev)[0][1])


def test_schema_encoding_overrides_model_default_and_errors_are_clear(make_batch):
    space = _seq_space(True)
    f = space.schema.feature("hist").model_copy(update={"encoding": SequenceEncoding(name="din")})
    feats = [f if x.name == "hist" else x for x in space.schema.features]
    s2 = FeatureSpace(schema=space.schema.model_copy(update={"features": feats}), vocab_sizes=space.vocab_sizes)
    fe = FieldEmbedding(s2, 4, sequence_encoding=SequenceEncoding(name="tim"))
    assert isinstance(fe.sequences[0].encoder, DINAttention)
    no_ts = FeatureSpace(schema=space.schema.model_copy(update={"timestamp": None}), vocab_sizes=space.vocab_sizes)
    with pytest.raises(ValueError, match="schema.timestamp"):
        FieldEmbedding(no_ts, 4, sequence_encoding=SequenceEncoding(name="tim"))
    owned = _seq_space(False).schema.feature("hist").model_copy(update={"vocab_from": None})
    feats = [owned if x.name == "hist" else x for x in _seq_space(False).schema.features]
    with pytest.raises(ValueError, match="not categorical"):
        FieldEmbedding(FeatureSpace(schema=Schema(features=feats, labels=[Label(name="click")]),
                                    vocab_sizes={"user_id": 9, "item_id": 20, "cate": 5, "hist": 20}), 4,
                       sequence_encoding=SequenceEncoding(name="tim", target="hist"))
