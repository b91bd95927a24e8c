"""Approximate nearest-neighbour index over item vectors for the embedding-based recall channels.

``VectorIndex`` wraps one faiss index chosen by ``IndexConfig.kind``:

- ``flat``: exact search (``IndexFlatIP`` / ``IndexFlatL2`` inside an ``IndexIDMap``), the reference;
- ``ivf_flat``: k-means inverted lists over full vectors (``IndexIVFFlat``), ``nprobe`` lists scanned per query;
- ``ivf_pq``: inverted lists over product-quantised residuals (``IndexIVFPQ``), ``pq_m`` bytes a vector at 8 bits;
- ``hnsw``: the HNSW graph over full vectors (``IndexHNSWFlat`` inside an ``IndexIDMap``), ``ef_search``
  candidates kept per query.

Ids are catalogue indices: ``build(vectors, ids)`` stores ``ids[i]`` for ``vectors[i]`` (IVF natively,
flat and HNSW through ``IndexIDMap``), and ``search`` returns them with ``-1`` where fewer than ``k``
results exist. Scores are "higher is better" for both metrics so recall channels merge without caring:
the inner product for ``ip`` and the negated squared L2 distance for ``l2``; padding scores ``-inf``.

Excluding already-seen items. A faiss ``IDSelector`` (``SearchParameters*.sel``) works with every kind here
(including through ``IndexIDMap``, which translates it to internal ids), but one selector applies to the whole
search call, while each user has their own seen list. So a batch is over-fetched: one faiss call asks for
``k + max(len(excluded))`` results (capped by ``max_fetch`` and ``ntotal``), excluded ids are dropped per row
and the first ``k`` kept. That is exact, not an approximation, whenever the over-fetch was not capped: at
most ``len(excluded)`` of the fetched results can be excluded. Rows the cap cut short (long seen lists) are
re-searched one at a time with an ``IDSelectorNot(IDSelectorBatch(excluded))``, so they still get ``k``
results when the index can find them.

Serialisation goes through ``faiss.serialize_index`` / ``faiss.deserialize_index`` (a uint8 array the model
bundle writes to a file and hashes), never pickle. The config is the source of truth for the runtime search
parameters: ``from_bytes`` sets ``nprobe`` / ``efSearch`` from it, so they can be retuned without a rebuild,
while the structural fields (kind, metric, nlist, pq_m, m) must match the bytes.
"""
from __future__ import annotations

import math
from typing import Literal

import faiss
import numpy as np
from pydantic import BaseModel, ConfigDict, Field

# faiss's k-means warns below 39 training points per centroid; the default nlist respects it.
MIN_POINTS_PER_LIST = 39
# Default IVF training sample per list: enough for stable centroids, far below faiss's own 256 cap.
TRAIN_POINTS_PER_LIST = 64

IndexKind = Literal["flat", "ivf_flat", "ivf_pq", "hnsw"]
Metric = Literal["ip", "l2"]


