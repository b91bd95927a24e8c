"""Tests of the ads-world simulator (small worlds; a few seconds in total)."""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from untwine.core.dataset_spec import DatasetSpec
from untwine.metrics import auc
from untwine.sim import SimConfig, dataset_schema, run, simulate, split_rows, to_table, write_dataset

TINY = dict(n_users=300, n_ads=100, n_categories=8, n_advertisers=10, n_impressions=6_000, days=5,
            hist_max_len=5)
# moderate density: ~50 impressions per user over 10 days, like the default 1M world
MEDIUM = dict(n_users=2_000, n_ads=500, n_categories=20, n_advertisers=50, n_impressions=100_000, days=10)


@pytest.fixture(scope="module")
def tiny():
    return run(SimConfig(seed=3, **TINY))


@pytest.fixture(scope="module")
def medium():
    return run(SimConfig(seed=0, **MEDIUM))


def _logit(p):
    p = np.clip(p, 1e-12, 1 - 1e-12)
    return np.log(p / (1 - p))


# ---------------------------------------------------------------- determinism


def _assert_tables_equal(a: pa.Table, b: pa.Table) -> None:
    assert a.column_names == b.column_names
    for name in a.column_names:
        x, y = a.column(name), b.column(name)
        if pa.types.is_fixed_size_list(x.type):
            np.testing.assert_array_equal(np.asarray(x.combine_chunks().flatten()),
                                          np.asarray(y.combine_chunks().flatten()))
        elif pa.types.is_string(x.type):
            assert x.to_pylist() == y.to_pylist(), name
        else:
            np.testing.assert_array_equal(x.to_numpy(), y.to_numpy(), err_msg=name)  # NaN == NaN here


def test_same_seed_identical_different_seed_differs():
    a = simulate(SimConfig(seed=11, **TINY))
    b = simulate(SimConfig(seed=11, **TINY))
    c = simulate(SimConfig(seed=12, **TINY))
    _assert_tables_equal(a, b)
    assert a.num_rows == TINY["n_impressions"]
    assert not np.array_equal(a.column("ad_id").to_numpy(), c.column("ad_id").to_numpy())
    assert not np.array_equal(a.column("p_click").to_numpy(), c.column("p_click").to_numpy())


# ---------------------------------------------------------------- log structure


def test_requests_and_context(tiny):
    c = tiny.columns
    cfg = tiny.cfg
    ts = c["impression_ts"]
    assert np.all(np.diff(ts) >= 0), "log is in time order"
    assert ts.min() >= cfg.start_ts and ts.max() < cfg.start_ts + cfg.days * 86_400
    _, sizes = np.unique(c["request_id"], return_counts=True)
    assert sizes.min() >= 1 and sizes.max() <= cfg.max_ads_per_request
    assert np.mean((sizes >= cfg.min_ads_per_request)) > 0.99  # only the last request may be cut
    # one user, one timestamp, distinct ads and positions 1..k inside a request
    req = c["request_id"]
    first = np.r_[True, req[1:] != req[:-1]]
    start = np.flatnonzero(first)
    g = np.repeat(np.arange(len(start)), np.diff(np.r_[start, len(req)]))
    assert np.all(c["user_id"] == c["user_id"][start][g])
    assert np.all(ts == ts[start][g])
    assert np.all(c["position"] == np.arange(len(req)) - start[g] + 1)
    pair = req * cfg.n_ads + c["ad_id"]
    assert len(np.unique(pair)) == len(pair)
    assert set(np.unique(c["hour"])) <= set(range(24)) and set(np.unique(c["weekday"])) <= set(range(7))
    # the serving policy is not uniform: ads are shown very unevenly
    counts = np.bincount(c["ad_id"], minlength=cfg.n_ads)
    assert counts.std() > 2 * np.sqrt(counts.mean())
    # numeric ad attributes are heavy-tailed and positive
    assert c["price"].min() > 0 and np.percentile(c["price"], 99) > 5 * np.median(c["price"])
    assert c["age_days"].min() >= 0 and c["age_days"].max() > 5 * np.median(c["age_days"])
    assert c["user_ext_vec"].shape == (len(req), cfg.ext_dim) and c["user_ext_vec"].dtype == np.float32
    assert c["ad_ext_vec"].shape == (len(req), cfg.ext_dim)


def test_prior_exposures_match_brute_force(tiny):
    c = tiny.columns
    window = tiny.cfg.fatigue_window_s
    seen: dict[tuple[int, int], list[int]] = {}
    expected = np.empty(len(tiny), dtype=np.int64)
    for i, (u, a, t) in enumerate(zip(c["user_id"], c["ad_id"], c["impression_ts"])):
        prev = seen.setdefault((int(u), int(a)), [])
        expected[i] = sum(1 for s in prev if t - window <= s < t)
        prev.append(int(t))
    np.testing.assert_array_equal(c["n_prior_exposures"], expected)
    assert (expected > 0).mean() > 0.05


