"""Swing against its defining double sum (plain Python loops), symmetry, the user cap, state round trip."""
import itertools

import numpy as np
import pytest

from untwine.retrieval.channel import histories_from_matrix, interaction_matrix
from untwine.retrieval.itemcf import SwingChannel, SwingConfig, swing_similarity

# 6 users x 6 items, users of different activity; items (0, 4) and (1, 5) share one user, (0, 5) none
TOY = {0: [0, 1, 2, 3], 1: [0, 1, 3], 2: [0, 1, 2, 4], 3: [1, 2, 4, 5], 4: [2, 3, 4, 5], 5: [3, 4, 5]}


def toy_matrix():
    users = [u for u, items in TOY.items() for _ in items]
    items = [i for its in TOY.values() for i in its]
    return interaction_matrix(np.array(users), np.array(items), 6, 6)


def swing_by_definition(alpha: float, offset: float, power: float, weighting: bool) -> np.ndarray:
    item_sets = {u: set(v) for u, v in TOY.items()}
    users_of = {i: {u for u, s in item_sets.items() if i in s} for i in range(6)}
    w = {u: (len(s) + offset) ** -power if weighting else 1.0 for u, s in item_sets.items()}
    out = np.zeros((6, 6))
    for i, j in itertools.product(range(6), repeat=2):
        if i == j:
            continue
        common = users_of[i] & users_of[j]
        total = 0.0
        for u in common:
            for v in common:
                if v != u:
                    total += w[u] * w[v] / (alpha + len(item_sets[u] & item_sets[v]))
        out[i, j] = total
    return out


@pytest.mark.parametrize("alpha,offset,power,weighting", [(1.0, 5.0, 0.5, True), (0.5, 0.0, 0.5, True),
                                                          (1.0, 5.0, 0.5, False), (2.0, 1.0, 0.35, True)])
@pytest.mark.parametrize("float64", [True, False])
def test_toy_graph_equals_the_double_sum_and_is_symmetric(alpha, offset, power, weighting, float64):
    cfg = SwingConfig(top_n=10, alpha=alpha, user_weight_offset=offset, user_weight_power=power,
                      user_weighting=weighting, max_users_per_item=None, float64=float64)
    got = swing_similarity(toy_matrix(), cfg).toarray()
    want = swing_by_definition(alpha, offset, power, weighting)
    assert (want > 0).sum() == 24 and want[0, 4] == want[0, 5] == want[1, 5] == 0  # a pair needs 2 users
    # float32 storage: the float64 path is exact up to that rounding
    np.testing.assert_allclose(got, want, rtol=1e-7 if float64 else 1e-6, atol=0)
    np.testing.assert_allclose(got, got.T, rtol=1e-6, atol=0)


def test_top_n_and_cap():
    ui = toy_matrix()
    full = swing_by_definition(1.0, 5.0, 0.5, True)
    top2 = swing_similarity(ui, SwingConfig(top_n=2, max_users_per_item=None, float64=True)).toarray()
    for i in range(6):
        ranked = sorted((j for j in range(6) if full[i, j] > 0), key=lambda j: (-full[i, j], j))[:2]
        assert set(np.flatnonzero(top2[i])) == set(ranked)
    # with at most 2 users per item, every row is the double sum over a 2-user sample of U_i
    rng = np.random.default_rng(3)
    big = interaction_matrix(rng.integers(0, 30, 300), rng.integers(0, 12, 300), 30, 12)
    capped = swing_similarity(big, SwingConfig(top_n=20, max_users_per_item=2, seed=1))
    again = swing_similarity(big, SwingConfig(top_n=20, max_users_per_item=2, seed=1))
    exact = swing_similarity(big, SwingConfig(top_n=20, max_users_per_item=None))
    assert (capped != again).nnz == 0  # seeded sample: deterministic
    assert capped.nnz < exact.nnz
    assert capped.sum() < exact.sum()


def test_retrieve_and_state_round_trip():
    ui = toy_matrix()
    ch = SwingChannel(SwingConfig(top_n=3, max_users_per_item=None)).fit(ui)
    hist = histories_from_matrix(ui) + [np.array([0])]
    items, scores = ch.retrieve(hist, 4)
    s = ch.neighbours.toarray()
    # the last request: item 0's neighbours, by swing score
    row = s[0].copy()
    ranked = sorted(np.flatnonzero(row), key=lambda j: (-row[j], j))
    assert items[-1].tolist() == ranked + [-1] * (4 - len(ranked))
    for q, h in enumerate(hist):
        assert not set(items[q].tolist()) & set(h.tolist())
    back = SwingChannel.from_state(ch.state(), ch.config_dict())
    b_items, b_scores = back.retrieve(hist, 4)
    np.testing.assert_array_equal(items, b_items)
    np.testing.assert_array_equal(scores, b_scores)


def test_column_chunks_do_not_change_the_table():
    rng = np.random.default_rng(4)
    ui = interaction_matrix(rng.integers(0, 25, 200), rng.integers(0, 15, 200), 25, 15)
    one = swing_similarity(ui, SwingConfig(top_n=15, max_users_per_item=None, float64=True))
    chunked = swing_similarity(ui, SwingConfig(top_n=15, max_users_per_item=None, float64=True, max_dense_columns=4))
    np.testing.assert_allclose(chunked.toarray(), one.toarray(), rtol=1e-7)
    assert one.nnz > 50
