"""Popularity order (counts, time decay, ties, exclusion) and the tag channel's proportional split,
popularity fill, dedup and exclusion on a hand-made catalogue; state round trips."""
import numpy as np
import pytest
import scipy.sparse as sp

from untwine.retrieval.channel import interaction_matrix
from untwine.retrieval.popularity import PopularityChannel, PopularityConfig
from untwine.retrieval.tags import TagChannel, TagConfig, sainte_lague_order


def counts_matrix(counts: list[int], n_users: int = 10) -> sp.csr_matrix:
    """Item i is interacted with by users 0..counts[i]-1."""
    users = np.concatenate([np.arange(c) for c in counts])
    items = np.repeat(np.arange(len(counts)), counts)
    return interaction_matrix(users, items, n_users, len(counts))


def test_popularity_order_ties_and_exclusion():
    ui = counts_matrix([3, 7, 1, 7, 0, 5])
    ch = PopularityChannel().fit(ui)
    items, scores = ch.retrieve([np.array([], dtype=np.int64), np.array([1, 5])], k=4)
    assert items[0].tolist() == [1, 3, 5, 0]  # 7 (lower index first), 7, 5, 3
    np.testing.assert_array_equal(scores[0], [7, 7, 5, 3])
    assert items[1].tolist() == [3, 0, 2, 4]  # history removed; the zero-count item still fills
    full = ch.retrieve([np.array([0, 1, 2, 3, 5])], k=3)[0][0]
    assert full.tolist() == [4, -1, -1]  # only one item left to retrieve: padding
    np.testing.assert_array_equal(ch.score_all([np.array([0])])[0], [3, 7, 1, 7, 0, 5])
    back = PopularityChannel.from_state(ch.state(), ch.config_dict())
    for a, b in zip(ch.retrieve([np.array([3])], 6), back.retrieve([np.array([3])], 6)):
        np.testing.assert_array_equal(a, b)


def test_popularity_time_decay():
    ui = counts_matrix([1, 1, 1])
    # item 0: two old events; item 1: one fresh event; item 2: one event one half-life old
    ch = PopularityChannel(PopularityConfig(half_life=10.0)).fit(
        ui, items=np.array([0, 0, 1, 2]), timestamps=np.array([0.0, 0.0, 100.0, 90.0]))
    np.testing.assert_allclose(ch.popularity, [2 * 0.5 ** 10, 1.0, 0.5])
    assert ch.retrieve([np.array([], dtype=np.int64)], 3)[0][0].tolist() == [1, 2, 0]
    with pytest.raises(ValueError):
        PopularityChannel().fit(ui, timestamps=np.array([1.0]))


# a hand-made catalogue: 10 items, 3 tags (A, B, C)
#   item:      0  1  2  3  4  5  6  7  8  9
#   pop:       9  8  7  6  5  4  3  2  1  0
#   tags:      A  A  A  AB B  B  B  C  C  C
def tag_catalogue():
    ui = counts_matrix(list(range(9, -1, -1)), n_users=10)
    rows = [0, 1, 2, 3, 3, 4, 5, 6, 7, 8, 9]
    cols = [0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2]
    tags = sp.csr_matrix((np.ones(len(rows)), (rows, cols)), shape=(10, 3))
    return ui, tags


def test_sainte_lague_order():
    party, quotient = sainte_lague_order(np.array([3.0, 1.0]), 4)
    first4 = party[:4].tolist()
    assert first4 == [0, 0, 1, 0]  # 3, then the tie 1 vs 1 goes to the higher-ranked party, then 1, 0.6
    np.testing.assert_allclose(quotient[:4], [3.0, 1.0, 1.0, 0.6])


