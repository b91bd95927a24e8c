"""Exploration: policies on hand-made draws, LinUCB against its closed form, the market's bookkeeping,
predictive models, and a small closed loop."""
import numpy as np
import pytest
import torch

from untwine.explore import policies
from untwine.explore.loop import LoopConfig, MarketFeatures, run_loop
from untwine.explore.uncertainty import PredictiveModel, UncertaintyConfig
from untwine.sim.market import AdMarket, MarketConfig
from untwine.sim.world import SimConfig

RNG = np.random.default_rng(0)


def small_market(**kw):
    base = dict(world=SimConfig(n_users=500, n_ads=300, seed=3), rounds=5, requests_per_round=200, n_candidates=10,
                initial_ads=60, new_ads_per_round=10, budget_clicks=3.0, seed=1)
    base.update(kw)
    return MarketConfig(**base)


def test_greedy_ucb_and_epsilon_on_hand_made_draws():
    bids = np.array([[1.0, 2.0, 1.0]])
    draws = np.array([[[0.10, 0.04, 0.02]], [[0.10, 0.06, 0.30]]])  # (K=2, R=1, C=3)
    # means 0.10, 0.05, 0.16 -> eCPM 0.10, 0.10, 0.16
    assert policies.greedy(bids, draws, RNG).tolist() == [2]
    tie = np.array([[[0.1, 0.0]], [[0.1, 0.2]]])  # equal means, the second is uncertain
    assert policies.ucb(1.0)(np.ones((1, 2)), tie, RNG).tolist() == [1]
    many_bids, many = np.ones((20000, 5)), np.zeros((1, 20000, 5))
    many[0, :, 0] = 1.0
    picks = policies.epsilon_greedy(0.2)(many_bids, many, np.random.default_rng(1))
    assert (picks != 0).mean() == pytest.approx(0.2 * 4 / 5, abs=0.01)  # explores uniformly 20% of the time


def test_thompson_picks_each_candidate_as_often_as_its_draw_wins():
    # member 0 prefers candidate 0, members 1-3 candidate 1: Thompson serves 0 a quarter of the time
    draws = np.zeros((4, 40000, 2))
    draws[0, :, 0] = 1.0
    draws[1:, :, 1] = 1.0
    picks = policies.thompson(np.ones((40000, 2)), draws, np.random.default_rng(2))
    assert (picks == 0).mean() == pytest.approx(0.25, abs=0.01)


def test_linucb_keeps_the_ridge_solution_and_its_uncertainty():
    lin = policies.LinUCB(n_ads=3, dim=4, alpha=0.7)
    x = RNG.normal(size=(50, 4))
    r = (RNG.random(50) < 0.3).astype(float)
    lin.update(x, np.ones(50, dtype=int), r)
    a = np.eye(4) + x.T @ x
    np.testing.assert_allclose(lin.a_inv[1], np.linalg.inv(a), atol=1e-10)
    ctx = RNG.normal(size=(2, 4))
    got = lin.scores(ctx, np.array([[1, 0], [1, 2]]))
    theta = np.linalg.solve(a, x.T @ r)
    expect_1 = ctx @ theta + 0.7 * np.sqrt(np.einsum("ri,ij,rj->r", ctx, np.linalg.inv(a), ctx))
    np.testing.assert_allclose(got[:, 0], expect_1, atol=1e-10)
    np.testing.assert_allclose(got[:, 1], 0.7 * np.linalg.norm(ctx, axis=1), atol=1e-10)  # unseen ads: prior only