class IndexConfig(BaseModel):
    """How the item vectors are indexed and searched."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: IndexKind = "flat"
    metric: Metric = "ip"  # two-tower scores are dot products
    # IVF (ivf_flat, ivf_pq)
    nlist: int | None = Field(None, ge=1)  # None: about 4 * sqrt(N), at most N / 39
    nprobe: int = Field(32, ge=1)
    train_size: int | None = Field(None, ge=1)  # None: min(N, 64 * nlist), ivf_pq at least 39 * 2**pq_nbits
    pq_m: int | None = Field(None, ge=1)  # ivf_pq sub-quantisers, must divide d; None: d / 2
    pq_nbits: int = Field(8, ge=1, le=16)
    # HNSW
    m: int = Field(32, ge=2)
    ef_construction: int = Field(100, ge=1)
    ef_search: int = Field(128, ge=1)
    # runtime
    threads: int | None = Field(None, ge=1)  # faiss.omp_set_num_threads on each build / search; None: as is
    max_fetch: int = Field(4096, ge=1)  # largest k one batched faiss call is asked for when excluding
    seed: int = 0  # IVF training sample and k-means initialisation


def default_nlist(n: int) -> int:
    """About 4 * sqrt(N) inverted lists, fewer when N is too small to train that many centroids."""
    return max(1, min(round(4 * math.sqrt(n)), n // MIN_POINTS_PER_LIST))


def _faiss_metric(metric: Metric) -> int:
    return faiss.METRIC_INNER_PRODUCT if metric == "ip" else faiss.METRIC_L2


def _set_threads(threads: int | None) -> None:
    if threads is not None:
        faiss.omp_set_num_threads(threads)


class VectorIndex:
    """A faiss index over (N, d) float32 item vectors keyed by int64 catalogue ids."""

    def __init__(self, config: IndexConfig | None = None) -> None:
        self.config = config or IndexConfig()
        self._index: faiss.Index | None = None

    # ---- building

    def build(self, vectors: np.ndarray, ids: np.ndarray | None = None) -> VectorIndex:
        """Index ``vectors`` (N, d) under ``ids`` (N,) int64, default 0..N-1; replaces any previous content."""
        cfg = self.config
        vectors = _as_matrix(vectors, "vectors")
        n, d = vectors.shape
        if n == 0:
            raise ValueError("vectors: expected at least one row, got shape (0, d)")
        ids = _check_ids(ids, n)
        _set_threads(cfg.threads)
        if cfg.kind in ("flat", "hnsw"):
            index = faiss.IndexIDMap(self._base_index(d))
            index.add_with_ids(vectors, ids)
        else:
            index = self._ivf_index(d, n)
            index.train(self._training_sample(vectors, index.nlist))
            index.add_with_ids(vectors, ids)
        self._index = index
        self._apply_search_params()
        return self

    def _base_index(self, d: int) -> faiss.Index:
        cfg = self.config
        if cfg.kind == "flat":
            return faiss.IndexFlatIP(d) if cfg.metric == "ip" else faiss.IndexFlatL2(d)
        hnsw = faiss.IndexHNSWFlat(d, cfg.m, _faiss_metric(cfg.metric))
        hnsw.hnsw.efConstruction = cfg.ef_construction
        return hnsw

    def _ivf_index(self, d: int, n: int) -> faiss.IndexIVF:
        cfg = self.config
        nlist = cfg.nlist if cfg.nlist is not None else default_nlist(n)
        if nlist > n:
            raise ValueError(f"nlist={nlist}: expected at most the number of vectors N={n} (one k-means "
                             f"centroid needs at least one vector)")
        train_n = self._train_size(n, nlist)
        if train_n < nlist:
            raise ValueError(f"train_size={train_n}: expected at least nlist={nlist} training vectors")
        # faiss's Python constructors keep a reference to the quantizer, so it lives as long as the index
        quantizer = faiss.IndexFlatIP(d) if cfg.metric == "ip" else faiss.IndexFlatL2(d)
        if cfg.kind == "ivf_flat":
            index = faiss.IndexIVFFlat(quantizer, d, nlist, _faiss_metric(cfg.metric))
        else:
            pq_m = cfg.pq_m if cfg.pq_m is not None else max(1, d // 2)
            if d % pq_m:
                raise ValueError(f"pq_m={pq_m}: expected a divisor of the vector dimension d={d}")
            if train_n < 2 ** cfg.pq_nbits:
                raise ValueError(f"ivf_pq with pq_nbits={cfg.pq_nbits}: expected at least {2 ** cfg.pq_nbits} "
                                 f"training vectors, got {train_n}")
            index = faiss.IndexIVFPQ(quantizer, d, nlist, pq_m, cfg.pq_nbits, _faiss_metric(cfg.metric))
        index.cp.seed = cfg.seed
        return index

    def _train_size(self, n: int, nlist: int) -> int:
        cfg = self.config
        if cfg.train_size is not None:
            return min(n, cfg.train_size)
        wanted = TRAIN_POINTS_PER_LIST * nlist
        if cfg.kind == "ivf_pq":  # the PQ codebooks are k-means with 2**nbits centroids per sub-space too
            wanted = max(wanted, MIN_POINTS_PER_LIST * 2 ** cfg.pq_nbits)
        return min(n, wanted)

    def _training_sample(self, vectors: np.ndarray, nlist: int) -> np.ndarray:
        n = len(vectors)
        train_n = self._train_size(n, nlist)
        if train_n == n:
            return vectors
        rows = np.sort(np.random.default_rng(self.config.seed).choice(n, size=train_n, replace=False))
        return vectors[rows]

    def _apply_search_params(self) -> None:
        """Runtime parameters come from the config, after build and after from_bytes alike."""
        cfg = self.config
        if cfg.kind in ("ivf_flat", "ivf_pq"):
            self._ivf().nprobe = cfg.nprobe
        elif cfg.kind == "hnsw":
            self._hnsw().hnsw.efSearch = cfg.ef_search

    # ---- searching

    def search(self, queries: np.ndarray, k: int, exclude: list[np.ndarray] | None = None,
               ) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` ids per query, best first, as (scores (Q, k) float32, ids (Q, k) int64).

        ``exclude[i]`` lists the ids query ``i`` must not get back (seen items). Missing results are ``-1``
        with score ``-inf``.
        """
        index = self._require_index()
        queries = _as_matrix(queries, "queries")
        if queries.shape[1] != index.d:
            raise ValueError(f"queries: expected dimension d={index.d} (the indexed vectors), "
                             f"got shape {queries.shape}")
        if not isinstance(k, (int, np.integer)) or k < 1:
            raise ValueError(f"k: expected a positive integer, got {k!r}")
        k = int(k)
        nq = len(queries)
        if exclude is not None and len(exclude) != nq:
            raise ValueError(f"exclude: expected one id array per query ({nq}), got {len(exclude)}")
        _set_threads(self.config.threads)
        excluded = [np.asarray(e, dtype=np.int64).ravel() for e in exclude] if exclude is not None else None
        longest = max((len(e) for e in excluded), default=0) if excluded is not None else 0
        if nq == 0:
            return np.empty((0, k), np.float32), np.empty((0, k), np.int64)
        if longest == 0:
            return self._faiss_search(queries, k)

        fetch = min(k + longest, max(k, self.config.max_fetch), max(k, index.ntotal))
        scores, ids = self._faiss_search(queries, fetch)
        keep = ids >= 0
        for row, seen in enumerate(excluded):
            if len(seen):
                keep[row] &= ~np.isin(ids[row], seen)
        scores, ids = _first_kept(scores, ids, keep, k)
        # over-fetching is exact unless the cap cut it short: re-search those rows with a selector
        short = [row for row, seen in enumerate(excluded)
                 if fetch < min(k + len(seen), index.ntotal) and (ids[row] < 0).any()]
        for row in short:
            scores[row], ids[row] = self._search_excluding(queries[row:row + 1], k, excluded[row])
        return scores, ids

    def _faiss_search(self, queries: np.ndarray, k: int, params: faiss.SearchParameters | None = None,
                      ) -> tuple[np.ndarray, np.ndarray]:
        distances, ids = self._require_index().search(queries, k, params=params)
        return self._as_scores(distances, ids), ids

    def _as_scores(self, distances: np.ndarray, ids: np.ndarray) -> np.ndarray:
        scores = distances if self.config.metric == "ip" else -distances
        scores = np.where(ids >= 0, scores, -np.inf).astype(np.float32, copy=False)
        return scores

    def _search_excluding(self, query: np.ndarray, k: int, seen: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        cfg = self.config
        selector = faiss.IDSelectorNot(faiss.IDSelectorBatch(seen))
        if cfg.kind in ("ivf_flat", "ivf_pq"):
            params = faiss.SearchParametersIVF(sel=selector, nprobe=cfg.nprobe)
        elif cfg.kind == "hnsw":
            params = faiss.SearchParametersHNSW(sel=selector, efSearch=cfg.ef_search)
        else:
            params = faiss.SearchParameters(sel=selector)
        scores, ids = self._faiss_search(query, k, params)
        return scores[0], ids[0]

    # ---- persistence

    def to_bytes(self) -> np.ndarray:
        """The index as faiss's own serialisation, a uint8 array."""
        return faiss.serialize_index(self._require_index())

    @classmethod
    def from_bytes(cls, buf: np.ndarray, config: IndexConfig) -> VectorIndex:
        """An index from ``to_bytes`` output; ``config`` must describe the same structure, and its search
        parameters (nprobe, ef_search, threads) apply from now on."""
        buf = np.asarray(buf)
        if buf.dtype != np.uint8 or buf.ndim != 1:
            raise ValueError(f"buf: expected a 1-D uint8 array from to_bytes(), got {buf.dtype} {buf.shape}")
        out = cls(config)
        out._index = faiss.deserialize_index(buf)
        out._check_structure()
        out._apply_search_params()
        return out

    def _check_structure(self) -> None:
        cfg = self.config
        index = self._require_index()
        expected = {"flat": (faiss.IndexIDMap, (faiss.IndexFlatIP, faiss.IndexFlatL2)),
                    "hnsw": (faiss.IndexIDMap, (faiss.IndexHNSWFlat,)),
                    "ivf_flat": (faiss.IndexIVFFlat, None), "ivf_pq": (faiss.IndexIVFPQ, None)}[cfg.kind]
        inner = faiss.downcast_index(index.index) if isinstance(index, faiss.IndexIDMap) else None
        if not isinstance(index, expected[0]) or (expected[1] is not None and not isinstance(inner, expected[1])):
            found = type(index).__name__ + (f"({type(inner).__name__})" if inner is not None else "")
            raise ValueError(f"kind={cfg.kind!r}: the serialised index is a {found}")
        if index.metric_type != _faiss_metric(cfg.metric):
            raise ValueError(f"metric={cfg.metric!r}: the serialised index uses faiss metric {index.metric_type}")
        if cfg.kind in ("ivf_flat", "ivf_pq") and cfg.nlist is not None and self._ivf().nlist != cfg.nlist:
            raise ValueError(f"nlist={cfg.nlist}: the serialised index has nlist={self._ivf().nlist}")
        if cfg.kind == "ivf_pq" and cfg.pq_m is not None and self._ivf().pq.M != cfg.pq_m:
            raise ValueError(f"pq_m={cfg.pq_m}: the serialised index has pq_m={self._ivf().pq.M}")
        if cfg.kind == "hnsw" and self._hnsw().hnsw.nb_neighbors(1) != cfg.m:
            raise ValueError(f"m={cfg.m}: the serialised index has m={self._hnsw().hnsw.nb_neighbors(1)}")

    # ---- introspection

    @property
    def ntotal(self) -> int:
        return int(self._index.ntotal) if self._index is not None else 0

    @property
    def dim(self) -> int:
        return int(self._require_index().d)

    @property
    def nprobe(self) -> int:
        return int(self._ivf().nprobe)

    @property
    def ef_search(self) -> int:
        return int(self._hnsw().hnsw.efSearch)

    def _require_index(self) -> faiss.Index:
        if self._index is None:
            raise RuntimeError("the index is empty: call build() or VectorIndex.from_bytes() first")
        return self._index

    def _ivf(self) -> faiss.IndexIVF:
        index = self._require_index()
        if not isinstance(index, faiss.IndexIVF):
            raise AttributeError(f"nprobe: a {self.config.kind!r} index has no inverted lists")
        return index

    def _hnsw(self) -> faiss.IndexHNSWFlat:
        index = self._require_index()
        inner = faiss.downcast_index(index.index) if isinstance(index, faiss.IndexIDMap) else None
        if not isinstance(inner, faiss.IndexHNSW):
            raise AttributeError(f"ef_search: a {self.config.kind!r} index has no HNSW graph")
        return inner


def _as_matrix(x: np.ndarray, name: str) -> np.ndarray:
    x = np.asarray(x)
    if x.ndim != 2:
        raise ValueError(f"{name}: expected a 2-D (rows, d) array, got shape {x.shape}")
    if x.shape[1] == 0:
        raise ValueError(f"{name}: expected a dimension d >= 1, got shape {x.shape}")
    x = np.ascontiguousarray(x, dtype=np.float32)
    if not np.isfinite(x).all():
        raise ValueError(f"{name}: expected finite values, got NaN or inf")
    return x


def _check_ids(ids: np.ndarray | None, n: int) -> np.ndarray:
    if ids is None:
        return np.arange(n, dtype=np.int64)
    ids = np.asarray(ids)
    if ids.shape != (n,) or not np.issubdtype(ids.dtype, np.integer):
        raise ValueError(f"ids: expected {n} integer ids (one per vector), got {ids.dtype} {ids.shape}")
    ids = np.ascontiguousarray(ids, dtype=np.int64)
    if (ids < 0).any():
        raise ValueError("ids: expected non-negative ids (-1 marks a missing result)")
    if len(np.unique(ids)) != n:
        raise ValueError("ids: expected unique ids, got duplicates")
    return ids


def _first_kept(scores: np.ndarray, ids: np.ndarray, keep: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Per row, the first ``k`` kept columns in their original (best-first) order, padded with -1 / -inf."""
    # a stable sort of "not kept" moves kept columns to the front without reordering them
    order = np.argsort(~keep, axis=1, kind="stable")[:, :k]
    kept = np.take_along_axis(keep, order, axis=1)
    out_scores = np.where(kept, np.take_along_axis(scores, order, axis=1), -np.inf).astype(np.float32)
    out_ids = np.where(kept, np.take_along_axis(ids, order, axis=1), -1).astype(np.int64)
    if out_ids.shape[1] < k:  # fewer fetched than k (k > ntotal)
        pad = k - out_ids.shape[1]
        out_scores = np.pad(out_scores, ((0, 0), (0, pad)), constant_values=-np.inf)
        out_ids = np.pad(out_ids, ((0, 0), (0, pad)), constant_values=-1)
    return out_scores, out_ids
