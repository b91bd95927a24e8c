"""Merging channel lists: quotas in priority order, dedup attribution, round-robin fill, batch helper."""
import numpy as np
import pytest

from untwine.retrieval.merge import merge_batch, merge_channels


def lists(**channels):
    return {name: (np.asarray(ids, dtype=np.int64), -np.arange(len(ids), dtype=np.float32) + 10 * (k + 1))
            for k, (name, ids) in enumerate(channels.items())}


def test_quotas_dedup_and_attribution():
    res = lists(a=[1, 2, 3, 4, 5], b=[2, 6, 1, 7, 8], c=[9, 6, -1, -1, -1])
    m = merge_channels(res, {"a": 2, "b": 2, "c": 1}, total=5)
    # a: 1, 2 ; b: 2 (dup, skipped, costs no quota), 6, 1 (dup), 7 ; c: 9
    assert m.items.tolist() == [1, 2, 6, 7, 9]
    assert m.origin() == ["a", "a", "b", "b", "c"]
    assert m.channel_names == ("a", "b", "c")
    # scores are the attributed channel's own scores
    np.testing.assert_array_equal(m.scores, [res["a"][1][0], res["a"][1][1], res["b"][1][1], res["b"][1][3],
                                             res["c"][1][0]])
    # priority changes who owns the shared items
    m2 = merge_channels(res, {"a": 2, "b": 2, "c": 1}, total=5, priority=["b", "a", "c"])
    assert m2.items.tolist() == [2, 6, 1, 3, 9]
    assert m2.origin() == ["b", "b", "a", "a", "c"]


def test_fill_from_leftovers_round_robin_and_exhaustion():
    res = lists(a=[1, 2, 3, 4], b=[5, 6, 7], c=[8])
    m = merge_channels(res, {"a": 1, "b": 1}, total=7)  # c has no quota: it only fills
    # quotas: 1 (a), 5 (b); fill round-robin: a 2, b 6, c 8, a 3, b 7
    assert m.items.tolist() == [1, 5, 2, 6, 8, 3, 7]
    assert m.origin() == ["a", "b", "a", "b", "c", "a", "b"]
    everything = merge_channels(res, {"a": 1}, total=100)
    assert sorted(everything.items.tolist()) == list(range(1, 9))  # shorter than total: all unique items
    # quotas above total: the lowest-priority channels are cut
    cut = merge_channels(res, {"a": 3, "b": 3}, total=4)
    assert cut.items.tolist() == [1, 2, 3, 5]


def test_errors_and_empty():
    res = lists(a=[1, 2])
    with pytest.raises(ValueError):
        merge_channels(res, {"z": 1}, total=2)
    with pytest.raises(ValueError):
        merge_channels(res, {"a": 1}, total=2, priority=["a", "b"])
    assert len(merge_channels(res, {"a": 1}, total=0).items) == 0


def test_batch_matches_single_requests():
    rng = np.random.default_rng(0)
    res = {n: (rng.integers(-1, 15, size=(6, 5)), rng.normal(size=(6, 5)).astype(np.float32)) for n in "xyz"}
    quotas = {"x": 2, "y": 3, "z": 1}
    items, chan, scores, names = merge_batch(res, quotas, total=8, priority=["z", "x", "y"])
    assert names == ("z", "x", "y") and items.shape == (6, 8)
    for q in range(6):
        m = merge_channels({n: (res[n][0][q], res[n][1][q]) for n in res}, quotas, 8, ["z", "x", "y"])
        n = len(m.items)
        np.testing.assert_array_equal(items[q, :n], m.items)
        np.testing.assert_array_equal(chan[q, :n], m.channels)
        np.testing.assert_array_equal(scores[q, :n], m.scores)
        assert (items[q, n:] == -1).all() and (chan[q, n:] == -1).all()
        assert len(set(m.items.tolist())) == n and -1 not in m.items


def _naive_merge(results, quotas, total, order):
    """The definition, item by item: quota pass in priority order, then round-robin fill, first owner wins."""
    lists = [([int(i) for i in results[n][0] if i >= 0], [float(s) for i, s in zip(*results[n]) if i >= 0])
             for n in order]
    cursor, taken, items, chan = [0] * len(order), set(), [], []

    def take(c, budget):
        got = 0
        while got < budget and cursor[c] < len(lists[c][0]) and len(items) < total:
            item = lists[c][0][cursor[c]]
            if item not in taken:
                taken.add(item)
                items.append(item)
                chan.append(c)
                got += 1
            cursor[c] += 1
        return got

    for c, n in enumerate(order):
        take(c, quotas.get(n, 0))
    while len(items) < total:
        progressed = [take(c, 1) for c in range(len(order)) if len(items) < total]
        if not any(progressed):
            break
    return items, chan


def test_merge_equals_its_item_by_item_definition_on_random_lists():
    rng = np.random.default_rng(11)
    for _ in range(300):
        names = ["a", "b", "c"][: int(rng.integers(1, 4))]
        results = {}
        for n in names:
            k = int(rng.integers(0, 12))
            ids = rng.integers(-1, 15, k)  # repeats across and within channels, -1 padding
            results[n] = (ids, rng.random(k).astype(np.float32))
        quotas = {n: int(rng.integers(0, 6)) for n in names}
        total = int(rng.integers(0, 20))
        got = merge_channels(results, quotas, total)
        want_items, want_chan = _naive_merge(results, quotas, total, list(results))
        assert got.items.tolist() == want_items and got.channels.tolist() == want_chan
