"""Ranking loss against its naive pairwise loop, bounded pair sampling, repeated-exposure weights."""
import math

import pytest
import torch
import torch.nn.functional as F

from untwine.core.batch import Batch
from untwine.train.losses import (RankingLoss, RepeatExposureWeight, multitask_bce, pairwise_logistic,
                                  sample_pairs)


def naive_pairwise(z, y, groups=None, w=None):
    """mean over every (i+, j-) pair of the same group of w_i w_j log(1 + exp(-(z_i - z_j)))."""
    num, den = 0.0, 0.0
    for i in range(len(y)):
        for j in range(len(y)):
            if y[i] == 1 and y[j] == 0 and (groups is None or groups[i] == groups[j]):
                pw = 1.0 if w is None else float(w[i] * w[j])
                num += pw * math.log1p(math.exp(-(float(z[i]) - float(z[j]))))
                den += pw
    return num / den if den else 0.0


@pytest.fixture
def batch_data():
    g = torch.Generator().manual_seed(0)
    n = 40
    z = torch.randn(n, generator=g, dtype=torch.float64)
    y = (torch.rand(n, generator=g) < 0.3).double()
    groups = torch.randint(0, 6, (n,), generator=g)
    return z, y, groups


def test_every_pair_equals_the_naive_loop_in_batch_and_in_groups(batch_data):
    z, y, groups = batch_data
    for grp in (None, groups):
        pos, neg = sample_pairs(y, grp, pairs_per_positive=None)
        assert pairwise_logistic(z, pos, neg).item() == pytest.approx(naive_pairwise(z, y, grp), rel=1e-12)


def test_every_pair_with_weights_equals_the_naive_loop(batch_data):
    z, y, groups = batch_data
    w = torch.rand(len(y), generator=torch.Generator().manual_seed(1), dtype=torch.float64) + 0.5
    pos, neg = sample_pairs(y, groups, pairs_per_positive=None)
    got = pairwise_logistic(z, pos, neg, w[pos] * w[neg]).item()
    assert got == pytest.approx(naive_pairwise(z, y, groups, w), rel=1e-12)


def test_every_pair_enumerates_each_pair_once(batch_data):
    _, y, groups = batch_data
    pos, neg = sample_pairs(y, groups, pairs_per_positive=None)
    pairs = set(zip(pos.tolist(), neg.tolist()))
    expected = {(i, j) for i in range(len(y)) for j in range(len(y))
                if y[i] == 1 and y[j] == 0 and groups[i] == groups[j]}
    assert len(pairs) == len(pos) and pairs == expected


def test_sampled_pairs_are_valid_bounded_and_unbiased(batch_data):
    z, y, groups = batch_data
    k = 8
    pos, neg = sample_pairs(y, groups, pairs_per_positive=k, generator=torch.Generator().manual_seed(2))
    assert (y[pos] == 1).all() and (y[neg] == 0).all() and (groups[pos] == groups[neg]).all()
    n_pos_with_neg = sum(1 for i in range(len(y)) if y[i] == 1 and ((groups == groups[i]) & (y == 0)).any())
    assert len(pos) == k * n_pos_with_neg  # K per positive: linear in the batch
    # the sampled estimate converges to the per-positive average of the exact pairwise loss
    gen = torch.Generator().manual_seed(3)
    pos, neg = sample_pairs(y, groups, pairs_per_positive=20000, generator=gen)
    sampled = pairwise_logistic(z, pos, neg).item()
    per_pos = []
    for i in torch.nonzero(y == 1).squeeze(1).tolist():
        negs = torch.nonzero((groups == groups[i]) & (y == 0)).squeeze(1)
        if len(negs):
            per_pos.append(F.softplus(z[negs] - z[i]).mean().item())
    assert sampled == pytest.approx(sum(per_pos) / len(per_pos), rel=0.01)


def test_no_pairs_gives_zero_loss_with_a_gradient():
    z = torch.randn(5, requires_grad=True)
    for y in (torch.zeros(5), torch.ones(5)):
        pos, neg = sample_pairs(y, None, 4)
        loss = pairwise_logistic(z, pos, neg)
        loss.backward()
        assert loss.item() == 0 and z.grad is not None
    # a positive alone in its group has no pair
    pos, neg = sample_pairs(torch.tensor([1., 0., 1.]), torch.tensor([0, 1, 1]), None)
    assert pos.tolist() == [2] and neg.tolist() == [1]


def test_ranking_term_is_added_to_bce_per_task_on_counted_rows(batch_data):
    z, y, groups = batch_data
    z, y = z.float(), y.float()
    mask = (torch.arange(len(y)) % 3 != 0).float()
    b = Batch(labels=torch.stack([y, y], 1), label_mask=torch.stack([torch.ones_like(mask), mask], 1), groups=groups)
    logits = {"a": z, "b": z}
    rank = RankingLoss(weight=1.5, pairs_per_positive=None, scope="group")
    total, per = multitask_bce(logits, b, [1.0, 2.0], ranking=rank)
    keep = mask > 0
    bce_b = F.binary_cross_entropy_with_logits(z[keep], y[keep]).item()
    expected_b = bce_b + 1.5 * naive_pairwise(z[keep], y[keep], groups[keep])
    expected_a = F.binary_cross_entropy_with_logits(z, y).item() + 1.5 * naive_pairwise(z, y, groups)
    assert per["a"].item() == pytest.approx(expected_a, rel=1e-5)
    assert per["b"].item() == pytest.approx(expected_b, rel=1e-5)
    assert total.item() == pytest.approx(expected_a + 2 * expected_b, rel=1e-5)


def test_group_scope_without_groups_is_an_error():
    b = Batch(labels=torch.tensor([[1.], [0.]]))
    with pytest.raises(ValueError, match="group_key"):
        multitask_bce({"y": torch.zeros(2)}, b, [1.0], ranking=RankingLoss(1.0, 4, "group"))


