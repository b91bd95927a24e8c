"""ItemCF: similarity against a dense numpy reference (cosine, IUF, co-occurrence, normalised), top-N cut,
block-size independence, retrieval scores and exclusion, state round trip."""
import numpy as np
import pytest
import scipy.sparse as sp

from untwine.retrieval.channel import histories_from_matrix, interaction_matrix, sparse_row_topn
from untwine.retrieval.itemcf import ItemCFChannel, ItemCFConfig, itemcf_similarity


def random_interactions(seed: int = 0, n_users: int = 40, n_items: int = 25, density: float = 0.2) -> sp.csr_matrix:
    rng = np.random.default_rng(seed)
    mask = rng.random((n_users, n_items)) < density
    mask[0, :] = False  # an inactive user
    mask[:, 3] = False  # an item nobody touched
    u, i = np.nonzero(mask)
    counts = rng.integers(1, 4, size=len(u))  # counts: the similarity must binarise
    return interaction_matrix(u, i, n_users, n_items, weights=counts)


def dense_reference(ui: sp.csr_matrix, iuf: bool, cosine: bool) -> np.ndarray:
    a = (ui.toarray() > 0).astype(float)
    per_user = a.sum(axis=1)
    w = np.where(per_user > 0, 1.0 / np.log1p(np.maximum(per_user, 1)), 0.0) if iuf else np.ones(len(a))
    c = a.T @ (a * w[:, None])
    np.fill_diagonal(c, 0.0)
    if cosine:
        n = a.sum(axis=0)
        denom = np.sqrt(np.outer(n, n))
        c = np.divide(c, denom, out=np.zeros_like(c), where=denom > 0)
    return c


@pytest.mark.parametrize("iuf", [False, True])
@pytest.mark.parametrize("similarity", ["cosine", "cooccurrence"])
def test_similarity_matches_dense_reference(iuf, similarity):
    ui = random_interactions()
    cfg = ItemCFConfig(top_n=1000, iuf=iuf, similarity=similarity)
    got = itemcf_similarity(ui, cfg).toarray()
    want = dense_reference(ui, iuf, similarity == "cosine")
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)
    if similarity == "cosine":
        np.testing.assert_allclose(got, got.T, rtol=1e-6)


def test_block_size_does_not_change_the_table():
    ui = random_interactions(1)
    one = itemcf_similarity(ui, ItemCFConfig(top_n=5))
    many = itemcf_similarity(ui, ItemCFConfig(top_n=5, max_block_products=1))  # one item per block
    assert (one != many).nnz == 0


def test_top_n_keeps_the_n_largest_per_row_with_lower_index_on_ties():
    ui = random_interactions(2)
    full = dense_reference(ui, iuf=False, cosine=True)
    table = itemcf_similarity(ui, ItemCFConfig(top_n=4)).toarray()
    for i in range(full.shape[0]):
        ranked = sorted((j for j in range(full.shape[1]) if full[i, j] > 0), key=lambda j: (-round(full[i, j], 6), j))
        assert set(np.flatnonzero(table[i])) == set(ranked[:4]), i
    assert (np.count_nonzero(table, axis=1) <= 4).all()


def test_normalize_divides_rows_by_their_max():
    ui = random_interactions(3)
    raw = itemcf_similarity(ui, ItemCFConfig(top_n=6)).toarray()
    norm = itemcf_similarity(ui, ItemCFConfig(top_n=6, normalize=True)).toarray()
    row_max = raw.max(axis=1, keepdims=True)
    np.testing.assert_allclose(norm, np.divide(raw, row_max, out=np.zeros_like(raw), where=row_max > 0), rtol=1e-6)


