"""Greedy DPP MAP (Chen et al. 2018): the fast Cholesky greedy against log-det references.

What is checked, and how strongly:

* sequence equality with a naive greedy that evaluates ``log det L[Y + i]`` with ``slogdet`` for every
  candidate, unwindowed and windowed (the windowed reference conditions on the last w - 1 picks);
* exact MAP where theory says the greedy must find it: k = 1, and orthogonal items (``S = I``, so
  ``log det L_Y = sum log q_i^2`` and the MAP is the top-k quality);
* on random small instances the greedy is NOT guaranteed to be the MAP. The only guarantee is
  ``det(greedy) >= det(MAP) / (k!)^2`` (Civril & Magdon-Ismail 2009), asserted on every instance.
  ``det(greedy) >= 0.5 det(MAP)`` is asserted on the 40 fixed instances because it holds there (worst
  ratio 0.79, 35 of 40 exactly optimal), but it is an observation, not a theorem: on 300 other random
  instances of the same size the worst ratio seen was 0.32 and 1% were below 0.5;
* a rank-deficient kernel (duplicate vectors) stops early and never picks a duplicate, even when the
  duplicate is the more relevant.
"""
import itertools
import math

import numpy as np
import pytest

from untwine.rerank.dpp import DPPConfig, dpp_greedy, quality_exponent


def kernel(relevance: np.ndarray, embeddings: np.ndarray, theta: float) -> tuple[np.ndarray, np.ndarray]:
    """(L, S) built densely, independent of the implementation's helpers."""
    rel = (relevance - relevance.min()) / (relevance.max() - relevance.min())
    quality = np.exp(theta / (2 * (1 - theta)) * rel)
    unit = embeddings / np.linalg.norm(embeddings, axis=1, keepdims=True)
    similarity = unit @ unit.T
    return quality[:, None] * similarity * quality[None, :], similarity


def log_det(matrix: np.ndarray, subset: list[int]) -> float:
    if not subset:
        return 0.0
    sign, value = np.linalg.slogdet(matrix[np.ix_(subset, subset)])
    return value if sign > 0 else -np.inf


def naive_greedy(L: np.ndarray, k: int, window: int | None = None) -> list[int]:
    chosen: list[int] = []
    while len(chosen) < min(k, len(L)):
        # the window conditions on the last w - 1 picks (none for w = 1)
        recent = chosen if window is None else chosen[max(0, len(chosen) - (window - 1)):] if window > 1 else []
        gains = {i: log_det(L, recent + [i]) - log_det(L, recent) for i in range(len(L)) if i not in chosen}
        chosen.append(max(gains, key=gains.get))
    return chosen


