"""MMR (Carbonell & Goldstein 1998): hand-computed lists, the window, lam = 1, a naive loop reference."""
import numpy as np
import pytest

from untwine.rerank.mmr import MMRConfig, mmr


def test_near_duplicate_is_pushed_down_by_hand():
    # items 0 and 1 are near-duplicates; min-max relevance = [1, 0.875, 0.5, 0]
    relevance = np.array([1.0, 0.9, 0.6, 0.2])
    similarity = np.array([[1.0, 0.9, 0.1, 0.0],
                           [0.9, 1.0, 0.2, 0.0],
                           [0.1, 0.2, 1.0, 0.0],
                           [0.0, 0.0, 0.0, 1.0]])
    # step 1: item 0 (most relevant, nothing to be similar to)
    # step 2: 0.5 * rel - 0.5 * sim(., 0): item 1 0.4375 - 0.45 = -0.0125, item 2 0.25 - 0.05 = 0.2, item 3 0
    # step 3: item 1 -0.0125 (max sim 0.9), item 3 0 - 0 = 0  -> item 3; then item 1
    assert mmr(relevance, 4, similarity=similarity, lam=0.5).tolist() == [0, 2, 3, 1]


def test_window_lets_a_duplicate_back_once_it_left_the_window():
    # A (0) and A' (2) are duplicates; B (1) and C (3) are unrelated to everything
    relevance = np.array([1.0, 0.3, 0.9, 0.2])  # min-max: [1, 0.125, 0.875, 0]
    similarity = np.eye(4)
    similarity[0, 2] = similarity[2, 0] = 1.0
    # both pick A, then B (0.0625 beats A' at 0.4375 - 0.5 and C at 0)
    # unwindowed, A' still pays for A: C (0) beats A' (-0.0625); with window 1 only B counts: A' 0.4375
    assert mmr(relevance, 4, similarity=similarity, lam=0.5).tolist() == [0, 1, 3, 2]
    assert mmr(relevance, 4, similarity=similarity, lam=0.5, window=1).tolist() == [0, 1, 2, 3]


def test_lam_one_is_the_relevance_order():
    rng = np.random.default_rng(0)
    relevance, embeddings = rng.normal(size=30), rng.normal(size=(30, 4))
    for window in (None, 3):
        picks = mmr(relevance, 30, embeddings=embeddings, lam=1.0, window=window)
        assert picks.tolist() == np.argsort(-relevance, kind="stable").tolist()


def naive_mmr(relevance, embeddings, k, lam, window):
    rel = (relevance - relevance.min()) / (relevance.max() - relevance.min())
    n = len(rel)
    norms = [float(np.linalg.norm(e)) for e in embeddings]
    cos = [[float(np.dot(embeddings[i], embeddings[j])) / (norms[i] * norms[j]) for j in range(n)] for i in range(n)]
    chosen = []
    while len(chosen) < min(k, n):
        recent = chosen if window is None else chosen[-window:]
        best, best_score = None, -np.inf
        for i in range(n):
            if i in chosen:
                continue
            redundancy = max((cos[i][j] for j in recent), default=0.0)
            score = lam * rel[i] - (1 - lam) * redundancy
            if score > best_score:
                best, best_score = i, score
        chosen.append(best)
    return chosen


@pytest.mark.parametrize("seed", range(6))
def test_matches_a_naive_loop(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(8, 40))
    relevance, embeddings = rng.normal(size=n), rng.normal(size=(n, 3))  # low dim: many negative cosines
    for lam in (0.0, 0.3, 0.7):
        for window in (None, 1, 4):
            got = mmr(relevance, 10, embeddings=embeddings, lam=lam, window=window)
            assert got.tolist() == naive_mmr(relevance, embeddings, 10, lam, window), (lam, window)


def test_relevance_scale_does_not_matter_when_normalised():
    rng = np.random.default_rng(1)
    relevance, embeddings = rng.normal(size=20), rng.normal(size=(20, 4))
    base = mmr(relevance, 10, embeddings=embeddings, lam=0.4)
    assert mmr(100 * relevance - 7, 10, embeddings=embeddings, lam=0.4).tolist() == base.tolist()
    # raw scores: a 100x larger relevance swamps the cosine and gives the relevance order
    raw = mmr(100 * relevance, 10, embeddings=embeddings, lam=0.4, normalize_relevance=False)
    assert raw.tolist() == np.argsort(-relevance)[:10].tolist()


def test_k_beyond_n_and_invalid_options():
    relevance, embeddings = np.array([0.2, 0.1]), np.eye(2)
    assert mmr(relevance, 5, embeddings=embeddings).tolist() == [0, 1]
    with pytest.raises(ValueError):
        mmr(relevance, 1, embeddings=embeddings, lam=1.5)
    with pytest.raises(ValueError):
        mmr(relevance, 1, embeddings=embeddings, similarity=np.eye(2))
    with pytest.raises(ValueError):
        MMRConfig(window=0)