def test_histories_are_the_latest_strictly_earlier_clicks_of_the_user(tiny):
    c = tiny.columns
    max_len = tiny.cfg.hist_max_len
    table = to_table(tiny)
    h_ad = table.column("hist_ad_id").to_pylist()
    h_cat = table.column("hist_category").to_pylist()
    h_ts = table.column("hist_ts").to_pylist()
    clicks_by_user: dict[int, list[int]] = {}
    for i in np.flatnonzero(c["click"]):
        clicks_by_user.setdefault(int(c["user_id"][i]), []).append(int(i))
    n_nonempty = 0
    for i in range(len(tiny)):
        t = c["impression_ts"][i]
        earlier = [j for j in clicks_by_user.get(int(c["user_id"][i]), []) if c["impression_ts"][j] < t]
        want = earlier[-max_len:]
        got = tiny.hist_rows[tiny.hist_ptr[i]: tiny.hist_ptr[i + 1]].tolist()
        assert got == want, i
        assert h_ad[i] == "|".join(str(c["ad_id"][j]) for j in want)
        assert h_cat[i] == "|".join(str(c["category"][j]) for j in want)
        assert h_ts[i] == "|".join(str(c["impression_ts"][j]) for j in want)
        n_nonempty += bool(want)
    assert n_nonempty > len(tiny) // 4
    assert (np.diff(tiny.hist_ptr) == max_len).any(), "truncation to max_len is exercised"


# ---------------------------------------------------------------- labels and rates


def test_labels_consistent(medium):
    c = medium.columns
    click, conv1, conv2 = c["click"], c["conv1"], c["conv2"]
    for y in (click, conv1, conv2):
        assert set(np.unique(y)) <= {0, 1}
    assert np.all(conv1 <= click) and np.all(conv2 <= click)
    assert conv1.sum() > 0 and conv2.sum() > 0
    assert np.array_equal(np.isnan(c["conv1_delay_s"]), conv1 == 0)
    assert np.array_equal(np.isnan(c["conv2_delay_s"]), conv2 == 0)
    assert np.nanmin(c["conv1_delay_s"]) > 0
    assert np.nanmedian(c["conv2_delay_s"]) > 3 * np.nanmedian(c["conv1_delay_s"])
    assert np.all((c["p_click"] > 0) & (c["p_click"] < 1))
    assert np.all(c["p_conv1"] <= c["p_click"]) and np.all(c["p_conv2"] <= c["p_click"])


def test_base_rates(medium):
    cfg = medium.cfg
    c = medium.columns
    ctr = c["click"].mean()
    assert 0.03 <= ctr <= 0.05 and abs(ctr - cfg.target_ctr) < 0.005
    n_click = c["click"].sum()
    assert abs(c["conv1"].sum() / n_click - cfg.target_cvr1) < 0.03
    assert abs(c["conv2"].sum() / n_click - cfg.target_cvr2) < 0.02


@pytest.mark.parametrize("task", ["click", "conv1", "conv2"])
def test_ground_truth_is_calibrated(medium, task):
    c = medium.columns
    p, y = c[f"p_{task}"], c[task]
    se = np.sqrt(np.sum(p * (1 - p))) / len(p)
    assert abs(y.mean() - p.mean()) < 4 * se
    # also within bins of the predicted probability
    edges = np.quantile(p, [0, 0.5, 0.9, 1.0])
    b = np.clip(np.searchsorted(edges, p, "right") - 1, 0, 2)
    for k in range(3):
        m = b == k
        se_k = np.sqrt(np.sum(p[m] * (1 - p[m]))) / m.sum()
        assert abs(y[m].mean() - p[m].mean()) < 4.5 * se_k, k


def test_oracle_auc_clearly_above_chance(medium):
    c = medium.columns
    for task in ("click", "conv1", "conv2"):
        assert auc(c[f"p_{task}"], c[task]) > 0.7, task


# ---------------------------------------------------------------- mechanisms


def test_fatigue_lowers_click_probability(medium):
    c, comp = medium.columns, medium.components
    n_prior = c["n_prior_exposures"]
    fat = comp["fatigue"]
    assert np.all(fat[n_prior == 0] == 0)
    assert np.all(fat[n_prior > 0] < 0)
    by_k = [fat[n_prior == k].mean() for k in range(4)]
    assert all(a > b for a, b in zip(by_k, by_k[1:])), "more earlier exposures, lower logit"
    # at equal other factors: the ground truth with and without the exposure term
    p_no_fatigue = 1 / (1 + np.exp(-(comp["click_logit"] - fat)))
    np.testing.assert_allclose(c["p_click"], 1 / (1 + np.exp(-comp["click_logit"])), rtol=1e-9)
    rep = n_prior >= 2
    assert rep.mean() > 0.03
    assert np.all(c["p_click"][rep] < p_no_fatigue[rep])
    # and on the observed labels: repeated impressions click clearly less than the same impressions
    # would without fatigue (z-test against the counterfactual expectation)
    pn = p_no_fatigue[rep]
    z = (c["click"][rep].sum() - pn.sum()) / np.sqrt(np.sum(pn * (1 - pn)))
    assert z < -4
    first = n_prior == 0
    pf = c["p_click"][first]
    z0 = (c["click"][first].sum() - pf.sum()) / np.sqrt(np.sum(pf * (1 - pf)))
    assert abs(z0) < 4


