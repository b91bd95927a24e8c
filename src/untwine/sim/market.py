"""A closed-loop ad market on the simulator's world, for exploration experiments (SPEC 5).

Rounds of requests: each request brings a user and ``n_candidates`` live ads; a policy picks one; the
user clicks with the world's true probability. Ads enter over time (a fixed number per round from the
world's pool) and leave when their budget is spent (cost per click = bid). The true click probability
follows the log simulator's click model without the behaviour feedback:

    logit p = b0 + affinity_weight * affinity(user interests of the day, ad latent) + ad quality
              + user bias + demographics x category - fatigue_weight * log1p(n)

where n counts the earlier impressions of the same (user, ad) in the last ``fatigue_window_s`` (so showing
an ad again is worth less: the premise of repeated-exposure weighting). b0 puts the mean CTR of random
(user, ad) pairs at ``target_ctr``. Regret of a choice = max over candidates of bid x p - bid x p of the
chosen ad: the oracle knows the true p.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from untwine.sim.simulate import DAY_S, _affinity, _sigmoid, _solve_intercept
from untwine.sim.world import SimConfig, World, build_world


@dataclass
class MarketConfig:
    world: SimConfig = field(default_factory=lambda: SimConfig(n_users=5000, n_ads=1500, days=14, seed=0))
    rounds: int = 60
    requests_per_round: int = 2000
    n_candidates: int = 20
    initial_ads: int = 300
    new_ads_per_round: int = 15
    budget_clicks: float = 60.0  # an ad's budget is its bid x this many clicks
    round_seconds: int = 4 * 3600
    seed: int = 0


@dataclass
class Round:
    """What one round served: per request the user, the candidates, the choice and the outcome."""

    round: int
    ts: np.ndarray  # (R,)
    users: np.ndarray  # (R,)
    candidates: np.ndarray  # (R, C) ad ids
    chosen: np.ndarray  # (R,) ad ids
    clicks: np.ndarray  # (R,) 0/1
    exposures: np.ndarray  # (R,) earlier impressions of (user, chosen ad) in the fatigue window
    p_chosen: np.ndarray  # (R,) true click probability of the chosen ad
    regret: np.ndarray  # (R,) oracle eCPM - chosen eCPM
    revenue: np.ndarray  # (R,) bid x click
    new_ad: np.ndarray  # (R,) the chosen ad entered after round 0


class AdMarket:
    def __init__(self, cfg: MarketConfig, world: World | None = None) -> None:
        self.cfg = cfg
        self.world = world if world is not None else build_world(cfg.world)
        w, wc = self.world, cfg.world
        if cfg.initial_ads + cfg.rounds * cfg.new_ads_per_round > wc.n_ads:
            raise ValueError(f"{cfg.initial_ads} initial + {cfg.rounds} x {cfg.new_ads_per_round} new ads need more "
                             f"than the world's {wc.n_ads} ads")
        self.rng = np.random.default_rng(np.random.SeedSequence([cfg.seed, 7]))
        self.order = self.rng.permutation(wc.n_ads)  # the order in which ads enter the market
        self.entered = cfg.initial_ads
        self.live = np.zeros(wc.n_ads, dtype=bool)
        self.live[self.order[: cfg.initial_ads]] = True
        self.entry_round = np.full(wc.n_ads, -1)
        self.entry_round[self.order[: cfg.initial_ads]] = 0
        self.spent = np.zeros(wc.n_ads)
        self.budget = w.ad_bid * cfg.budget_clicks
        self.exposure_log: dict[tuple[int, int], list[int]] = {}
        self.round = 0
        # intercept from random (user, ad) pairs on random days
        u = self.rng.integers(0, wc.n_users, 20_000)
        a = self.rng.integers(0, wc.n_ads, 20_000)
        d = self.rng.integers(0, wc.days, 20_000)
        self.b0 = _solve_intercept(self._static_logit(u, a[:, None], d)[:, 0], wc.target_ctr)

    # ---- the world's click model
    def _static_logit(self, users: np.ndarray, ads: np.ndarray, days: np.ndarray) -> np.ndarray:
        """(R, C) click logit without intercept and fatigue for users (R,), ads (R, C), days (R,)."""
        w, wc = self.world, self.cfg.world
        aff = _affinity(w.interests[days, users], w.interest_logw[users], w.ad_latent[ads], wc.affinity_temperature)
        demo = w.demo_cat[w.user_age[users][:, None], w.user_gender[users][:, None], w.ad_category[ads]]
        return wc.affinity_weight * aff + w.ad_quality[ads] + w.user_bias[users][:, None] + demo

    def day(self, round_: int | None = None) -> int:
        r = self.round if round_ is None else round_
        return min(r * self.cfg.round_seconds // DAY_S, self.cfg.world.days - 1)

    def prior_exposures(self, users: np.ndarray, ads: np.ndarray, ts: int) -> np.ndarray:
        """(R, C) earlier impressions of each (user, ad) within the fatigue window before ts."""
        lo = ts - self.cfg.world.fatigue_window_s
        out = np.zeros(ads.shape, dtype=np.int64)
        for i, u in enumerate(users.tolist()):
            for j, a in enumerate(ads[i].tolist()):
                times = self.exposure_log.get((u, a))
                if times:
                    out[i, j] = sum(1 for t in times if t >= lo)
        return out

    def true_ctr(self, users: np.ndarray, ads: np.ndarray, ts: int, exposures: np.ndarray | None = None) -> np.ndarray:
        days = np.full(len(users), self.day())
        n = self.prior_exposures(users, ads, ts) if exposures is None else exposures
        return _sigmoid(self.b0 + self._static_logit(users, ads, days) - self.cfg.world.fatigue_weight * np.log1p(n))

    # ---- one round
    def requests(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """This round's (ts, users, candidates): candidates drawn uniformly from the live ads."""
        cfg, w = self.cfg, self.world
        r = cfg.requests_per_round
        users = self.rng.choice(cfg.world.n_users, r, p=w.user_activity / w.user_activity.sum())
        live = np.flatnonzero(self.live)
        c = min(cfg.n_candidates, len(live))
        cand = np.stack([self.rng.choice(live, c, replace=False) for _ in range(r)])
        start = cfg.world.start_ts + self.round * cfg.round_seconds
        ts = np.sort(start + self.rng.integers(0, cfg.round_seconds, r))
        return ts, users, cand

    def serve(self, ts: np.ndarray, users: np.ndarray, cand: np.ndarray, choice: np.ndarray) -> Round:
        """Show ``cand[i, choice[i]]`` to request i, in time order; clicks, spend, exits, entries."""
        cfg, w = self.cfg, self.world
        r = len(users)
        rows = np.arange(r)
        chosen = cand[rows, choice]
        clicks = np.zeros(r, dtype=np.int8)
        exposures = np.zeros(r, dtype=np.int64)
        p_chosen = np.zeros(r)
        regret = np.zeros(r)
        bid = w.ad_bid
        for i in range(r):  # in time order: an impression's fatigue counts the earlier ones of this round
            n = self.prior_exposures(users[i:i + 1], cand[i:i + 1], int(ts[i]))
            p = self.true_ctr(users[i:i + 1], cand[i:i + 1], int(ts[i]), n)[0]
            ecpm = bid[cand[i]] * p
            regret[i] = ecpm.max() - ecpm[choice[i]]
            p_chosen[i] = p[choice[i]]
            exposures[i] = n[0, choice[i]]
            clicks[i] = self.rng.random() < p[choice[i]]
            self.exposure_log.setdefault((int(users[i]), int(chosen[i])), []).append(int(ts[i]))
        revenue = bid[chosen] * clicks
        np.add.at(self.spent, chosen, revenue)
        out = Round(self.round, ts, users, cand, chosen, clicks, exposures, p_chosen, regret, revenue,
                    self.entry_round[chosen] > 0)
        # budgets: ads whose spend reached the budget leave; new ones enter from the pool
        self.live &= self.spent < self.budget
        self.round += 1
        new = self.order[self.entered: self.entered + cfg.new_ads_per_round]
        self.live[new] = True
        self.entry_round[new] = self.round
        self.entered += len(new)
        return out
