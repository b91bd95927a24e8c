"""Multi-embedding and the heterogeneous mixture of experts: K = 1 equals the single-embedding models,
tables are independent, and bad configs fail with the reason."""
from __future__ import annotations

import pytest
import torch
from pydantic import ValidationError

from untwine.models import build_model
from untwine.nn.embedding import FieldEmbedding, MultiEmbedding

ME_DCNV2 = {"experts": [{"type": "cross", "project": False, "cross_layers": 2}], "combine": "mean"}


def test_multi_embedding_with_one_table_is_the_single_table(make_space, make_batch):
    space = make_space(1)
    batch = make_batch(space, 6)
    torch.manual_seed(3)
    single = FieldEmbedding(space, 5)
    torch.manual_seed(3)
    multi = MultiEmbedding([FieldEmbedding(space, 5)])
    assert torch.equal(single.table.weight, multi[0].table.weight)
    (f1, _), = multi(batch)
    assert torch.equal(single(batch)[0], f1)


def test_multi_embedding_tables_are_independent_and_can_differ_in_width(make_space, make_batch):
    space = make_space(1)
    torch.manual_seed(0)
    multi = MultiEmbedding([FieldEmbedding(space, 4), FieldEmbedding(space, 7)])
    assert multi.dims == [4, 7]
    (a, _), (b, _) = multi(make_batch(space, 5))
    assert a.shape[:2] == b.shape[:2] and (a.shape[2], b.shape[2]) == (4, 7)
    b.sum().backward()
    assert multi[0].table.weight.grad is None  # table 1's output never reads table 0
    assert multi[1].table.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("numeric", ["embed", "raw"])
@pytest.mark.parametrize("T", [1])
def test_me_dcnv2_with_one_table_is_dcnv2_bit_for_bit(make_space, make_batch, numeric, T):
    """Same seed, same parameters in the same order, same logits: exactly, not approximately."""
    space = make_space(T)
    batch = make_batch(space, 7)
    common = {"embedding_dim": 4, "hidden": [8, 6], "numeric": numeric, "batch_norm": True}
    torch.manual_seed(11)
    dcn = build_model("dcnv2", space, {**common, "structure": "stacked", "cross_layers": 2}).eval()
    torch.manual_seed(11)
    me = build_model("hetero_moe", space, {**common, **ME_DCNV2}).eval()
    a, b = list(dcn.state_dict().values()), list(me.state_dict().values())
    assert len(a) == len(b) and all(x.shape == y.shape and torch.equal(x, y) for x, y in zip(a, b))
    assert torch.equal(dcn(batch)["click"], me(batch)["click"])


def test_me_dnn_with_one_table_computes_the_dnn(make_space, make_batch):
    """FlatDNN expert (the first MLP layer as projection) + tower of the other layers = DNN, weights copied."""
    space = make_space(1)
    batch = make_batch(space, 7)
    torch.manual_seed(0)
    dnn = build_model("dnn", space, {"embedding_dim": 4, "hidden": [8, 6, 5]}).eval()
    me = build_model("hetero_moe", space, {"embedding_dim": 4, "hidden": [6, 5], "expert_dim": 8,
                                           "experts": [{"type": "flat_dnn"}]}).eval()
    values = list(dnn.state_dict().values())
    assert [v.shape for v in values] == [v.shape for v in me.state_dict().values()]
    me.load_state_dict(dict(zip(me.state_dict(), values)))
    torch.testing.assert_close(dnn(batch)["click"], me(batch)["click"])


def test_gate_weights_are_a_distribution_per_task(make_space, make_batch):
    space = make_space(2)
    torch.manual_seed(0)
    model = build_model("hetero_moe", space, {"tables": [6, 4], "expert_dim": 5, "hidden": [4], "experts": [
        {"type": "gwpfm"}, {"type": "flat_dnn"}, {"type": "ipnn", "table": 1}]})
    w = model.gate_weights(make_batch(space, 9))
    assert w.shape == (9, 2, 3)
    torch.testing.assert_close(w.sum(-1), torch.ones(9, 2))
    mean = build_model("hetero_moe", space, {"combine": "mean", "experts": [{"type": "fm"}, {"type": "ipnn"}]})
    assert mean.gate_weights(make_batch(space, 3)) is None


@pytest.mark.parametrize("cfg,match", [
    ({"tables": [4, 4], "experts": [{"type": "flat_dnn"}]}, "tables \\[1\\] feed no expert"),
    ({"tables": [4], "experts": [{"type": "ipnn", "table": 1}]}, "only 1 table"),
    ({"experts": [{"type": "ipnn", "project": False}]}, "needs its non-linear projection"),
    ({"experts": [{"type": "cross", "project": False, "hidden": [3]}]}, "hidden layers are the projection"),
    ({"experts": [{"type": "flat_dnn", "groups": [["user_id"]]}]}, "GwPFM options"),
])
def test_bad_configs_are_rejected_with_the_reason(make_space, cfg, match):
    with pytest.raises(ValidationError, match=match):
        build_model("hetero_moe", make_space(1), cfg)


def test_build_errors_name_the_problem(make_space):
    space = make_space(1)
    with pytest.raises(ValueError, match="width 4, not a multiple of its 3 groups"):
        build_model("hetero_moe", space, {"tables": [4], "experts": [{"type": "gwpfm"}]})
    with pytest.raises(ValueError, match="leave fields .*without a group"):
        build_model("hetero_moe", space, {"tables": [4], "experts": [{"type": "gwpfm", "groups": [["user_id"]]}]})
    with pytest.raises(ValueError, match="one width"):
        build_model("hetero_moe", space, {"embedding_dim": 4, "experts": [
            {"type": "cross", "project": False}, {"type": "flat_dnn"}]})


def test_gwpfm_groups_from_config(make_space, make_batch):
    space = make_space(1, multi=False, seq=False, numeric=False, vector=False)
    torch.manual_seed(0)
    model = build_model("hetero_moe", space, {"tables": [4], "experts": [
        {"type": "gwpfm", "groups": [["user_id", "item_cate"], ["item_id"]]}]})
    gw = model.experts[0].interaction
    assert gw.member.tolist() == [[1, 0, 1], [0, 1, 0]] and gw.num_pairs == 1
    assert model(make_batch(space, 3))["click"].shape == (3,)


def test_ame_defaults_and_static_task_assignment(make_space, make_batch):
    space = make_space(2)
    torch.manual_seed(0)
    ame = build_model("ame", space, {"expert_dim": 5, "hidden": [4]})
    assert [t.dim for t in ame.tables] == [16, 32, 64] and [e.table for e in ame.experts] == [0, 1, 2]
    batch = make_batch(space, 6)
    free = ame.gate_weights(batch)
    assert (free > 0).all()  # sample-level routing over every table
    routed = build_model("ame", space, {"expert_dim": 5, "hidden": [4], "task_experts": {"buy": [1, 2]}})
    w = routed.gate_weights(batch)
    assert torch.count_nonzero(w[:, 1, 0]) == 0 and (w[:, 1, 1:] > 0).all()  # buy never reads table 0
    assert (w[:, 0] > 0).all()  # click is not restricted
    torch.testing.assert_close(w.sum(-1), torch.ones(6, 2))
    with pytest.raises(ValueError, match="not tasks"):
        build_model("ame", space, {"task_experts": {"cvr": [0]}})
    with pytest.raises(ValueError, match="must be in 0..2"):
        build_model("ame", space, {"task_experts": {"buy": [3]}})
