"""Popularity channel: the most interacted-with items, the request's history removed.

``pop(i) = Σ_u user_item[u, i]`` (the number of interactions; users who interacted when the matrix is
binary). With per-event ``timestamps`` (and the event ``items``), each event is decayed instead:
``pop(i) = Σ_{events e on i} 0.5 ** ((now - t_e) / half_life)``, ``now`` = the latest timestamp unless
given. Ranking: popularity descending, ties by lower item index. The same list for every request, so
``retrieve`` walks one precomputed order and skips the excluded items: O(k + |exclude|) per request.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from pydantic import Field

from untwine.retrieval.channel import ChannelConfig, RetrievalChannel, as_csr, check_state

__all__ = ["PopularityConfig", "PopularityChannel"]


class PopularityConfig(ChannelConfig):
    name: str = "popularity"
    half_life: float | None = Field(default=None, gt=0)  # in timestamp units; used only with timestamps


class PopularityChannel(RetrievalChannel[PopularityConfig]):
    kind = "popularity"
    config_class = PopularityConfig

    def fit(self, user_item, *, items: np.ndarray | None = None, timestamps: np.ndarray | None = None,
            now: float | None = None) -> "PopularityChannel":
        """Counts from ``user_item``; or time-decayed counts of the events (``items``, ``timestamps``)."""
        ui = as_csr(user_item)
        n_items = ui.shape[1]
        if timestamps is None:
            if items is not None:
                raise ValueError("items is the event list of the time-decayed popularity: pass timestamps too")
            pop = np.asarray(ui.sum(axis=0), dtype=np.float64).ravel()
        else:
            if items is None:
                raise ValueError("timestamps need the event items (one item index per timestamp)")
            items = np.asarray(items, dtype=np.int64).ravel()
            t = np.asarray(timestamps, dtype=np.float64).ravel()
            if len(items) != len(t):
                raise ValueError(f"items and timestamps must have the same length, got {len(items)} and {len(t)}")
            if len(items) and (items.min() < 0 or items.max() >= n_items):
                raise ValueError(f"event items outside [0, {n_items})")
            ref = float(t.max(initial=0.0)) if now is None else float(now)
            w = np.ones_like(t) if self.config.half_life is None else 0.5 ** ((ref - t) / self.config.half_life)
            pop = np.bincount(items, weights=w, minlength=n_items).astype(np.float64)
        self._set(pop)
        return self

    def _set(self, popularity: np.ndarray) -> None:
        self.popularity = np.asarray(popularity, dtype=np.float64)
        self._n_items = len(self.popularity)
        self._order = np.lexsort((np.arange(self._n_items), -self.popularity))

    def retrieve(self, histories: Sequence[np.ndarray], k: int,
                 exclude: Sequence[np.ndarray] | None = None) -> tuple[np.ndarray, np.ndarray]:
        hist = self._histories(histories)
        excl = self._exclusions(hist, exclude)
        items = np.full((len(hist), k), -1, dtype=np.int64)
        scores = np.full((len(hist), k), -np.inf, dtype=np.float32)
        for q, ex in enumerate(excl):
            head = self._order[:k + len(ex)]  # at most |ex| of these can be excluded
            head = head[~np.isin(head, ex)][:k]
            items[q, :len(head)] = head
            scores[q, :len(head)] = self.popularity[head]
        return items, scores

    def score_all(self, histories: Sequence[np.ndarray]) -> np.ndarray:
        return np.broadcast_to(self.popularity.astype(np.float32), (len(histories), self.n_items)).copy()

    def state(self) -> dict[str, np.ndarray]:
        return {"popularity": self.popularity.copy()}

    @classmethod
    def from_state(cls, state: Mapping[str, np.ndarray], config) -> "PopularityChannel":
        check_state(state, ["popularity"], cls.__name__)
        ch = cls(cls._config_from(config))
        ch._set(np.asarray(state["popularity"]))
        return ch
