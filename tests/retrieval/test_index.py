"""VectorIndex: exact flat search, ANN recall, seen-item exclusion, serialisation, id mapping, bad input."""
import faiss
import numpy as np
import pydantic
import pytest

from untwine.retrieval.index import IndexConfig, VectorIndex, default_nlist

DIM = 32


@pytest.fixture(autouse=True)
def _one_faiss_thread():
    """Small indexes on a shared machine: one OpenMP thread is faster than two contending ones."""
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    yield
    faiss.omp_set_num_threads(before)


def clustered(n: int, n_queries: int, seed: int = 0, clusters: int = 100, spread: float = 1.0,
              ) -> tuple[np.ndarray, np.ndarray]:
    """Unit vectors around random cluster centres, queries drawn the same way (as user vectors are)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, DIM))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)

    def draw(m: int) -> np.ndarray:
        x = centres[rng.integers(clusters, size=m)] + spread / np.sqrt(DIM) * rng.standard_normal((m, DIM))
        return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)

    return draw(n), draw(n_queries)


def brute_force(items: np.ndarray, queries: np.ndarray, k: int, metric: str,
                allowed: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k rows (and higher-is-better scores) in float64 numpy."""
    x, q = items.astype(np.float64), queries.astype(np.float64)
    scores = q @ x.T if metric == "ip" else -((q[:, None, :] - x[None, :, :]) ** 2).sum(-1)
    if allowed is not None:
        scores = np.where(allowed, scores, -np.inf)
    rows = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(scores, rows, axis=1), rows


def recall(found: np.ndarray, exact: np.ndarray) -> float:
    return float(np.mean([len(np.intersect1d(f, e)) / exact.shape[1] for f, e in zip(found, exact)]))


