"""Full-ranking Recall/NDCG/HitRate@K: hand-computed values, a naive loop on random data, seen exclusion, ties."""
import math

import numpy as np
import pytest
import scipy.sparse as sp

from untwine.metrics.retrieval import full_ranking_metrics, topk_indices, topk_metrics


def d(rank: int) -> float:
    return 1.0 / math.log2(rank + 1)


def test_two_users_by_hand():
    # user 0: ranking 3, 1, 0, 2, 4 (item 4 is seen: -inf) ; targets {1, 2}
    # user 1: ranking 0, 4, 2, 3, 1 (item 0 is seen)        ; targets {3}
    scores = np.array([[0.3, 0.4, 0.2, 0.5, 0.9],
                       [0.9, 0.1, 0.3, 0.2, 0.6]])
    seen = [np.array([4]), np.array([0])]
    targets = [np.array([1, 2]), np.array([3])]
    m = full_ranking_metrics(scores, seen, targets, ks=(2, 3))
    # after exclusion: user 0 -> 3, 1, 0, 2 ; user 1 -> 4, 2, 3, 1
    # K=2: u0 hits {1} at rank 2; u1 no hit
    assert m.recall[2] == pytest.approx((1 / 2 + 0) / 2)
    assert m.hit_rate[2] == pytest.approx(0.5)
    assert m.ndcg[2] == pytest.approx((d(2) / (d(1) + d(2)) + 0) / 2)
    # K=3: u0 still only {1} (rank 3 is item 0); u1 hits 3 at rank 3
    assert m.recall[3] == pytest.approx((1 / 2 + 1) / 2)
    assert m.hit_rate[3] == pytest.approx(1.0)
    assert m.ndcg[3] == pytest.approx((d(2) / (d(1) + d(2)) + d(3) / d(1)) / 2)
    assert (m.n_users, m.n_skipped) == (2, 0)
    # the same lists through topk_metrics
    t = topk_metrics(np.array([[3, 1, 0, 2], [4, 2, 3, 1]]), targets, ks=(2, 3))
    assert t.as_dict() == pytest.approx(m.as_dict())


def naive(scores, seen, targets, ks):
    out = {f"{n}@{k}": [] for n in ("recall", "ndcg", "hit_rate") for k in ks}
    for u in range(len(targets)):
        t = set(int(x) for x in targets[u])
        if not t:
            continue
        cand = [i for i in range(scores.shape[1]) if i not in set(seen[u].tolist())]
        ranked = sorted(cand, key=lambda i: (-scores[u, i], i))
        for k in ks:
            top = ranked[:k]
            hits = [1 if i in t else 0 for i in top]
            dcg = sum(h / math.log2(p + 2) for p, h in enumerate(hits))
            idcg = sum(1 / math.log2(p + 2) for p in range(min(k, len(t))))
            out[f"recall@{k}"].append(sum(hits) / len(t))
            out[f"hit_rate@{k}"].append(float(sum(hits) > 0))
            out[f"ndcg@{k}"].append(dcg / idcg)
    return {key: float(np.mean(v)) for key, v in out.items()}


def test_random_against_naive_loop_with_blocks_callable_and_csr():
    rng = np.random.default_rng(0)
    n_users, n_items = 37, 60
    scores = rng.integers(0, 6, size=(n_users, n_items)).astype(np.float32)  # many ties on purpose
    seen = [rng.choice(n_items, size=rng.integers(0, 15), replace=False) for _ in range(n_users)]
    targets = [np.setdiff1d(rng.choice(n_items, size=rng.integers(0, 8), replace=False), s) for s in seen]
    targets[3] = np.zeros(0, np.int64)
    ks = (1, 5, 20, 70)  # 70 > n_items
    want = naive(scores, seen, targets, ks)
    got = full_ranking_metrics(scores, seen, targets, ks, block_size=8)
    n_empty = sum(len(t) == 0 for t in targets)
    assert (got.n_users, got.n_skipped) == (n_users - n_empty, n_empty)
    assert {k: v for k, v in got.as_dict().items() if "@" in k} == pytest.approx(want)
    # the callable path and a CSR seen give the same result, and the inputs are not modified
    before = scores.copy()
    rows_seen = np.repeat(np.arange(n_users), [len(s) for s in seen])
    seen_csr = sp.csr_matrix((np.ones(len(rows_seen)), (rows_seen, np.concatenate(seen))), shape=(n_users, n_items))
    calls = []

    def block(rows):
        calls.append(len(rows))
        return scores[rows]

    got2 = full_ranking_metrics(block, seen_csr, targets, ks, block_size=10)
    assert got2.as_dict() == pytest.approx(got.as_dict())
    assert max(calls) <= 10 and sum(calls) == n_users - n_empty
    np.testing.assert_array_equal(scores, before)


def test_seen_items_are_excluded():
    scores = np.array([[5.0, 4.0, 3.0, 2.0]])
    targets = [np.array([0])]
    assert full_ranking_metrics(scores, None, targets, ks=(1,)).recall[1] == 1.0
    # item 0 seen: it can no longer be retrieved, and the next items fill the list
    assert full_ranking_metrics(scores, [np.array([0])], targets, ks=(1, 4)).recall[4] == 0.0
    idx, _ = topk_indices(np.array([[5.0, -np.inf, 3.0]]), 3)
    np.testing.assert_array_equal(idx, [[0, 2, -1]])  # -inf never retrieved


def test_topk_ties_are_broken_by_lower_index():
    s = np.array([[1.0, 3.0, 3.0, 0.0, 3.0, 3.0, 2.0]])
    idx, val = topk_indices(s, 3)
    np.testing.assert_array_equal(idx, [[1, 2, 4]])
    np.testing.assert_array_equal(val, [[3.0, 3.0, 3.0]])
    rng = np.random.default_rng(1)
    s = rng.integers(0, 4, size=(50, 30)).astype(float)
    idx, _ = topk_indices(s, 7)
    for r in range(50):
        assert idx[r].tolist() == sorted(range(30), key=lambda i: (-s[r, i], i))[:7]
    with pytest.raises(ValueError, match="NaN"):
        topk_indices(np.array([[np.nan, 1.0]]), 1)


def test_topk_metrics_padding_repeats_and_short_lists():
    targets = [np.array([2, 5]), np.array([7]), np.array([], dtype=np.int64)]
    lists = np.array([[2, 2, -1], [-1, -1, -1], [1, 2, 3]])  # a repeat counts once; padding never hits
    m = topk_metrics(lists, targets, ks=(2, 10))
    assert (m.n_users, m.n_skipped) == (2, 1)
    assert m.recall[2] == pytest.approx((1 / 2) / 2)
    assert m.recall[10] == pytest.approx((1 / 2) / 2)  # K > list width: the whole list
    assert m.ndcg[10] == pytest.approx((1.0 / (d(1) + d(2))) / 2)