def random_instance(seed: int, n: int, dim: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.normal(size=n), rng.normal(size=(n, dim))


@pytest.mark.parametrize("seed", range(8))
def test_fast_greedy_matches_naive_log_det_greedy(seed):
    n = 8 + 3 * seed  # 8 .. 29
    relevance, embeddings = random_instance(seed, n, dim=6)
    for theta in (0.2, 0.6, 0.9):
        L, _ = kernel(relevance, embeddings, theta)
        fast = dpp_greedy(relevance, 5, embeddings=embeddings, theta=theta)
        assert fast.tolist() == naive_greedy(L, 5), f"theta={theta}"


@pytest.mark.parametrize("window", [1, 2, 3, 5])
def test_windowed_greedy_matches_naive_windowed_greedy(window):
    # k well beyond the window, so the oldest item leaves the window many times; dim >= window keeps
    # the windowed kernel full rank, so neither side stops early
    for seed in range(3):
        relevance, embeddings = random_instance(100 + seed, 25, dim=6)
        L, _ = kernel(relevance, embeddings, 0.5)
        fast = dpp_greedy(relevance, 15, embeddings=embeddings, theta=0.5, window=window)
        assert fast.tolist() == naive_greedy(L, 15, window=window)


def test_window_changes_the_selection():
    relevance, embeddings = random_instance(7, 25, dim=4)
    full = dpp_greedy(relevance, 15, embeddings=embeddings, theta=0.5)
    windowed = dpp_greedy(relevance, 15, embeddings=embeddings, theta=0.5, window=3)
    assert len(full) == 4  # rank 4: the unwindowed greedy stops once the span is full
    assert len(windowed) == 15 and windowed[:3].tolist() == full[:3].tolist()


def brute_force_map(L: np.ndarray, k: int) -> float:
    return max(log_det(L, list(subset)) for subset in itertools.combinations(range(len(L)), k))


def test_k1_is_the_map():
    relevance, embeddings = random_instance(3, 10, dim=5)
    for theta in (0.0, 0.5, 0.9):
        L, _ = kernel(relevance, embeddings, theta)
        pick = dpp_greedy(relevance, 1, embeddings=embeddings, theta=theta).tolist()
        assert log_det(L, pick) == pytest.approx(brute_force_map(L, 1))


def test_orthogonal_items_give_the_top_quality_map():
    rng = np.random.default_rng(11)
    relevance = rng.normal(size=8)
    embeddings = np.linalg.qr(rng.normal(size=(8, 8)))[0] * rng.uniform(0.5, 2.0, size=(8, 1))  # rows orthogonal
    L, _ = kernel(relevance, embeddings, 0.7)
    pick = dpp_greedy(relevance, 4, embeddings=embeddings, theta=0.7)
    assert pick.tolist() == np.argsort(-relevance)[:4].tolist()
    assert log_det(L, pick.tolist()) == pytest.approx(brute_force_map(L, 4))


def test_greedy_against_brute_force_map_on_random_small_sets():
    ratios, guaranteed = [], []
    for seed in range(40):
        rng = np.random.default_rng(1000 + seed)
        n, k = int(rng.integers(5, 11)), int(rng.integers(2, 5))
        relevance, embeddings = rng.normal(size=n), rng.normal(size=(n, int(rng.integers(k, 7))))
        theta = (0.2, 0.5, 0.8)[seed % 3]
        L, _ = kernel(relevance, embeddings, theta)
        pick = dpp_greedy(relevance, k, embeddings=embeddings, theta=theta).tolist()
        assert len(pick) == k
        ratio = math.exp(log_det(L, pick) - brute_force_map(L, k))
        assert ratio <= 1 + 1e-9
        ratios.append(ratio)
        guaranteed.append(ratio >= 1 / math.factorial(k) ** 2)
    assert all(guaranteed)
    assert min(ratios) >= 0.5  # empirical on these seeds, see the module docstring
    assert np.median(ratios) == pytest.approx(1.0)  # most small instances: the greedy finds the MAP


def test_duplicates_stop_early_and_are_never_picked():
    rng = np.random.default_rng(5)
    distinct = rng.normal(size=(3, 6))
    # items 3, 4, 5 duplicate 0, 1, 2 (up to scale) and are the most relevant of all
    embeddings = np.vstack([distinct, 2.0 * distinct])
    relevance = np.array([0.3, 0.2, 0.1, 1.0, 0.9, 0.8])
    for theta in (0.0, 0.5, 0.95):
        pick = dpp_greedy(relevance, 5, embeddings=embeddings, theta=theta)
        assert len(pick) == 3, f"theta={theta}: {pick}"
        assert len({int(i) % 3 for i in pick}) == 3  # one item per distinct vector


def test_rank_deficient_kernel_stops_at_its_rank():
    relevance, embeddings = random_instance(2, 12, dim=3)
    assert len(dpp_greedy(relevance, 8, embeddings=embeddings, theta=0.5)) == 3


def test_similarity_matrix_input_equals_embeddings_input():
    relevance, embeddings = random_instance(4, 15, dim=5)
    _, similarity = kernel(relevance, embeddings, 0.5)
    from_embeddings = dpp_greedy(relevance, 5, embeddings=embeddings, theta=0.5)
    from_matrix = dpp_greedy(relevance, 5, similarity=similarity, theta=0.5)
    assert from_embeddings.tolist() == from_matrix.tolist()


def test_invalid_options():
    relevance, embeddings = random_instance(0, 5, dim=2)
    with pytest.raises(ValueError):
        quality_exponent(1.0)
    with pytest.raises(ValueError):
        dpp_greedy(relevance, 2)  # no similarity at all
    with pytest.raises(ValueError):
        DPPConfig(theta=1.0)
    assert dpp_greedy(relevance, 0, embeddings=embeddings).tolist() == []
