"""The closed loop: serve -> observe -> retrain, round after round, on the simulator's ad market.

Every policy starts from the same first round served at random (so all learn from the same seed data)
and then serves with its own model. After each round the model trains on that round's impressions plus
a replay sample of earlier ones. The learned model is an untwine ranking model over the user's
demographics and external vector and the ad's id, category, advertiser and external vector (no user id:
2,000 requests a round are too few to learn one per user); ``item_features=("ad_id",)`` hides the ad's
content so that every new ad starts cold. Results per round: regret against the
oracle, revenue, impressions won by ads that entered after the start, repeat-exposure rate.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from untwine.core.batch import Batch
from untwine.core.features import FeatureSpace
from untwine.core.schema import Feature, Label, Schema
from untwine.data.vocab import NUM_RESERVED
from untwine.explore import policies
from untwine.explore.uncertainty import PredictiveModel, UncertaintyConfig
from untwine.sim.market import AdMarket, MarketConfig
from untwine.train.losses import RepeatExposureWeight

ITEM_FEATURES = ("ad_id", "category", "advertiser", "ad_ext")


class MarketFeatures:
    """(user, ad) pairs of the market as untwine Batches: the user's age, gender and external vector of
    the day, and the ad's ``item_features`` (``ad_id`` alone makes every new ad a cold start)."""

    def __init__(self, market: AdMarket, item_features: tuple[str, ...] = ITEM_FEATURES) -> None:
        self.m = market
        unknown = sorted(set(item_features) - set(ITEM_FEATURES))
        if unknown or "ad_id" not in item_features:
            raise ValueError(f"item_features must include ad_id and come from {ITEM_FEATURES}, got {item_features}")
        w, wc = market.world, market.cfg.world
        sizes = {"age": int(w.user_age.max()) + 1, "gender": 3, "ad_id": wc.n_ads, "category": wc.n_categories,
                 "advertiser": wc.n_advertisers}
        self.categorical = [c for c in ("age", "gender", "ad_id", "category", "advertiser")
                            if c in ("age", "gender") or c in item_features]
        feats = [Feature(name=c, kind="categorical", group="user" if c in ("age", "gender") else "item")
                 for c in self.categorical]
        feats.append(Feature(name="user_ext", kind="vector", group="user", dim=wc.ext_dim))
        self.ad_ext = "ad_ext" in item_features
        if self.ad_ext:
            feats.append(Feature(name="ad_ext", kind="vector", group="item", dim=wc.ext_dim))
        self.space = FeatureSpace(schema=Schema(features=feats, labels=[Label(name="click")]),
                                  vocab_sizes={k: sizes[k] + NUM_RESERVED for k in self.categorical})
        self.columns = {name: ("categorical", j) for j, name in enumerate(self.categorical)}

    def context(self, users: np.ndarray, day: int) -> np.ndarray:
        """The user's external vector of the day (what a linear bandit sees), with a bias column."""
        x = self.m.world.user_ext(np.full(len(users), day), users)
        return np.concatenate([x, np.ones((len(users), 1), np.float32)], axis=1)

    def batch(self, users: np.ndarray, ads: np.ndarray, day: int | np.ndarray, clicks: np.ndarray | None = None,
              exposures: np.ndarray | None = None) -> Batch:
        """Rows (user, ad) seen on ``day`` (one day, or one per row)."""
        w = self.m.world
        days = np.broadcast_to(np.asarray(day), users.shape)
        values = {"age": w.user_age[users], "gender": w.user_gender[users], "ad_id": ads,
                  "category": w.ad_category[ads], "advertiser": w.ad_advertiser[ads]}
        cat = np.stack([values[c] for c in self.categorical], 1)
        vectors = {"user_ext": torch.from_numpy(w.user_ext(days, users))}
        if self.ad_ext:
            vectors["ad_ext"] = torch.from_numpy(w.ad_ext[ads].astype(np.float32))
        b = Batch(categorical=torch.from_numpy(cat.astype(np.int64) + NUM_RESERVED), columns=self.columns,
                  vectors=vectors,
                  labels=torch.from_numpy((np.zeros(len(users)) if clicks is None else clicks)
                                          .astype(np.float32)[:, None]))
        if exposures is not None:
            b.exposures = torch.from_numpy(exposures.astype(np.int64))
        return b


