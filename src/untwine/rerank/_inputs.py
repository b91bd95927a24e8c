"""Input handling shared by MMR and DPP: relevance scaling and item-item similarity rows.

Both methods only ever need one row of the similarity matrix at a time (the similarity of the item
just selected to every candidate), so :class:`SimilarityRows` computes rows lazily from the item
embeddings (cosine: ``sim(i, j) = <e_i, e_j> / (|e_i| |e_j|)``) or reads them from a given matrix.
Per request this keeps the cost at O(K N d) instead of building the N x N matrix.
"""
from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike


def relevance_vector(relevance: ArrayLike) -> np.ndarray:
    """1-D float64 relevance; NaN/inf are rejected because argmax over them is meaningless."""
    rel = np.asarray(relevance, dtype=np.float64)
    if rel.ndim != 1:
        raise ValueError(f"relevance must be 1-D, got shape {rel.shape}")
    if not np.all(np.isfinite(rel)):
        raise ValueError(f"relevance has {int(np.sum(~np.isfinite(rel)))} non-finite values")
    return rel


def min_max_scale(values: np.ndarray) -> np.ndarray:
    """Scale to [0, 1]: ``(v - min) / (max - min)``; a constant vector maps to all zeros.

    Re-rank sees scores of any model (logits, probabilities, eCPM); scaling makes a trade-off
    parameter mean the same thing whatever produced the scores.
    """
    if values.size == 0:
        return values.copy()
    spread = values.max() - values.min()
    if spread == 0:
        return np.zeros_like(values)
    return (values - values.min()) / spread


def unit_rows(embeddings: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm; zero rows stay zero (their cosine with anything is 0)."""
    norms = np.linalg.norm(embeddings, axis=1, keepdims=True)
    return np.divide(embeddings, norms, out=np.zeros_like(embeddings), where=norms > 0)


class SimilarityRows:
    """Rows ``sim(j, .)`` of an N x N item similarity, from embeddings (cosine) or a given matrix."""

    def __init__(self, n_items: int, embeddings: ArrayLike | None = None,
                 similarity: ArrayLike | None = None) -> None:
        if (embeddings is None) == (similarity is None):
            raise ValueError("pass exactly one of embeddings (cosine similarity) or similarity (a matrix)")
        self._unit: np.ndarray | None = None
        self._matrix: np.ndarray | None = None
        if embeddings is not None:
            emb = np.asarray(embeddings, dtype=np.float64)
            if emb.ndim != 2 or emb.shape[0] != n_items:
                raise ValueError(f"embeddings must be ({n_items}, d), got shape {emb.shape}")
            self._unit = unit_rows(emb)
        else:
            mat = np.asarray(similarity, dtype=np.float64)
            if mat.shape != (n_items, n_items):
                raise ValueError(f"similarity must be ({n_items}, {n_items}), got shape {mat.shape}")
            if not np.allclose(mat, mat.T):
                raise ValueError("similarity must be symmetric")
            self._matrix = mat

    def row(self, j: int) -> np.ndarray:
        if self._unit is not None:
            return self._unit @ self._unit[j]
        return self._matrix[j]

    def diagonal(self) -> np.ndarray:
        if self._unit is not None:
            return np.einsum("ij,ij->i", self._unit, self._unit)
        return np.diagonal(self._matrix).copy()


def check_k(k: int) -> None:
    if k < 0:
        raise ValueError(f"k must be >= 0, got {k}")
