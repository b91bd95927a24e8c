"""Tag channel: history -> the user's top tags -> each tag's most popular items (an inverted index).

Tags are any item attribute with few values per item: genres for MovieLens, category or advertiser
for ads. ``item_tags`` is an (N, T) CSR (1 = the item has the tag, or a weight).

1. Profile: ``p_t = Σ_p r_p · item_tags[h_p, t]`` over the history (``r_p`` the recency weight,
   ``0.5 ** (age_p / recency_half_life)``, age 0 = most recent; 1 when the half-life is None).
2. The ``top_tags`` tags with the largest ``p_t`` (ties: lower tag index) share the k slots in
   proportion to their weight by the Sainte-Laguë divisor method: slot after slot goes to the tag with
   the largest quotient ``p_t / (2 s_t + 1)`` (``s_t`` = slots it already holds; ties: the higher-ranked
   tag). The method is unbiased between large and small shares, and every prefix of the returned list
   is itself the proportional split of that many slots (so a merge quota that takes only the head of
   the list keeps the mix).
3. Each slot is filled with the tag's next item in popularity order (inverted index: tag -> items by
   train interactions descending, ties by lower item index), skipping the excluded items and items an
   earlier slot already took (dedup across tags). A tag with no item left gives its slots to the
   others (it is simply skipped when its quotient comes up).

Score of an item = its slot's quotient normalised by the profile total, ``p_t / (P (2 s + 1))``;
the list is in slot order, i.e. scores descending (ties: the higher-ranked tag first). A history
with no tagged item yields an all-padding row (-1): the merge fills from other channels.
Cost per request: O(T' k) for the slot order (T' <= top_tags) plus the items walked in the tags' lists.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import scipy.sparse as sp
from pydantic import Field

from untwine.retrieval.channel import (ChannelConfig, RetrievalChannel, as_csr, check_state, csr_from_state,
                                       csr_state, history_matrix)

__all__ = ["TagConfig", "TagChannel", "sainte_lague_order"]


class TagConfig(ChannelConfig):
    name: str = "tags"
    top_tags: int = Field(default=5, ge=1)
    recency_half_life: float | None = Field(default=None, gt=0)  # in history positions


def sainte_lague_order(weights: np.ndarray, n_slots: int) -> tuple[np.ndarray, np.ndarray]:
    """The first ``n_slots`` slots of each party (rank-ordered weights) in award order: (party, quotient).

    All ``len(weights) * n_slots`` candidate slots sorted by quotient ``w / (2 s + 1)`` descending, ties by
    party rank; a caller that must skip an exhausted party just drops its remaining entries.
    """
    weights = np.asarray(weights, dtype=np.float64)
    party = np.repeat(np.arange(len(weights)), n_slots)
    seat = np.tile(np.arange(n_slots), len(weights))
    quotient = weights[party] / (2 * seat + 1)
    order = np.lexsort((seat, party, -quotient))
    return party[order], quotient[order]


class TagChannel(RetrievalChannel[TagConfig]):
    kind = "tags"
    config_class = TagConfig

    def fit(self, user_item, *, item_tags) -> "TagChannel":
        """``item_tags``: (N, T) scipy.sparse, non-negative (1 = has the tag)."""
        ui = as_csr(user_item)
        tags = as_csr(item_tags, "item_tags")
        if tags.shape[0] != ui.shape[1]:
            raise ValueError(f"item_tags has {tags.shape[0]} rows, user_item {ui.shape[1]} items")
        self._set(np.asarray(ui.sum(axis=0), dtype=np.float64).ravel(), tags)
        return self

    def _set(self, popularity: np.ndarray, item_tags: sp.csr_matrix) -> None:
        self.popularity = np.asarray(popularity, dtype=np.float64)
        self.item_tags = sp.csr_matrix(item_tags, dtype=np.float32)
        self._n_items = len(self.popularity)
        # inverted index tag -> items by popularity desc, then item index asc
        by_tag = self.item_tags.T.tocsr()
        rows = np.repeat(np.arange(by_tag.shape[0]), np.diff(by_tag.indptr))
        items = by_tag.indices.astype(np.int64)
        order = np.lexsort((items, -self.popularity[items], rows))
        self.tag_indptr = by_tag.indptr.astype(np.int64)
        self.tag_items = items[order]

    @property
    def n_tags(self) -> int:
        return self.item_tags.shape[1]

    def tag_profile(self, histories: Sequence[np.ndarray]) -> sp.csr_matrix:
        """(U_q, T) recency-weighted tag counts of the histories."""
        h = history_matrix(self._histories(histories), self.n_items, self.config.recency_half_life)
        return sp.csr_matrix(h @ self.item_tags)

    def retrieve(self, histories: Sequence[np.ndarray], k: int,
                 exclude: Sequence[np.ndarray] | None = None) -> tuple[np.ndarray, np.ndarray]:
        hist = self._histories(histories)
        excl = self._exclusions(hist, exclude)
        profile = self.tag_profile(hist)
        items = np.full((len(hist), k), -1, dtype=np.int64)
        scores = np.full((len(hist), k), -np.inf, dtype=np.float32)
        for q in range(len(hist)):
            lo, hi = profile.indptr[q], profile.indptr[q + 1]
            tag_ids = profile.indices[lo:hi].astype(np.int64)
            weight = profile.data[lo:hi].astype(np.float64)
            keep = weight > 0
            tag_ids, weight = tag_ids[keep], weight[keep]
            if not len(tag_ids):
                continue
            rank = np.lexsort((tag_ids, -weight))[:self.config.top_tags]
            tag_ids, weight = tag_ids[rank], weight[rank]
            self._fill(q, tag_ids, weight / weight.sum(), k, set(excl[q].tolist()), items, scores)
        return items, scores

    def _fill(self, q: int, tag_ids: np.ndarray, share: np.ndarray, k: int, blocked: set[int],
              items: np.ndarray, scores: np.ndarray) -> None:
        cursor = self.tag_indptr[tag_ids].copy()   # next position in each tag's popularity list
        end = self.tag_indptr[tag_ids + 1]
        exhausted = np.zeros(len(tag_ids), dtype=bool)
        filled = 0
        for party, quotient in zip(*sainte_lague_order(share, k)):
            if exhausted[party]:
                continue
            pos = cursor[party]
            while pos < end[party] and int(self.tag_items[pos]) in blocked:
                pos += 1
            if pos == end[party]:
                exhausted[party] = True
                cursor[party] = pos
                if exhausted.all():
                    return
                continue
            item = int(self.tag_items[pos])
            cursor[party] = pos + 1
            blocked.add(item)
            items[q, filled] = item
            scores[q, filled] = quotient
            filled += 1
            if filled == k:
                return

    def state(self) -> dict[str, np.ndarray]:
        return {"popularity": self.popularity.copy(), **csr_state("item_tags", self.item_tags)}

    @classmethod
    def from_state(cls, state: Mapping[str, np.ndarray], config) -> "TagChannel":
        check_state(state, ["popularity"] + [f"item_tags_{p}" for p in ("indptr", "indices", "data", "shape")],
                    cls.__name__)
        ch = cls(cls._config_from(config))
        ch._set(np.asarray(state["popularity"]), csr_from_state(state, "item_tags"))
        return ch