@dataclass
class LoopConfig:
    market: MarketConfig = field(default_factory=MarketConfig)
    policy: str = "thompson"  # greedy | epsilon_greedy | ucb | thompson | linucb | random
    epsilon: float = 0.05
    ucb_c: float = 1.0
    linucb_alpha: float = 0.5
    uncertainty: UncertaintyConfig = field(default_factory=UncertaintyConfig)
    model: str = "dnn"
    model_options: dict = field(default_factory=lambda: {"hidden": [64, 32], "embedding_dim": 8})
    epochs_per_round: int = 2
    batch_size: int = 256
    replay: int = 4000  # earlier impressions replayed with each round's
    rew: RepeatExposureWeight | None = None  # repeated-exposure weighting of negatives
    item_features: tuple[str, ...] = ITEM_FEATURES  # ("ad_id",): ads known by id only, every new ad cold


def run_loop(cfg: LoopConfig, progress=None) -> list[dict]:
    market = AdMarket(cfg.market)
    feats = MarketFeatures(market, cfg.item_features)
    rng = np.random.default_rng(np.random.SeedSequence([cfg.market.seed, 11]))
    model = PredictiveModel(feats.space, cfg.model, cfg.model_options, cfg.uncertainty) \
        if cfg.policy not in ("linucb", "random") else None
    lin = policies.LinUCB(cfg.market.world.n_ads, cfg.market.world.ext_dim + 1, cfg.linucb_alpha) \
        if cfg.policy == "linucb" else None
    choose = {"greedy": policies.greedy, "epsilon_greedy": policies.epsilon_greedy(cfg.epsilon),
              "ucb": policies.ucb(cfg.ucb_c), "thompson": policies.thompson,
              "random": policies.random_policy}.get(cfg.policy)
    if choose is None and lin is None:
        raise ValueError(f"unknown policy {cfg.policy!r}")
    history: list[tuple] = []  # (users, ads, days, clicks, exposures) of every round, one entry per row
    out = []
    for r in range(cfg.market.rounds):
        ts, users, cand = market.requests()
        day = market.day()
        bids = market.world.ad_bid[cand]
        if r == 0 or cfg.policy == "random":
            pick = policies.random_policy(bids, None, rng)
        elif lin is not None:
            pick = lin.choose(bids, feats.context(users, day), cand)
        else:
            flat = feats.batch(np.repeat(users, cand.shape[1]), cand.reshape(-1), day)
            draws = model.sample(flat).numpy().reshape(-1, *cand.shape)
            pick = choose(bids, draws, rng)
        res = market.serve(ts, users, cand, pick)
        history.append((res.users, res.chosen, np.full(len(res.users), day), res.clicks, res.exposures))
        if lin is not None:
            lin.update(feats.context(res.users, day), res.chosen, res.clicks.astype(float))
        elif model is not None:
            _train_round(model, feats, history, cfg, rng)
        out.append({"round": r, "regret": float(res.regret.sum()), "revenue": float(res.revenue.sum()),
                    "clicks": int(res.clicks.sum()), "expected_revenue": float((market.world.ad_bid[res.chosen] * res.p_chosen).sum()),
                    "new_ad_impressions": int(res.new_ad.sum()), "repeat_rate": float((res.exposures > 0).mean()),
                    "live_ads": int(market.live.sum()), "requests": len(users)})
        if progress is not None:
            progress(out[-1])
    return out


def _train_round(model: PredictiveModel, feats: MarketFeatures, history: list[tuple], cfg: LoopConfig,
                 rng: np.random.Generator) -> None:
    users, ads, days, clicks, exposures = history[-1]
    if len(history) > 1 and cfg.replay:
        old = [np.concatenate([h[k] for h in history[:-1]]) for k in range(5)]
        take = rng.choice(len(old[0]), min(cfg.replay, len(old[0])), replace=False)
        users, ads, days, clicks, exposures = (np.concatenate([a, o[take]]) for a, o in
                                               zip((users, ads, days, clicks, exposures), old))
    for _ in range(cfg.epochs_per_round):
        perm = rng.permutation(len(users))
        for s in range(0, len(perm), cfg.batch_size):
            idx = perm[s:s + cfg.batch_size]
            model.update(feats.batch(users[idx], ads[idx], days[idx], clicks[idx], exposures[idx]), rew=cfg.rew)
