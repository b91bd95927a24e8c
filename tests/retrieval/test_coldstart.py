"""Cold start: which items are new, content neighbours, the neighbour-mean vectors, the history score,
the guaranteed-impression quota (exact stop, tie-break on remaining quota), a thread-safe counter."""
import threading

import numpy as np
import pytest
import scipy.sparse as sp

from untwine.retrieval.channel import interaction_matrix
from untwine.retrieval.coldstart import ColdStartChannel, ColdStartConfig

# 8 items, 3 genres; items 5, 6, 7 have fewer than 2 interactions: new
GENRES = np.array([[1, 0, 0], [1, 1, 0], [0, 1, 0], [0, 0, 1], [0, 1, 1],
                   [1, 1, 0], [0, 0, 1], [0, 0, 0]], dtype=float)  # item 7 has no attributes
PAIRS = {0: [0, 1, 2], 1: [0, 1], 2: [2, 3, 4], 3: [3, 4, 5], 4: [0, 4], 5: [1, 2, 3]}


def fixture(**cfg):
    users = [u for u, items in PAIRS.items() for _ in items]
    items = [i for its in PAIRS.values() for i in its]
    ui = interaction_matrix(np.array(users), np.array(items), 6, 8)
    vectors = np.random.default_rng(0).normal(size=(8, 4))
    ch = ColdStartChannel(ColdStartConfig(min_exposures=2, n_neighbours=2, guaranteed_impressions=3, **cfg))
    return ch.fit(ui, item_attributes=GENRES, item_vectors=vectors), ui, vectors


def unit(x):
    norm = np.linalg.norm(x, axis=-1, keepdims=True)
    return np.divide(x, norm, out=np.zeros_like(x), where=norm > 0)


def test_new_items_neighbours_and_neighbour_mean():
    ch, _, vectors = fixture()
    assert ch.new_items.tolist() == [5, 6, 7]
    nb = ch.neighbours.toarray()
    # item 5 = genres {0, 1}: item 1 is identical (cos 1), items 0, 2 tie at 1/sqrt(2) -> lower index 0
    assert np.flatnonzero(nb[0]).tolist() == [0, 1]
    np.testing.assert_allclose(nb[0, [0, 1]], [2 ** -0.5, 1.0], rtol=1e-6)
    # item 6 = genre {2}: item 3 (cos 1), item 4 (cos 1/sqrt(2)); item 7 has no content: no neighbour
    assert np.flatnonzero(nb[1]).tolist() == [3, 4]
    assert nb[2].sum() == 0
    v = unit(vectors)
    want = np.stack([(v[0] + v[1]) / 2, (v[3] + v[4]) / 2, np.zeros(4)])
    np.testing.assert_allclose(ch.new_item_vectors(), want, rtol=1e-6, atol=1e-7)


def test_history_score_is_the_sum_of_cosines_to_the_neighbour_mean():
    ch, _, vectors = fixture(max_links=8)
    v = unit(vectors)
    e = ch.new_item_vectors().astype(np.float64)
    hist = np.array([2, 0, 4])
    got = ch.new_item_scores([hist])[0]
    for pos in range(2):
        cos = v[hist] @ unit(e[pos])
        assert got[pos] == pytest.approx(np.clip(cos, 0, None).sum(), rel=1e-5)  # negative links are not kept
    assert got[2] == 0.0
    items, scores = ch.retrieve([hist], k=3)
    order = np.argsort(-got[:2], kind="stable")
    assert items[0].tolist() == [5 + order[0], 5 + order[1], 7]  # the unmatched item fills last
    assert scores[0, 2] == 0.0
    only = ColdStartChannel(ch.config.model_copy(update={"fill_unmatched": False}))
    only._set(ch.n_items, ch.new_items, ch.neighbours, ch.representation, ch.links, ch.served())
    assert -1 in only.retrieve([hist], k=3)[0][0].tolist()


def test_default_vectors_are_user_incidence_columns():
    users = [u for u, items in PAIRS.items() for _ in items]
    items = [i for its in PAIRS.values() for i in its]
    ui = interaction_matrix(np.array(users), np.array(items), 6, 8)
    ch = ColdStartChannel(ColdStartConfig(min_exposures=2, n_neighbours=2)).fit(ui, item_attributes=GENRES)
    a = unit((ui.toarray() > 0).T.astype(float))  # item x user, unit rows
    np.testing.assert_allclose(ch.new_item_vectors()[0], (a[0] + a[1]) / 2, rtol=1e-6)


def test_quota_stops_after_exactly_the_guaranteed_impressions_and_ties_by_remaining():
    ch, _, _ = fixture()
    hist = [np.array([3])]  # links to item 6 only through its neighbours 3, 4; 5 and 7 fill
    items = ch.retrieve(hist, k=3)[0][0].tolist()
    assert items[0] == 6 and set(items) == {5, 6, 7}
    # 5 and 7 both score 0: the larger remaining quota comes first
    ch.record_impressions([5])
    assert ch.retrieve(hist, k=3)[0][0].tolist() == [6, 7, 5]
    ch.record_impressions(np.array([6, 6, 0, 1]))  # non-new items are ignored
    assert ch.served().tolist() == [1, 2, 0]
    assert 6 in ch.retrieve(hist, k=3)[0][0]          # 2 of 3 impressions served: still returned
    assert ch.record_impressions([6]) == 1
    got = ch.retrieve(hist, k=3)[0][0].tolist()
    assert 6 not in got and got == [7, 5, -1]          # exactly 3: gone
    assert ch.remaining().tolist() == [2, 0, 3]
    ch.record_impressions([6, 6])                      # over-serving does not make remaining negative
    assert ch.remaining().tolist() == [2, 0, 3]
    # the counters survive a state round trip
    back = ColdStartChannel.from_state(ch.state(), ch.config_dict())
    assert back.served().tolist() == ch.served().tolist()
    for a, b in zip(ch.retrieve(hist + [np.array([0, 1])], 3), back.retrieve(hist + [np.array([0, 1])], 3)):
        np.testing.assert_array_equal(a, b)


def test_counter_is_thread_safe():
    ch, _, _ = fixture()
    n_threads, n_calls = 8, 300
    barrier = threading.Barrier(n_threads)

    def worker():
        barrier.wait()
        for _ in range(n_calls):
            ch.record_impressions(np.array([5, 6, 6, 2]))
            ch.retrieve([np.array([1])], k=2)

    threads = [threading.Thread(target=worker) for _ in range(n_threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert ch.served().tolist() == [n_threads * n_calls, 2 * n_threads * n_calls, 0]


def test_sparse_attributes_and_no_new_items():
    users = [u for u, items in PAIRS.items() for _ in items]
    items = [i for its in PAIRS.values() for i in its]
    ui = interaction_matrix(np.array(users), np.array(items), 6, 8)
    ch = ColdStartChannel(ColdStartConfig(min_exposures=2, n_neighbours=2)).fit(
        ui, item_attributes=sp.csr_matrix(GENRES))
    assert ch.new_items.tolist() == [5, 6, 7]
    none = ColdStartChannel(ColdStartConfig(min_exposures=1)).fit(ui[:, :5], item_attributes=GENRES[:5])
    assert len(none.new_items) == 0
    assert (none.retrieve([np.array([0])], k=2)[0] == -1).all()