def test_rew_weights_only_negatives_of_repeated_exposures_on_chosen_tasks():
    rew = RepeatExposureWeight(tasks=(0,), alpha=1.0, form="linear", cap=3.0)
    assert rew(torch.tensor([0, 1, 2, 5])).tolist() == [1.0, 2.0, 3.0, 3.0]
    log = RepeatExposureWeight(tasks=(0,), alpha=0.5, form="log", cap=10.0)
    assert log(torch.tensor([0, 3])).tolist() == pytest.approx([1.0, 1 + 0.5 * math.log(4)])
    y = torch.tensor([[0., 0.], [1., 0.], [0., 1.], [0., 0.]])
    exposures = torch.tensor([2, 2, 2, 0])
    z = torch.tensor([0.3, -0.2, 0.1, 0.5])
    b = Batch(labels=y, exposures=exposures)
    _, per = multitask_bce({"click": z, "conv": z}, b, [1.0, 1.0], rew=rew)
    # click: rows 0 and 2 are repeated negatives (w = 3), row 1 a positive (1), row 3 a first exposure (1)
    w = torch.tensor([3., 1., 3., 1.])
    ref = (F.binary_cross_entropy_with_logits(z, y[:, 0], reduction="none") * w).sum() / w.sum()
    assert per["click"].item() == pytest.approx(ref.item(), rel=1e-6)
    # conv is not a REW task: plain BCE
    assert per["conv"].item() == pytest.approx(F.binary_cross_entropy_with_logits(z, y[:, 1]).item(), rel=1e-6)
    with pytest.raises(ValueError, match="exposures"):
        multitask_bce({"click": z}, Batch(labels=y[:, :1]), [1.0], rew=rew)


def test_per_row_normalisation_weighs_every_row_alike():
    z = torch.tensor([0.2, -0.4, 1.0, 0.3])
    y = torch.tensor([[1., 0.], [0., 0.], [0., 1.], [1., 0.]])
    mask = torch.tensor([[1., 0.], [1., 0.], [0., 1.], [1., 0.]])  # task b counts one row of four
    b = Batch(labels=y, label_mask=mask)
    _, per_task = multitask_bce({"a": z, "b": z}, b, [1.0, 1.0])
    _, per_row = multitask_bce({"a": z, "b": z}, b, [1.0, 1.0], per_row=True)
    bce_b = F.binary_cross_entropy_with_logits(z[2], y[2, 1]).item()
    assert per_task["b"].item() == pytest.approx(bce_b) and per_row["b"].item() == pytest.approx(bce_b / 4)
    assert per_row["a"].item() == pytest.approx(per_task["a"].item() * 3 / 4)


def test_sampled_softmax_equals_its_naive_loop_with_log_q_and_extra_negatives():
    from untwine.train.losses import sampled_softmax

    g = torch.Generator().manual_seed(4)
    u, v, extra = (torch.randn(n, 6, generator=g, dtype=torch.float64) for n in (5, 5, 3))
    q = torch.rand(5, generator=g, dtype=torch.float64) + 0.1
    q_extra = torch.rand(3, generator=g, dtype=torch.float64) + 0.1
    ids = torch.tensor([3, 7, 3, 1, 9])  # rows 0 and 2 share their positive item
    tau = 0.5
    got = sampled_softmax(u, v, torch.log(q), tau, extra, torch.log(q_extra), same_item=ids)
    total = 0.0
    for i in range(5):
        cands = [(float(u[i] @ v[j]) / tau - math.log(q[j]), j == i) for j in range(5) if j == i or ids[j] != ids[i]]
        cands += [(float(u[i] @ extra[k]) / tau - math.log(q_extra[k]), False) for k in range(3)]
        z = [c for c, _ in cands]
        pos = next(c for c, is_pos in cands if is_pos)
        total += -(pos - math.log(sum(math.exp(c) for c in z)))
    assert got.item() == pytest.approx(total / 5, rel=1e-10)


def test_log_q_correction_adds_log_q_to_a_popular_items_cost_as_a_negative():
    """Without the correction a popular item is pushed down once per appearance as a negative; the
    correction lowers its logit by log q, i.e. its softmax weight as a negative by the factor q."""
    from untwine.train.losses import sampled_softmax

    u = torch.zeros(2, 2)
    v = torch.zeros(2, 2)  # all logits 0: the loss is log 2 per row
    plain = sampled_softmax(u, v)
    q = torch.tensor([0.5, 0.25])
    corrected = sampled_softmax(u, v, torch.log(q))
    # row 0: positive 0 (logit -log .5), negative 1 (logit -log .25); row 1 the other way round
    r0 = -(-math.log(0.5)) + math.log(math.exp(-math.log(0.5)) + math.exp(-math.log(0.25)))
    r1 = -(-math.log(0.25)) + math.log(math.exp(-math.log(0.5)) + math.exp(-math.log(0.25)))
    assert plain.item() == pytest.approx(math.log(2)) and corrected.item() == pytest.approx((r0 + r1) / 2)


def test_bpr_equals_its_definition():
    from untwine.train.losses import bpr

    pos, neg = torch.tensor([1.0, -0.5]), torch.tensor([[0.0, 2.0], [0.5, -1.0]])
    expect = sum(math.log1p(math.exp(-(float(pos[i]) - float(neg[i, k])))) for i in range(2) for k in range(2)) / 4
    assert bpr(pos, neg).item() == pytest.approx(expect)
    assert bpr(pos, neg[:, 0]).item() == pytest.approx(
        sum(math.log1p(math.exp(-(float(pos[i]) - float(neg[i, 0])))) for i in range(2)) / 2)