def test_market_oracle_has_no_regret_budgets_end_and_new_ads_enter():
    m = AdMarket(small_market())
    spent_out = 0
    for r in range(4):
        ts, users, cand = m.requests()
        assert m.live[cand].all()
        # the oracle: the true eCPM per candidate, with the fatigue of the pair at the request's time
        picks = np.array([np.argmax(m.world.ad_bid[cand[i]] * m.true_ctr(users[i:i + 1], cand[i:i + 1], int(ts[i]))[0])
                          for i in range(len(users))])
        before = m.live.copy()
        res = m.serve(ts, users, cand, picks)
        if r == 0:  # a user's first request has no fatigue anywhere, so the oracle's choice is exact there
            first = np.unique(users, return_index=True)[1]
            assert res.regret[first].max() < 1e-12 and (res.exposures[first] == 0).all()
        ended = before & ~m.live
        spent_out += ended.sum()
        assert (m.spent[ended] >= m.budget[ended]).all()
        assert m.live[m.order[m.entered - 10:m.entered]].all()  # ten new ads every round
    assert spent_out > 0  # budgets of 3 clicks run out


def test_fatigue_lowers_the_true_ctr_of_repeats():
    m = AdMarket(small_market())
    u, a = np.array([5]), np.array([[7]])
    t = m.cfg.world.start_ts + 1000
    p0 = m.true_ctr(u, a, t)[0, 0]
    m.exposure_log[(5, 7)] = [t - 100, t - 50]
    assert m.prior_exposures(u, a, t)[0, 0] == 2
    assert m.true_ctr(u, a, t)[0, 0] < p0
    m.exposure_log[(5, 7)] = [t - m.cfg.world.fatigue_window_s - 1]  # outside the window
    assert m.true_ctr(u, a, t)[0, 0] == pytest.approx(p0)


def test_ensemble_members_differ_and_learn_and_mc_dropout_needs_dropout():
    m = AdMarket(small_market())
    feats = MarketFeatures(m)
    users, ads = np.arange(64), np.arange(64) % 50
    b = feats.batch(users, ads, 0, clicks=(np.arange(64) % 3 == 0).astype(float), exposures=np.zeros(64))
    ens = PredictiveModel(feats.space, "dnn", {"hidden": [16]}, UncertaintyConfig(members=4, seed=1))
    s = ens.sample(b)
    assert s.shape == (4, 64) and s.std(dim=0).mean() > 0  # members disagree
    before = [p.clone() for p in ens.models[0].parameters()]
    ens.update(b)
    assert any(not torch.equal(p0, p1) for p0, p1 in zip(before, ens.models[0].parameters()))
    with pytest.raises(ValueError, match="dropout"):
        PredictiveModel(feats.space, "dnn", {"hidden": [16]}, UncertaintyConfig(method="mc_dropout"))
    mc = PredictiveModel(feats.space, "dnn", {"hidden": [16], "dropout": 0.3}, UncertaintyConfig(method="mc_dropout"))
    d = mc.sample(b)
    assert d.shape == (5, 64) and d.std(dim=0).mean() > 0


def test_closed_loop_learned_policies_beat_random():
    torch.set_num_threads(1)
    regret = {}
    for pol in ("random", "greedy", "thompson", "linucb"):
        out = run_loop(LoopConfig(market=small_market(rounds=6, requests_per_round=300, budget_clicks=50.0),
                                  policy=pol, uncertainty=UncertaintyConfig(members=3)))
        assert len(out) == 6 and all(o["requests"] == 300 for o in out)
        regret[pol] = sum(o["regret"] for o in out[1:])  # round 0 is served at random by every policy
    assert max(regret["greedy"], regret["thompson"], regret["linucb"]) < regret["random"]


def test_id_only_features_drop_the_ad_content():
    m = AdMarket(small_market())
    feats = MarketFeatures(m, ("ad_id",))
    b = feats.batch(np.arange(4), np.arange(4), 0)
    assert [f.name for f in feats.space.schema.features] == ["age", "gender", "ad_id", "user_ext"]
    assert b.categorical.shape == (4, 3) and set(b.vectors) == {"user_ext"}
    with pytest.raises(ValueError, match="ad_id"):
        MarketFeatures(m, ("category",))