def test_recent_history_predicts_better_than_old(medium):
    c = medium.columns
    ptr, rows = medium.hist_ptr, medium.hist_rows
    idx = np.flatnonzero(np.diff(ptr) >= 10)
    assert len(idx) > 2_000
    cat = c["category"]
    hcat = cat[rows]
    last5 = sum((hcat[ptr[idx + 1] - 1 - j] == cat[idx]).astype(float) for j in range(5))
    first5 = sum((hcat[ptr[idx] + j] == cat[idx]).astype(float) for j in range(5))
    y = c["click"][idx]
    a_last, a_first = auc(last5, y), auc(first5, y)
    assert a_last > 0.6
    assert a_last > a_first + 0.01, (a_last, a_first)
    # the generating term itself: the behaviour signal is larger right after a click in the category
    assert medium.components["recency"].max() > 0.5


def test_tasks_are_entangled_not_identical(medium):
    comp, c = medium.components, medium.columns
    click_logit = comp["click_logit"]
    assert np.corrcoef(click_logit, comp["cvr1_logit"])[0, 1] < 0.8
    assert np.corrcoef(click_logit, comp["cvr2_logit"])[0, 1] < 0.8
    # even the impression-level conversion probabilities (pCTR x pCVR) are far from the click logit
    assert np.corrcoef(click_logit, _logit(c["p_conv1"]))[0, 1] < 0.8
    assert np.corrcoef(click_logit, _logit(c["p_conv2"]))[0, 1] < 0.8


def test_external_vectors_carry_affinity_signal(medium):
    c = medium.columns
    u, a = c["user_ext_vec"], c["ad_ext_vec"]
    cos = np.sum(u * a, axis=1) / (np.linalg.norm(u, axis=1) * np.linalg.norm(a, axis=1))
    assert np.corrcoef(cos, medium.components["affinity"])[0, 1] > 0.3
    assert 0.55 < auc(cos, c["click"]) < auc(c["p_click"], c["click"])


# ---------------------------------------------------------------- files


def test_write_dataset(tmp_path):
    cfg = SimConfig(seed=5, **TINY)
    path = write_dataset(cfg, tmp_path / "sim")
    assert path.name == "dataset.yaml" and path.exists()
    spec = DatasetSpec.from_yaml(path)
    assert spec.schema == dataset_schema(cfg)
    assert spec.schema.group_key == "user_id"
    assert spec.schema.task_names == ["click", "conv1", "conv2"]
    feature_names = {f.name for f in spec.schema.features}
    assert not feature_names & {"p_click", "p_conv1", "p_conv2", "n_prior_exposures", "request_id"}
    assert spec.extra["seed"] == 5 and spec.extra["config"]["n_impressions"] == TINY["n_impressions"]
    total = 0
    prev_max = -1
    for split in ("train", "valid", "test"):
        (f,) = spec.files(split)
        t = pq.read_table(f)
        total += t.num_rows
        assert t.num_rows == spec.extra["rows"][split] > 0
        for col in spec.schema.source_columns():
            assert col in t.column_names, (split, col)
        for col in ("impression_ts", "request_id", "p_click", "p_conv1", "p_conv2", "conv1_delay_s",
                    "conv2_delay_s"):
            assert col in t.column_names
        for v in ("user_ext_vec", "ad_ext_vec"):
            assert t.schema.field(v).type == pa.list_(pa.float32(), cfg.ext_dim)
        ts = t.column("impression_ts").to_numpy()
        assert ts.min() > prev_max, "splits are in time order"
        prev_max = ts.max()
        for task in ("click", "conv1", "conv2"):
            assert 0.5 < spec.extra["oracle_auc"][split][task] <= 1.0
    assert total == TINY["n_impressions"]
    n_train, n_valid, n_test = cfg.split_days()
    assert (n_train, n_valid, n_test) == (spec.extra["split"]["train_days"], spec.extra["split"]["valid_days"],
                                          spec.extra["split"]["test_days"])


def test_split_days_default():
    assert SimConfig().split_days() == (10, 2, 2)
    log_cfg = SimConfig(seed=1, **TINY)
    assert sum(log_cfg.split_days()) == log_cfg.days


def test_split_rows_partition(tiny):
    s = split_rows(tiny)
    assert s["train"].start == 0 and s["train"].stop == s["valid"].start
    assert s["valid"].stop == s["test"].start and s["test"].stop == len(tiny)
