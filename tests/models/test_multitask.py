"""Multi-task models: shared-bottom, MMoE, PLE and STEM against hand-wired replays, the reductions between
them, and STEM's stop-gradient."""
from __future__ import annotations

import torch

from untwine.models import build_model

from test_reference import naive_flat, naive_mlp, scramble, stacked_logits  # noqa: E402

TOL = dict(rtol=1e-5, atol=1e-5)


def build(name, space, **cfg):
    torch.manual_seed(0)
    model = build_model(name, space, {"embedding_dim": 3, "expert_hidden": [6, 5], "hidden": [4], **cfg}).eval()
    scramble(model)
    return model


def tower(model, t, h):
    body, out = model.towers.towers[t]
    return out(naive_mlp(body, h)).squeeze(-1)


def test_mmoe_reference(make_space, make_batch):
    space = make_space(2)
    batch = make_batch(space, 5)
    model = build("mmoe", space, num_experts=3)
    x = naive_flat(model.embedding, space, batch)
    experts = torch.stack([naive_mlp(e, x) for e in model.experts.experts], dim=1)  # (B, E, H)
    logits = model.gate.linear(x).view(-1, 2, 3)
    expected = torch.stack([tower(model, t, (torch.softmax(logits[:, t], -1).unsqueeze(-1) * experts).sum(1))
                            for t in range(2)], dim=1)
    torch.testing.assert_close(stacked_logits(model(batch), space.schema.task_names), expected, **TOL)


def test_mmoe_with_one_task_and_one_expert_is_shared_bottom(make_space, make_batch):
    space = make_space(1)
    batch = make_batch(space, 6)
    sb, mmoe = build("shared_bottom", space), build("mmoe", space, num_experts=1)
    rename = {k.replace("experts.experts.0.", "bottom."): v for k, v in mmoe.state_dict().items()
              if not k.startswith("gate.")}
    assert set(rename) == set(sb.state_dict())
    sb.load_state_dict(rename)
    torch.testing.assert_close(sb(batch)["click"], mmoe(batch)["click"])


def test_ple_single_level_is_cgc(make_space, make_batch):
    space = make_space(2)
    batch = make_batch(space, 5)
    model = build("ple", space, levels=1, task_experts=2, shared_experts=1)
    (layer,) = model.layers
    assert layer.shared_gate is None  # the last layer needs no shared output
    x = naive_flat(model.embedding, space, batch)
    shared = [naive_mlp(e, x) for e in layer.shared_bank.experts]
    expected = []
    for t in range(2):
        experts = torch.stack([naive_mlp(e, x) for e in layer.task_banks[t].experts] + shared, dim=1)
        w = torch.softmax(layer.task_gates[t](x), -1)
        expected.append(tower(model, t, (w.unsqueeze(-1) * experts).sum(1)))
    torch.testing.assert_close(stacked_logits(model(batch), space.schema.task_names), torch.stack(expected, 1), **TOL)


def test_ple_shared_gate_mixes_every_expert(make_space, make_batch):
    space = make_space(2)
    model = build("ple", space, levels=2)
    first = model.layers[0]
    x = model.embedding.flat(make_batch(space, 4))
    _, shared_out = first([x, x], x)
    experts = torch.cat([b(x) for b in first.task_banks] + [first.shared_bank(x)], dim=1)
    w = torch.softmax(first.shared_gate(x), -1)
    torch.testing.assert_close(shared_out, (w.unsqueeze(-1) * experts).sum(1))


def test_stem_gradient_of_one_task_never_reaches_the_other_tasks_parameters(make_space, make_batch):
    space = make_space(2)
    batch = make_batch(space, 7)
    model = build("stem", space, shared_experts=2, task_experts=2).train()
    model(batch)["click"].sum().backward()  # task 0 only
    own, other = model.tables[1].table.weight.grad, model.tables[2].table.weight.grad
    assert own is not None and own.abs().sum() > 0
    assert model.tables[0].table.weight.grad.abs().sum() > 0  # the shared embedding learns from every task
    assert other is None or torch.count_nonzero(other) == 0  # exactly zero, not small
    for p in model.specific[1].parameters():
        assert p.grad is None or torch.count_nonzero(p.grad) == 0
    for p in model.specific[0].parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0


def test_stem_forward_reads_every_tasks_experts(make_space, make_batch):
    """All forward: task 0's prediction changes when task 1's specific experts change."""
    space = make_space(2)
    batch = make_batch(space, 5)
    model = build("stem", space)
    before = model(batch)["click"].clone()
    with torch.no_grad():
        for p in model.specific[1].parameters():
            p.add_(1.0)
    assert not torch.allclose(before, model(batch)["click"])
    w = model.gate_weights(batch)
    assert w.shape == (5, 2, 3)
    torch.testing.assert_close(w.sum(-1), torch.ones(5, 2))


