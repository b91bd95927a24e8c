"""Each model's forward equals a hand-wired computation from its own parameters (naive loops, no model code).

All parameters are re-drawn at a visible scale (biases included) so a dropped or doubled term shows.
"""
from __future__ import annotations

import itertools

import pytest
import torch
from torch import nn

from untwine.models import build_model
from untwine.nn.embedding import FieldEmbedding

B = 5
TOL = dict(rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------- naive building blocks

def scramble(model: nn.Module, seed: int = 0, scale: float = 0.3) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(scale * torch.randn(p.shape, generator=g))


def pool(rows: torch.Tensor, ids: torch.Tensor, how: str) -> torch.Tensor:
    picked = [rows[i] for i in ids.tolist() if i != 0]
    if not picked:
        return torch.zeros(rows.shape[1], dtype=rows.dtype)
    total = torch.stack(picked).sum(0)
    return total if how == "sum" else total / len(picked)


def naive_fields(fe: FieldEmbedding, space, batch) -> torch.Tensor:
    """(B, F, W) field vectors by per-field lookups into each vocabulary owner's slice of the table."""
    s = space.schema

    def rows(name: str) -> torch.Tensor:
        owner = s.vocab_owner(s.feature(name))
        return fe.table.weight[fe.offsets[owner]:fe.offsets[owner] + space.vocab_size(owner)]

    out = []
    for b in range(len(batch)):
        fields = [rows(f.name)[batch.categorical[b, j]] for j, f in enumerate(s.categorical)]
        fields += [pool(rows(f.name), batch.multi[f.name][b], f.pooling) for f in s.multi_categorical]
        for f in s.sequences:  # each sequence: its items, then its side fields
            fields.append(pool(rows(f.name), batch.seq[f.name][b], f.pooling))
            fields += [pool(rows(ref), batch.seq[f"{f.name}.{side}"][b], f.pooling) for side, ref in f.side_fields.items()]
        if fe.numeric is not None:
            scaled = fe.numeric.groups[0]  # value x field vector, the field's missing vector for NaN
            fields += [scaled.missing[k] if batch.numeric_raw[b, k].isnan() else batch.numeric[b, k] * scaled.weight[k]
                       for k in range(len(s.numeric))]
        for f in s.vectors:
            lin = fe.vector_proj[f.name]
            fields.append(lin.weight @ batch.vectors[f.name][b] + lin.bias)
        out.append(torch.stack(fields))
    return torch.stack(out)


def naive_flat(fe: FieldEmbedding, space, batch) -> torch.Tensor:
    flat = naive_fields(fe, space, batch).flatten(1)
    return torch.cat([flat, batch.numeric], dim=1) if fe.numeric_mode == "raw" else flat


def naive_first_order(first_order, space, batch) -> torch.Tensor:
    """(B, T): w0 + sum of each field's per-task weight row + dense weights . normalised numerics."""
    fields = naive_fields(first_order.emb, space, batch)  # (B, F, T)
    out = first_order.bias + fields.sum(dim=1)
    if space.schema.numeric:
        W, b0 = first_order.dense.weight, first_order.dense.bias  # (T, F_num)
        out = out + torch.stack([sum(W[:, k] * batch.numeric[r, k] for k in range(W.shape[1])) + b0
                                 for r in range(len(batch))])
    return out


def naive_pairwise(v: torch.Tensor) -> torch.Tensor:
    return torch.stack([sum((torch.dot(v[b, i], v[b, j]) for i, j in itertools.combinations(range(v.shape[1]), 2)),
                            torch.zeros(())) for b in range(v.shape[0])])


def naive_mlp(mlp: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Replays Linear / ReLU layers with explicit matrix products (configs here have no BN / dropout)."""
    for m in mlp.net:
        if isinstance(m, nn.Linear):
            x = x @ m.weight.T + m.bias
        elif isinstance(m, nn.ReLU):
            x = torch.where(x > 0, x, torch.zeros_like(x))
        else:
            raise AssertionError(f"unexpected layer {m}")
    return x


def naive_cross(cross, x0: torch.Tensor) -> torch.Tensor:
    out = []
    for s in range(x0.shape[0]):
        x = x0[s]
        for layer in cross.layers:
            x = x0[s] * (layer.weight @ x + layer.bias) + x
        out.append(x)
    return torch.stack(out)


def stacked_logits(out: dict, tasks: list[str]) -> torch.Tensor:
    return torch.stack([out[t] for t in tasks], dim=1)


@pytest.fixture(params=[1, 2], ids=["1task", "2tasks"])
def setup(request, make_space, make_batch):
    space = make_space(request.param)
    return space, make_batch(space, B, seed=request.param)


def build(name, space, **cfg):
    torch.manual_seed(0)
    model = build_model(name, space, {"embedding_dim": 3, **cfg}).eval()
    scramble(model)
    return model


# ---------------------------------------------------------------- per model

def test_lr_reference(setup):
    space, batch = setup
    model = build("lr", space)
    got = stacked_logits(model(batch), space.schema.task_names)
    torch.testing.assert_close(got, naive_first_order(model.linear, space, batch), **TOL)


def test_lr_hand_case_two_categoricals(make_space):
    """LR on user/item/cate only: logit = w0 + w_user[u] + w_item[i] + w_cate[c], read off the table."""
    from untwine.core.batch import Batch
    space = make_space(1, multi=False, seq=False, numeric=False, vector=False)
    model = build("lr", space)
    table = model.linear.emb.table.weight[:, 0]
    V = {f.name: space.vocab_size(f) for f in space.schema.categorical}
    batch = Batch(categorical=torch.tensor([[2, 3, 4], [5, 1, 6]]))
    # owners are laid out in schema order: user_id, item_id, item_cate
    off = {"user_id": 0, "item_id": V["user_id"], "item_cate": V["user_id"] + V["item_id"]}
    expected = torch.stack([model.linear.bias[0] + table[off["user_id"] + u] + table[off["item_id"] + i]
                            + table[off["item_cate"] + c] for u, i, c in batch.categorical.tolist()])
    torch.testing.assert_close(model(batch)["click"], expected, **TOL)


def test_fm_reference(setup):
    space, batch = setup
    model = build("fm", space)
    fields = naive_fields(model.embedding, space, batch)
    expected = naive_first_order(model.linear, space, batch) + naive_pairwise(fields).unsqueeze(1)
    got = stacked_logits(model(batch), space.schema.task_names)
    torch.testing.assert_close(got, expected, **TOL)


def test_fm_embeds_numerics_even_with_numeric_raw_config(setup):
    space, batch = setup
    model = build("fm", space, numeric="raw")
    assert model.embedding.numeric_mode == "embed"
    fields = naive_fields(model.embedding, space, batch)
    expected = naive_first_order(model.linear, space, batch) + naive_pairwise(fields).unsqueeze(1)
    torch.testing.assert_close(stacked_logits(model(batch), space.schema.task_names), expected, **TOL)


def test_deepfm_reference(setup):
    space, batch = setup
    model = build("deepfm", space, hidden=[6, 4])
    fields = naive_fields(model.embedding, space, batch)
    expected = (naive_first_order(model.linear, space, batch) + naive_pairwise(fields).unsqueeze(1)
                + naive_mlp(model.mlp, fields.flatten(1)))
    torch.testing.assert_close(stacked_logits(model(batch), space.schema.task_names), expected, **TOL)


def test_deepfm_terms_in_isolation(setup):
    space, batch = setup
    tasks = space.schema.task_names
    model = build("deepfm", space, hidden=[6])
    fields = naive_fields(model.embedding, space, batch)
    first, fm = naive_first_order(model.linear, space, batch), naive_pairwise(fields).unsqueeze(1)
    deep = naive_mlp(model.mlp, fields.flatten(1))
    with torch.no_grad():
        last = model.mlp.net[-1]
        last.weight.zero_()
        last.bias.zero_()
    torch.testing.assert_close(stacked_logits(model(batch), tasks), first + fm, **TOL)  # MLP off
    with torch.no_grad():
        for p in model.linear.parameters():
            p.zero_()
    torch.testing.assert_close(stacked_logits(model(batch), tasks), fm.expand(-1, len(tasks)), **TOL)  # FM only
    model2 = build("deepfm", space, hidden=[6])
    with torch.no_grad():
        for p in model2.linear.parameters():
            p.zero_()
    # LR off: FM + deep term (same parameters as the first build, so same naive terms)
    torch.testing.assert_close(stacked_logits(model2(batch), tasks), fm + deep, **TOL)


@pytest.mark.parametrize("numeric", ["embed", "raw"])
def test_dnn_reference(setup, numeric):
    space, batch = setup
    model = build("dnn", space, hidden=[7, 5], numeric=numeric)
    x = naive_flat(model.embedding, space, batch)
    n_num = len(space.schema.numeric)
    assert x.shape[1] == model.embedding.num_fields * 3 + (n_num if numeric == "raw" else 0)
    expected = naive_mlp(model.mlp, x)
    torch.testing.assert_close(stacked_logits(model(batch), space.schema.task_names), expected, **TOL)


@pytest.mark.parametrize("numeric", ["embed", "raw"])
@pytest.mark.parametrize("hidden", [[6, 4], []], ids=["mlp", "no-hidden"])
def test_dcnv2_parallel_reference(setup, numeric, hidden):
    space, batch = setup
    model = build("dcnv2", space, hidden=hidden, cross_layers=2, structure="parallel", numeric=numeric)
    x0 = naive_flat(model.embedding, space, batch)
    h = torch.cat([naive_cross(model.cross, x0), naive_mlp(model.mlp, x0)], dim=1)
    expected = h @ model.head.weight.T + model.head.bias
    torch.testing.assert_close(stacked_logits(model(batch), space.schema.task_names), expected, **TOL)


@pytest.mark.parametrize("numeric", ["embed", "raw"])
def test_dcnv2_stacked_reference(setup, numeric):
    space, batch = setup
    model = build("dcnv2", space, hidden=[6, 4], cross_layers=3, structure="stacked", numeric=numeric)
    x0 = naive_flat(model.embedding, space, batch)
    h = naive_mlp(model.mlp, naive_cross(model.cross, x0))
    expected = h @ model.head.weight.T + model.head.bias
    torch.testing.assert_close(stacked_logits(model(batch), space.schema.task_names), expected, **TOL)


@pytest.mark.parametrize("structure", ["parallel", "stacked"])
def test_dcnv2_low_rank_wiring(setup, structure):
    """DCN-Mix swaps the cross network only (the mixture itself is checked in tests/nn)."""
    space, batch = setup
    model = build("dcnv2", space, hidden=[6], cross_layers=2, structure=structure, low_rank=2, num_experts=3)
    assert type(model.cross).__name__ == "LowRankCrossNet"
    x0 = naive_flat(model.embedding, space, batch)
    cross = model.cross(x0)
    h = torch.cat([cross, naive_mlp(model.mlp, x0)], dim=1) if structure == "parallel" else naive_mlp(model.mlp, cross)
    expected = h @ model.head.weight.T + model.head.bias
    torch.testing.assert_close(stacked_logits(model(batch), space.schema.task_names), expected, **TOL)


def naive_gwpfm_terms(fields: torch.Tensor, groups: list[int], weights: torch.Tensor) -> torch.Tensor:
    """(B, P * d): per group pair g < h, w_gh * sum_{i in g, j in h} v_{i,h} * v_{j,g}, by a loop over features."""
    B, F, W = fields.shape
    G = max(groups) + 1
    v = fields.view(B, F, G, W // G)
    pairs = [(g, h) for g in range(G) for h in range(g + 1, G)]
    out = []
    for b in range(B):
        terms = []
        for k, (g, h) in enumerate(pairs):
            t = torch.zeros(W // G)
            for i in range(F):
                for j in range(F):
                    if groups[i] == g and groups[j] == h:
                        t = t + v[b, i, h] * v[b, j, g]
            terms.append(weights[k] * t)
        out.append(torch.cat(terms))
    return torch.stack(out)


def naive_ipnn_input(fields: torch.Tensor) -> torch.Tensor:
    F = fields.shape[1]
    return torch.stack([torch.cat([fields[b].flatten(), torch.stack(
        [torch.dot(fields[b, i], fields[b, j]) for i, j in itertools.combinations(range(F), 2)])])
        for b in range(fields.shape[0])])


def test_hetero_moe_moments_shape_reference(setup):
    """Table 1 -> GwPFM + FlatDNN, table 2 -> IPNN, a softmax gate per task over all tables' fields,
    one tower per task: replayed from the parameters with per-field lookups and loops."""
    space, batch = setup
    experts = [{"type": "gwpfm"}, {"type": "flat_dnn", "hidden": [5]}, {"type": "ipnn", "table": 1}]
    model = build("hetero_moe", space, tables=[6, 4], experts=experts, expert_dim=4, hidden=[3])
    t0, t1 = (naive_fields(t, space, batch) for t in model.tables)
    groups = [{"user": 0, "item": 1, "context": 2}[space.schema.feature(f).group.value]
              for f in model.tables[0].field_features()]
    z = [naive_gwpfm_terms(t0, groups, model.experts[0].interaction.pair_weight), t0.flatten(1),
         naive_ipnn_input(t1)]
    h = torch.stack([naive_mlp(e.projection, x) for e, x in zip(model.experts, z)], dim=1)  # (B, E, H)
    logits = model.gate.linear(torch.cat([t0.flatten(1), t1.flatten(1)], dim=1))
    T = len(space.schema.task_names)
    expected = []
    for t in range(T):
        w = torch.softmax(logits[:, t * 3:(t + 1) * 3], dim=1)  # task t's gate over the 3 experts
        mixed = (w.unsqueeze(-1) * h).sum(dim=1)
        body, out = model.towers.towers[t]
        expected.append(out(naive_mlp(body, mixed)).squeeze(1))
    torch.testing.assert_close(stacked_logits(model(batch), space.schema.task_names), torch.stack(expected, 1), **TOL)


def test_me_dcnv2_reference(setup):
    """Multi-embedding DCN-V2: a cross network per table, their mean, a shared MLP (tower)."""
    space, batch = setup
    experts = [{"type": "cross", "project": False, "cross_layers": 2},
               {"type": "cross", "table": 1, "project": False, "cross_layers": 2}]
    model = build("hetero_moe", space, tables=[3, 3], experts=experts, combine="mean", hidden=[4])
    mean = sum(naive_cross(e.interaction, naive_flat(t, space, batch)) for e, t in zip(model.experts, model.tables)) / 2
    expected = [model.towers.towers[t][1](naive_mlp(model.towers.towers[t][0], mean)).squeeze(1)
                for t in range(len(space.schema.task_names))]
    torch.testing.assert_close(stacked_logits(model(batch), space.schema.task_names), torch.stack(expected, 1), **TOL)