def test_tag_channel_split_fill_dedup_and_exclusion():
    ui, tags = tag_catalogue()
    ch = TagChannel(TagConfig(top_tags=2)).fit(ui, item_tags=tags)
    # history: items 4, 5, 6 (B x3) and 7 (C x1), plus 0 (A x1): top 2 tags B (3), then A vs C tied at 1 -> A
    hist = np.array([4, 5, 6, 7, 0])
    items, scores = ch.retrieve([hist], k=4)
    # B's list by popularity: 3, 4, 5, 6 -> only 3 is not in the history; A's list: 0 (history), 1, 2, 3 (taken)
    # slots (Sainte-Laguë 3:1): B, B, A, B -> B gets 3 then is exhausted, its slots go to A
    assert items[0].tolist() == [3, 1, 2, -1]
    assert np.isneginf(scores[0, 3]) and (np.diff(scores[0, :3]) <= 0).all()
    np.testing.assert_allclose(scores[0, :3], [3 / 4, 1 / 4, 1 / 4 / 3])
    # the same profile on a roomy catalogue: shares 3:1 exactly
    hist2 = np.array([7, 7, 7, 0])  # C x3 (item 7 repeated), A x1
    items2, _ = ch.retrieve([hist2], k=4)
    assert items2[0].tolist() == [8, 9, 1, 2]  # C: 8, 9 (then exhausted), A: 1, 2
    # top_tags=1 keeps only the dominant tag
    one = TagChannel(TagConfig(top_tags=1)).fit(ui, item_tags=tags)
    assert one.retrieve([hist2], k=4)[0][0].tolist() == [8, 9, -1, -1]
    # explicit exclusion replaces the history default
    ex_items, _ = ch.retrieve([hist2], k=4, exclude=[np.array([8])])
    assert ex_items[0].tolist() == [7, 9, 0, 1]


def test_tag_channel_proportional_split_on_a_large_catalogue():
    n = 200
    ui = counts_matrix(list(range(n, 0, -1)), n_users=n)
    tags = sp.csr_matrix((np.ones(n), (np.arange(n), np.arange(n) % 4)), shape=(n, 4))  # tag = item % 4
    ch = TagChannel(TagConfig(top_tags=3)).fit(ui, item_tags=tags)
    hist = np.array([0] * 5 + [1] * 3 + [2] * 2 + [3])  # tag weights 5:3:2:1 -> top 3 = tags 0, 1, 2
    items, _ = ch.retrieve([hist], k=20)
    got = np.bincount(items[0] % 4, minlength=4)
    assert got.tolist() == [10, 6, 4, 0]
    assert not set(items[0].tolist()) & {0, 1, 2, 3}
    for t in range(3):  # within a tag: popularity order (= index order here)
        mine = items[0][items[0] % 4 == t]
        assert (np.diff(mine) > 0).all()


def test_tag_channel_empty_profile_and_round_trip():
    ui, tags = tag_catalogue()
    ch = TagChannel(TagConfig(recency_half_life=1.0)).fit(ui, item_tags=tags)
    empty = ch.retrieve([np.array([], dtype=np.int64)], k=3)[0]
    assert (empty == -1).all()
    back = TagChannel.from_state(ch.state(), ch.config_dict())
    hist = [np.array([4, 5, 7]), np.array([9, 0, 1])]
    for a, b in zip(ch.retrieve(hist, 5), back.retrieve(hist, 5)):
        np.testing.assert_array_equal(a, b)


def test_every_channel_survives_safetensors_and_json(tmp_path):
    import json

    from safetensors.numpy import load_file, save_file

    from untwine.retrieval.coldstart import ColdStartChannel, ColdStartConfig
    from untwine.retrieval.itemcf import ItemCFChannel, SwingChannel, SwingConfig

    ui, tags = tag_catalogue()
    attrs = tags.toarray()
    channels = [PopularityChannel().fit(ui), ItemCFChannel().fit(ui),
                SwingChannel(SwingConfig(max_users_per_item=3)).fit(ui), TagChannel().fit(ui, item_tags=tags),
                ColdStartChannel(ColdStartConfig(min_exposures=3, n_neighbours=2)).fit(ui, item_attributes=attrs)]
    channels[-1].record_impressions([8, 8, 9])
    hist = [np.array([0, 4]), np.array([9]), np.array([3, 5, 6])]
    for ch in channels:
        path = tmp_path / f"{ch.name}.safetensors"
        save_file({k: np.ascontiguousarray(v) for k, v in ch.state().items()}, str(path))
        config = json.loads(json.dumps(ch.config_dict()))
        back = type(ch).from_state(load_file(str(path)), config)
        assert back.config == ch.config and back.kind == ch.kind
        for a, b in zip(ch.retrieve(hist, 4), back.retrieve(hist, 4)):
            np.testing.assert_array_equal(a, b)