def test_product_logit_is_the_logit_of_the_product():
    from untwine.models.esmm import product_logit

    a = torch.tensor([-30.0, -3.0, 0.0, 2.0, 8.0, 30.0], dtype=torch.float64)
    b = torch.tensor([1.0, 0.5, 0.0, -1.0, 9.0, 30.0], dtype=torch.float64)
    p = torch.sigmoid(a) * torch.sigmoid(b)
    got = product_logit(a, b)
    torch.testing.assert_close(got[:5], torch.log(p / (1 - p))[:5])
    assert torch.isfinite(got).all()  # p -> 1 stays finite


def test_esmm_outputs_ctr_and_ctcvr_and_cvr_learns_only_through_the_product(make_space, make_batch):
    space = make_space(2)
    batch = make_batch(space, 6)
    model = build("esmm", space)
    out = model(batch)
    ctr, cvr = torch.sigmoid(out["click"]), model.cvr(batch)["buy"]
    torch.testing.assert_close(torch.sigmoid(out["buy"]), ctr * cvr, **TOL)
    # an unclicked impression (CTCVR label 0) reaches the CVR tower only scaled by its pCTR: as pCTR -> 0 the
    # CVR tower's gradient vanishes, so unclicked impressions are never treated as CVR negatives
    with torch.no_grad():
        model.towers.towers[0][1].bias.fill_(-40.0)  # pCTR ~ 4e-18 for every row
    loss = torch.nn.functional.binary_cross_entropy_with_logits(model(batch)["buy"], torch.zeros(6))
    loss.backward()
    cvr_grad = sum(p.grad.abs().sum() for p in model.towers.towers[1].parameters())
    assert cvr_grad < 1e-12
    with torch.no_grad():
        model.towers.towers[0][1].bias.fill_(0.0)
    model.zero_grad()
    torch.nn.functional.binary_cross_entropy_with_logits(model(batch)["buy"], torch.zeros(6)).backward()
    assert sum(p.grad.abs().sum() for p in model.towers.towers[1].parameters()) > 1e-3


def test_esmm_rejects_masked_conversions(make_space):
    import pytest

    from untwine.core.features import FeatureSpace
    from untwine.core.schema import Label

    space = make_space(2)
    labels = [space.schema.labels[0], Label(name="buy", mask_column="click")]
    masked = FeatureSpace(schema=space.schema.model_copy(update={"labels": labels}), vocab_sizes=space.vocab_sizes,
                          numeric_stats=space.numeric_stats)
    with pytest.raises(ValueError, match="drop their mask_column"):
        build_model("esmm", masked)


def test_stem_al_export_has_no_auxiliary_parameters_and_the_same_main_scores(make_space, make_batch):
    from untwine.core.features import FeatureSpace

    space = make_space(2)
    batch = make_batch(space, 6)
    model = build("stem_al", space, main_task="buy", shared_experts=2, task_experts=2)
    main_only = FeatureSpace(schema=space.schema.model_copy(update={"labels": [space.schema.labels[1]]}),
                             vocab_sizes=space.vocab_sizes, numeric_stats=space.numeric_stats)
    exported = build_model("stem_al", main_only, {"embedding_dim": 3, "expert_hidden": [6, 5], "hidden": [4],
                                                  "shared_experts": 2, "task_experts": 2, "inference": True}).eval()
    state = model.export_state()
    assert set(state) == set(exported.state_dict())
    exported.load_state_dict(state)
    torch.testing.assert_close(exported(batch)["buy"], model(batch)["buy"], rtol=0, atol=0)
    aux = {id(p) for p in [*model.tables[1].parameters(), *model.specific[0].parameters(), *model.gates[0].parameters(),
                           *model.towers.towers[0].parameters()]}
    assert sum(p.numel() for p in exported.parameters()) == sum(p.numel() for p in model.parameters() if id(p) not in aux)


def test_stem_al_auxiliary_loss_reaches_main_parameters_only_through_shared_ones(make_space, make_batch):
    space = make_space(2)
    batch = make_batch(space, 7)
    model = build("stem_al", space).train()  # main task: click (the first)
    model(batch)["buy"].sum().backward()  # the auxiliary task's output only
    for p in [*model.tables[1].parameters(), *model.specific[0].parameters(), *model.gates[0].parameters(),
              *model.towers.towers[0].parameters()]:
        assert p.grad is None or torch.count_nonzero(p.grad) == 0
    assert model.tables[0].table.weight.grad.abs().sum() > 0 and model.tables[2].table.weight.grad.abs().sum() > 0
    model.zero_grad(set_to_none=True)
    model(batch)["click"].sum().backward()  # the main prediction never reads auxiliary parameters
    for p in [*model.tables[2].parameters(), *model.specific[1].parameters()]:
        assert p.grad is None or torch.count_nonzero(p.grad) == 0
