"""Exposure counts of (user, item) inside a window against a naive loop."""
import numpy as np
import pytest

from untwine.data.exposure import exposure_counts, split_exposure_counts
from untwine.data.vocab import OOV


def naive(users, items, ts, window):
    out = []
    for i in range(len(ts)):
        c = 0
        for j in range(len(ts)):
            earlier = ts[j] < ts[i] or (ts[j] == ts[i] and j < i)
            inside = window is None or ts[j] >= ts[i] - window
            if earlier and inside and users[j] == users[i] and items[j] == items[i]:
                c += 1
        out.append(0 if users[i] == OOV or items[i] == OOV else c)
    return np.array(out)


@pytest.mark.parametrize("window", [None, 0, 5, 30])
def test_counts_equal_the_naive_loop(window):
    rng = np.random.default_rng(0)
    n = 300
    users, items = rng.integers(1, 6, n), rng.integers(1, 5, n)  # includes OOV = 1
    ts = rng.integers(1_000, 1_100, n)  # ties on purpose
    np.testing.assert_array_equal(exposure_counts(users, items, ts, window), naive(users, items, ts, window))


def test_hand_example():
    users = np.array([5, 5, 5, 6, 5])
    items = np.array([7, 7, 8, 7, 7])
    ts = np.array([0, 10, 20, 30, 100])
    assert exposure_counts(users, items, ts, None).tolist() == [0, 1, 0, 0, 2]
    assert exposure_counts(users, items, ts, 50).tolist() == [0, 1, 0, 0, 0]  # t=100 sees nothing after 50


def test_counts_run_across_splits_in_time_order():
    tr = (np.array([5, 5]), np.array([7, 7]), np.array([0, 10]))
    va = (np.array([5]), np.array([7]), np.array([20]))
    got = split_exposure_counts({"train": tr, "valid": va}, None)
    assert got["train"].tolist() == [0, 1] and got["valid"].tolist() == [2]


def test_length_mismatch_is_an_error():
    with pytest.raises(ValueError, match="one value per row"):
        exposure_counts(np.array([1, 2]), np.array([1]), np.array([0, 1]))


def test_counts_match_the_simulators_fatigue_exposures():
    """The simulator draws clicks with a fatigue term on its own count of prior exposures; counted again
    from the logged (user, ad, time) they agree."""
    from untwine.sim import SimConfig, simulate

    cfg = SimConfig(n_impressions=30_000, n_users=300, n_ads=80, seed=3)
    t = simulate(cfg)
    col = lambda n: t.column(n).to_numpy()  # noqa: E731
    got = exposure_counts(col("user_id") + 2, col("ad_id") + 2, col("impression_ts"), cfg.fatigue_window_s)
    assert (col("n_prior_exposures") > 0).mean() > 0.1  # repeats are common enough to test something
    np.testing.assert_array_equal(got, col("n_prior_exposures"))