@pytest.mark.parametrize("metric", ["ip", "l2"])
@pytest.mark.parametrize("n_queries", [7, 64])  # faiss scans below 20 queries and uses BLAS above
def test_flat_equals_brute_force(metric, n_queries):
    rng = np.random.default_rng(1)
    items = rng.standard_normal((2_000, DIM)).astype(np.float32)
    queries = rng.standard_normal((n_queries, DIM)).astype(np.float32)
    scores, ids = VectorIndex(IndexConfig(kind="flat", metric=metric)).build(items).search(queries, 10)
    exact_scores, exact_rows = brute_force(items, queries, 10, metric)
    assert ids.dtype == np.int64 and scores.dtype == np.float32 and ids.shape == scores.shape == (n_queries, 10)
    np.testing.assert_array_equal(ids, exact_rows)
    np.testing.assert_allclose(scores, exact_scores, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("config, threshold", [
    (IndexConfig(kind="ivf_flat", nlist=64, nprobe=16), 0.95),
    (IndexConfig(kind="ivf_flat", nlist=64, nprobe=16, metric="l2"), 0.95),
    (IndexConfig(kind="hnsw", m=16, ef_construction=64, ef_search=64), 0.95),
    (IndexConfig(kind="hnsw", m=16, ef_construction=64, ef_search=64, metric="l2"), 0.95),
    # 16 bytes a vector instead of 128: the quantisation error costs recall
    (IndexConfig(kind="ivf_pq", nlist=64, nprobe=16, pq_m=16), 0.75),
])
def test_ann_recall_at_10_on_clustered_data(config, threshold):
    items, queries = clustered(5_000, 200)
    _, ids = VectorIndex(config).build(items).search(queries, 10)
    _, exact_rows = brute_force(items, queries, 10, config.metric)
    assert recall(ids, exact_rows) >= threshold


def test_recall_grows_with_the_search_budget():
    items, queries = clustered(5_000, 200, seed=3)
    _, exact_rows = brute_force(items, queries, 10, "ip")
    index = VectorIndex(IndexConfig(kind="ivf_flat", nlist=64, nprobe=1)).build(items)
    narrow = recall(index.search(queries, 10)[1], exact_rows)
    wide = VectorIndex.from_bytes(index.to_bytes(), IndexConfig(kind="ivf_flat", nlist=64, nprobe=64))
    assert wide.nprobe == 64
    assert recall(wide.search(queries, 10)[1], exact_rows) == 1.0 > narrow  # all 64 lists = exact


def _exclusions(rng: np.random.Generator, candidates: np.ndarray, lengths: list[int]) -> list[np.ndarray]:
    return [rng.choice(candidates, size=n, replace=False).astype(np.int64) for n in lengths]


@pytest.mark.parametrize("max_fetch", [4096, 12])  # 12: over-fetch capped, the IDSelector re-search fills rows
def test_flat_exclusion_equals_brute_force_without_the_seen_items(max_fetch):
    items, queries = clustered(3_000, 6, seed=4)
    k = 10
    index = VectorIndex(IndexConfig(kind="flat", max_fetch=max_fetch)).build(items)
    _, top = brute_force(items, queries, 40, "ip")
    rng = np.random.default_rng(0)
    # seen lists hit the true top results (the hard case), with lengths 0 .. 30 and one id not in the index
    exclude = [rng.choice(top[i], size=n, replace=False) for i, n in enumerate([0, 1, 5, 10, 25, 30])]
    exclude[3] = np.append(exclude[3], 999_999)
    scores, ids = index.search(queries, k, exclude=exclude)
    allowed = np.ones((len(queries), len(items)), bool)
    for row, seen in enumerate(exclude):
        allowed[row, seen[seen < len(items)]] = False
    exact_scores, exact_rows = brute_force(items, queries, k, "ip", allowed)
    np.testing.assert_array_equal(ids, exact_rows)
    np.testing.assert_allclose(scores, exact_scores, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("config", [IndexConfig(kind="ivf_flat", nlist=32, nprobe=8),
                                    IndexConfig(kind="hnsw", m=16, ef_search=64),
                                    IndexConfig(kind="ivf_pq", nlist=32, nprobe=8, pq_m=8)])
@pytest.mark.parametrize("max_fetch", [4096, 15])
def test_ann_exclusion_drops_seen_ids_and_still_returns_k(config, max_fetch):
    items, queries = clustered(3_000, 20, seed=5)
    config = config.model_copy(update={"max_fetch": max_fetch})
    index = VectorIndex(config).build(items, ids=np.arange(len(items), dtype=np.int64) + 1_000)
    k = 20
    _, unfiltered = index.search(queries, k)
    rng = np.random.default_rng(1)
    # half of each row's own top results are seen, plus random other items
    exclude = [np.concatenate([row[::2], rng.choice(np.arange(1_000, 4_000), size=i * 3, replace=False)])
               for i, row in enumerate(unfiltered)]
    scores, ids = index.search(queries, k, exclude=exclude)
    assert (ids >= 0).all(), "every row has plenty of unseen items: k results each"
    for row, seen in zip(ids, exclude):
        assert not np.isin(row, seen).any()
        assert len(np.unique(row)) == k
    assert (np.diff(scores, axis=1) <= 1e-6).all(), "best first"


def test_exclusion_pads_when_too_few_items_remain():
    items, queries = clustered(30, 2, seed=6)
    index = VectorIndex(IndexConfig(kind="flat")).build(items)
    scores, ids = index.search(queries, 10, exclude=[np.arange(25), np.array([], np.int64)])
    assert sorted(ids[0, :5]) == [25, 26, 27, 28, 29] and (ids[0, 5:] == -1).all()
    assert np.isneginf(scores[0, 5:]).all() and (ids[1] >= 0).all()
    # k beyond the catalogue: padded as well
    _, ids = index.search(queries, 40)
    assert (ids[:, :30] >= 0).all() and (ids[:, 30:] == -1).all()


@pytest.mark.parametrize("config", [IndexConfig(kind="flat", metric="l2"),
                                    IndexConfig(kind="ivf_flat", nlist=32, nprobe=5),
                                    IndexConfig(kind="ivf_pq", nlist=32, nprobe=5, pq_m=8),
                                    IndexConfig(kind="hnsw", m=12, ef_search=40)])
def test_round_trip_gives_identical_results_and_keeps_search_params(config):
    items, queries = clustered(3_000, 50, seed=7)
    ids = np.random.default_rng(0).permutation(len(items)).astype(np.int64) * 3
    index = VectorIndex(config).build(items, ids)
    buf = index.to_bytes()
    assert buf.dtype == np.uint8 and buf.ndim == 1
    # as a bundle reads it back: a read-only view of the file's bytes
    loaded = VectorIndex.from_bytes(np.frombuffer(buf.tobytes(), dtype=np.uint8), config)
    assert (loaded.ntotal, loaded.dim) == (3_000, DIM)
    if config.kind.startswith("ivf"):
        assert loaded.nprobe == config.nprobe
    if config.kind == "hnsw":
        assert loaded.ef_search == config.ef_search
    for a, b in zip(index.search(queries, 10), loaded.search(queries, 10)):
        np.testing.assert_array_equal(a, b)
    exclude = [ids[:50]] * len(queries)
    for a, b in zip(index.search(queries, 10, exclude), loaded.search(queries, 10, exclude)):
        np.testing.assert_array_equal(a, b)


def test_from_bytes_applies_new_search_params_and_rejects_another_structure():
    items, _ = clustered(3_000, 1, seed=8)
    buf = VectorIndex(IndexConfig(kind="hnsw", m=12, ef_search=40)).build(items).to_bytes()
    assert VectorIndex.from_bytes(buf, IndexConfig(kind="hnsw", m=12, ef_search=300)).ef_search == 300
    with pytest.raises(ValueError, match="m=16"):
        VectorIndex.from_bytes(buf, IndexConfig(kind="hnsw", m=16))
    with pytest.raises(ValueError, match="kind='ivf_flat'"):
        VectorIndex.from_bytes(buf, IndexConfig(kind="ivf_flat"))
    with pytest.raises(ValueError, match="metric='l2'"):
        VectorIndex.from_bytes(buf, IndexConfig(kind="hnsw", m=12, metric="l2"))
    ivf = VectorIndex(IndexConfig(kind="ivf_flat", nlist=32)).build(items).to_bytes()
    with pytest.raises(ValueError, match="nlist=64"):
        VectorIndex.from_bytes(ivf, IndexConfig(kind="ivf_flat", nlist=64))
    with pytest.raises(ValueError, match="uint8"):
        VectorIndex.from_bytes(ivf.astype(np.int32), IndexConfig(kind="ivf_flat"))


@pytest.mark.parametrize("kind", ["flat", "ivf_flat", "hnsw"])
def test_ids_are_catalogue_ids(kind):
    items, queries = clustered(2_000, 30, seed=9)
    catalogue_ids = np.random.default_rng(2).permutation(10 * len(items))[:len(items)].astype(np.int64) + 5
    config = IndexConfig(kind=kind, nlist=16, nprobe=16, ef_search=200)  # exhaustive enough to be exact
    _, ids = VectorIndex(config).build(items, catalogue_ids).search(queries, 5)
    _, exact_rows = brute_force(items, queries, 5, "ip")
    np.testing.assert_array_equal(ids, catalogue_ids[exact_rows])


def test_default_nlist_is_about_four_sqrt_n_and_trainable():
    assert default_nlist(100_000) == 1265
    assert default_nlist(5_000) == 5_000 // 39  # 4 * sqrt(5000) = 283 lists would get < 39 points each
    assert default_nlist(10) == 1
    items, _ = clustered(5_000, 1)
    index = VectorIndex(IndexConfig(kind="ivf_flat")).build(items)
    assert index._ivf().nlist == 128


def test_threads_setting_applies_to_faiss():
    items, queries = clustered(500, 3)
    faiss.omp_set_num_threads(2)
    VectorIndex(IndexConfig(threads=1)).build(items).search(queries, 3)
    assert faiss.omp_get_max_threads() == 1


def test_bad_input_raises_clear_errors():
    items, queries = clustered(500, 3)
    with pytest.raises(ValueError, match=r"nlist=1000: expected at most the number of vectors N=500"):
        VectorIndex(IndexConfig(kind="ivf_flat", nlist=1000)).build(items)
    with pytest.raises(ValueError, match=r"train_size=10: expected at least nlist=20"):
        VectorIndex(IndexConfig(kind="ivf_flat", nlist=20, train_size=10)).build(items)
    with pytest.raises(ValueError, match=r"pq_m=5: expected a divisor of the vector dimension d=32"):
        VectorIndex(IndexConfig(kind="ivf_pq", nlist=4, pq_m=5)).build(items)
    with pytest.raises(ValueError, match=r"ids: expected 500 integer ids"):
        VectorIndex().build(items, np.arange(499))
    with pytest.raises(ValueError, match="unique"):
        VectorIndex().build(items, np.zeros(500, np.int64))
    with pytest.raises(ValueError, match="non-negative"):
        VectorIndex().build(items, np.arange(500) - 1)
    with pytest.raises(ValueError, match="finite"):
        VectorIndex().build(np.full((4, DIM), np.nan))
    with pytest.raises(RuntimeError, match="build"):
        VectorIndex().search(queries, 3)
    index = VectorIndex().build(items)
    with pytest.raises(ValueError,
                       match=r"queries: expected dimension d=32 \(the indexed vectors\), got shape \(3, 16\)"):
        index.search(queries[:, :16], 3)
    with pytest.raises(ValueError, match="2-D"):
        index.search(queries[0], 3)
    with pytest.raises(ValueError, match="k: expected a positive integer"):
        index.search(queries, 0)
    with pytest.raises(ValueError, match=r"exclude: expected one id array per query \(3\), got 2"):
        index.search(queries, 3, exclude=[np.arange(2)] * 2)
    with pytest.raises(pydantic.ValidationError):
        IndexConfig(kind="annoy")
    with pytest.raises(pydantic.ValidationError):
        IndexConfig(nprobes=8)  # extra keys are typos