def test_retrieve_scores_sum_similarities_and_exclude_history():
    ui = random_interactions(4)
    ch = ItemCFChannel(ItemCFConfig(top_n=8, recency_half_life=2.0)).fit(ui)
    s = ch.neighbours.toarray().astype(np.float64)
    hist = [np.array([5, 1, 7]), np.array([2]), np.array([], dtype=np.int64)]
    items, scores = ch.retrieve(hist, k=6)
    w = 0.5 ** (np.array([2.0, 1.0, 0.0]) / 2.0)  # most recent (7) weighs 1
    raw = w[0] * s[5] + w[1] * s[1] + w[2] * s[7]
    want = raw.copy()
    want[[5, 1, 7]] = 0.0
    order = sorted(np.flatnonzero(want), key=lambda j: (-want[j], j))[:6]
    assert items[0].tolist() == order + [-1] * (6 - len(order))
    np.testing.assert_allclose(scores[0, :len(order)], want[order], rtol=1e-5)
    assert not set(items[1].tolist()) & {2}
    assert (items[2] == -1).all() and np.isneginf(scores[2]).all()
    # explicit exclusion replaces the history default
    raw[order[0]] = 0.0
    items_ex, _ = ch.retrieve(hist[:1], k=20, exclude=[np.array([order[0]])])
    ranked = sorted(np.flatnonzero(raw), key=lambda j: (-raw[j], j))[:20]
    assert items_ex[0].tolist() == ranked + [-1] * (20 - len(ranked))
    assert set(items_ex[0].tolist()) & {5, 1, 7}  # history items are candidates again
    # full scores agree with the lists
    full = ch.score_all(hist[:1])[0]
    np.testing.assert_allclose(full[order], want[order], rtol=1e-5)


def test_state_round_trip_gives_identical_retrieval():
    ui = random_interactions(5)
    ch = ItemCFChannel(ItemCFConfig(top_n=5, iuf=True)).fit(ui)
    back = ItemCFChannel.from_state(ch.state(), ch.config_dict())
    assert back.config == ch.config and back.name == "itemcf"
    hist = histories_from_matrix(ui)
    a, b = ch.retrieve(hist, 10), back.retrieve(hist, 10)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert all(isinstance(v, np.ndarray) for v in ch.state().values())


def test_config_is_frozen_and_strict():
    with pytest.raises(Exception):
        ItemCFConfig(topn=3)
    cfg = ItemCFConfig()
    with pytest.raises(Exception):
        cfg.top_n = 3


@pytest.mark.parametrize("offset", [None, 3])
def test_sparse_row_topn_dense_and_sparse_paths_agree(offset):
    block = sp.random(12, 30, density=0.3, random_state=7, format="csr")
    block.data = np.round(block.data * 4) / 4  # ties on purpose (and a few zeros, never kept)
    a = sparse_row_topn(block, 5, drop_diagonal_offset=offset, dense=True)
    b = sparse_row_topn(block, 5, drop_diagonal_offset=offset, dense=False)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    full = block.toarray()
    if offset is not None:
        full[np.arange(12), np.arange(12) + offset] = 0
    counts, cols, vals = a
    start = np.concatenate([[0], np.cumsum(counts)])
    for r in range(12):
        ranked = sorted(np.flatnonzero(full[r] > 0), key=lambda j: (-full[r, j], j))[:5]
        assert cols[start[r]:start[r + 1]].tolist() == sorted(ranked)


def test_topk_dense_excludes_and_breaks_ties_by_index():
    from untwine.retrieval.channel import topk_dense

    s = np.array([[0.5, 0.9, 0.9, 0.1], [1.0, 1.0, 1.0, 1.0]])
    items, scores = topk_dense(s, 3, exclude=[np.array([1]), np.array([0, 1, 2])])
    assert items.tolist() == [[2, 0, 3], [3, -1, -1]]
    assert scores.dtype == np.float32 and np.isneginf(scores[1, 1:]).all()


def test_single_request_gather_path_equals_the_sparse_product():
    """Serving asks for one history at a time through a row gather; it must give the batch path's lists."""
    import scipy.sparse as sp

    from untwine.retrieval.channel import topk_sparse
    from untwine.retrieval.itemcf import ItemCFChannel, ItemCFConfig, SwingChannel, SwingConfig

    rng = np.random.default_rng(3)
    ui = sp.random(80, 60, density=0.15, random_state=4, format="csr")
    for ch in (ItemCFChannel(ItemCFConfig(top_n=15, recency_half_life=2.0)).fit(ui),
               SwingChannel(SwingConfig(top_n=15, max_users_per_item=None)).fit(ui)):
        for _ in range(25):
            h = rng.integers(0, 60, int(rng.integers(1, 8)))  # repeats allowed: their weights add up
            ex = np.union1d(h, rng.integers(0, 60, 3))
            got_i, got_s = ch.retrieve([h], 12, exclude=[ex])
            want_i, want_s = topk_sparse(ch._scores([h]), 12, [ex])
            np.testing.assert_array_equal(got_i, want_i)
            np.testing.assert_allclose(got_s, want_s, rtol=1e-6)
