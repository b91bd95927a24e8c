"""Merging the recall channels of one request into the candidate set handed to ranking.

Rule (deterministic; ``priority`` = channel order, default the insertion order of ``results``):

1. Quotas: channel by channel in priority order, walk its list (best first, ``-1`` padding skipped)
   and take items not already taken until it has contributed ``quotas[name]`` NEW items (a duplicate
   costs no quota: it is skipped) or its list ends. Stop as soon as ``total`` items are taken, so when
   the quotas add up to more than ``total``, the lowest-priority channels are cut.
2. Fill: if fewer than ``total`` were taken, go round-robin over the channels in priority order, each
   turn taking the channel's next not-yet-taken item from where its walk stopped, until ``total`` items
   or every list is used up.

An item is attributed to the first channel that brought it (dedup) and keeps that channel's score.
A channel missing from ``quotas`` has quota 0 (it only fills).
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["MergedCandidates", "merge_channels", "merge_batch"]


@dataclass(frozen=True)
class MergedCandidates:
    """One request's merged candidates; item p came from channel ``channel_names[channels[p]]``."""

    items: np.ndarray                # (n,) int64 catalogue indices, n <= total
    channels: np.ndarray             # (n,) int64 index into ``channel_names``
    scores: np.ndarray               # (n,) float32, the score the attributed channel gave
    channel_names: tuple[str, ...]   # the priority order

    def origin(self) -> list[str]:
        """The channel name of each item."""
        return [self.channel_names[c] for c in self.channels]


def _priority(results: Mapping, quotas: Mapping[str, int], priority: Sequence[str] | None) -> tuple[str, ...]:
    order = tuple(results) if priority is None else tuple(priority)
    if len(set(order)) != len(order):
        raise ValueError(f"priority lists a channel twice: {list(order)}")
    if set(order) != set(results):
        raise ValueError(f"priority {sorted(order)} must name exactly the channels of results {sorted(results)}")
    unknown = set(quotas) - set(results)
    if unknown:
        raise ValueError(f"quotas name channels without results: {sorted(unknown)}")
    bad = {n: q for n, q in quotas.items() if int(q) < 0}
    if bad:
        raise ValueError(f"quotas must be >= 0, got {bad}")
    return order


def _lists(results: Mapping[str, tuple[np.ndarray, np.ndarray]], order: Sequence[str]):
    out = []
    for name in order:
        ids, scores = results[name]
        ids = np.asarray(ids, dtype=np.int64).ravel()
        scores = np.asarray(scores, dtype=np.float32).ravel()
        if ids.shape != scores.shape:
            raise ValueError(f"channel {name!r}: {len(ids)} ids but {len(scores)} scores")
        keep = ids >= 0
        out.append((ids[keep], scores[keep]))
    return out


def _first_new(ids: np.ndarray, taken: np.ndarray) -> np.ndarray:
    """Positions of ``ids`` holding an item neither marked in the boolean ``taken`` nor earlier in ``ids``,
    in order. A mask lookup, not set operations: this runs per channel on every request."""
    pos = np.flatnonzero(~taken[ids])
    fresh = ids[pos]
    ordered = np.sort(fresh)
    if (ordered[1:] == ordered[:-1]).any():  # a channel listed an item twice: keep its first place
        _, first = np.unique(fresh, return_index=True)
        pos = pos[np.sort(first)]
    return pos


def merge_channels(results: Mapping[str, tuple[np.ndarray, np.ndarray]], quotas: Mapping[str, int], total: int,
                   priority: Sequence[str] | None = None) -> MergedCandidates:
    """Merge ONE request's channel lists ``{name: (ids, scores)}`` into at most ``total`` candidates."""
    if total < 0:
        raise ValueError(f"total must be >= 0, got {total}")
    order = _priority(results, quotas, priority)
    lists = _lists(results, order)
    cursor = [0] * len(order)
    taken_mask = np.zeros(1 + max((int(ids.max()) for ids, _ in lists if len(ids)), default=-1), dtype=bool)
    # quota pass, vectorised per channel (it is the whole merge when the channels return their quotas)
    parts_items, parts_chan, parts_scores, n_taken = [], [], [], 0
    for c, name in enumerate(order):
        budget = min(int(quotas.get(name, 0)), total - n_taken)
        if budget <= 0:
            continue
        ids, sc = lists[c]
        pos = _first_new(ids, taken_mask)[:budget]
        taken_mask[ids[pos]] = True
        parts_items.append(ids[pos])
        parts_chan.append(np.full(len(pos), c, dtype=np.int64))
        parts_scores.append(sc[pos])
        n_taken += len(pos)
        cursor[c] = int(pos[-1]) + 1 if len(pos) == budget else len(ids)
    if parts_items and n_taken >= total:  # the quotas filled it (the usual request): no round-robin, no Python lists
        return MergedCandidates(items=np.concatenate(parts_items).astype(np.int64, copy=False),
                                channels=np.concatenate(parts_chan),
                                scores=np.concatenate(parts_scores).astype(np.float32, copy=False), channel_names=order)
    items: list[int] = np.concatenate(parts_items).tolist() if parts_items else []
    chan: list[int] = np.concatenate(parts_chan).tolist() if parts_chan else []
    scores: list[float] = np.concatenate(parts_scores).tolist() if parts_scores else []
    taken: set[int] = set(items)
    tails = [(ids.tolist(), sc.tolist()) for ids, sc in lists]

    def take_next(c: int, budget: int) -> int:
        """Take up to ``budget`` new items from channel c; returns how many were taken."""
        ids, sc = tails[c]
        got = 0
        while got < budget and cursor[c] < len(ids) and len(items) < total:
            item = ids[cursor[c]]
            if item not in taken:
                taken.add(item)
                items.append(item)
                chan.append(c)
                scores.append(sc[cursor[c]])
                got += 1
            cursor[c] += 1
        return got

    while len(items) < total:  # fill round-robin from what the quotas left
        progressed = False
        for c in range(len(order)):
            if len(items) >= total:
                break
            progressed |= take_next(c, 1) > 0
        if not progressed:
            break
    return MergedCandidates(items=np.asarray(items, dtype=np.int64), channels=np.asarray(chan, dtype=np.int64),
                            scores=np.asarray(scores, dtype=np.float32), channel_names=order)


def merge_batch(results: Mapping[str, tuple[np.ndarray, np.ndarray]], quotas: Mapping[str, int], total: int,
                priority: Sequence[str] | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray, tuple[str, ...]]:
    """:func:`merge_channels` for a batch of requests: each channel gives (B, k_c) ids and scores.

    Returns (B, total) items (-1 padding), channel indices (-1 padding), scores (-inf padding), and the
    channel names in priority order.
    """
    order = _priority(results, quotas, priority)
    sizes = {name: np.asarray(results[name][0]).shape[0] for name in order}
    if len(set(sizes.values())) > 1:
        raise ValueError(f"channels disagree on the number of requests: {sizes}")
    n = next(iter(sizes.values()), 0)
    items = np.full((n, total), -1, dtype=np.int64)
    chan = np.full((n, total), -1, dtype=np.int64)
    scores = np.full((n, total), -np.inf, dtype=np.float32)
    for q in range(n):
        m = merge_channels({name: (np.asarray(results[name][0])[q], np.asarray(results[name][1])[q])
                            for name in order}, quotas, total, order)
        items[q, :len(m.items)] = m.items
        chan[q, :len(m.items)] = m.channels
        scores[q, :len(m.items)] = m.scores
    return items, chan, scores, order
