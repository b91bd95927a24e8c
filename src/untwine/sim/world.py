"""Simulator configuration and the latent ads world (users, ads, their hidden vectors).

The world is everything that does not depend on the impression log: users with several drifting
interest vectors, ads tied to categories, advertisers, prices, bids, and the pre-trained-style
external vectors. It is a pure function of ``SimConfig`` (and its seed).

Latent structure (all unit vectors in R^latent_dim unless said otherwise):

- category centres ``cat_center[c]``;
- ad latent ``ad_latent[a] = normalise(cat_center[cat[a]] + ad_spread * noise)``;
- user ``u`` has ``n_interests[u]`` in [min_interests, max_interests] interests, each anchored on a
  category drawn from a demographic-tilted popularity, with Dirichlet mixture weights;
  the interests drift by a slow mean-reverting random walk on the sphere (one step per day, pulled
  back to the interest's anchor so the affinity level is stationary), and each interest
  occasionally (``interest_switch_prob`` per day) jumps to a new category, so old behaviour goes stale
  (``interests[day, u, k]``, ``interest_cat[day, u, k]``; padded slots have weight 0);
- a second, mostly independent "install" subspace (``user_v2``, ``ad_v2``, width ``conv2_dim``)
  drives app-install conversions (conv2) so they disagree with clicks;
- external vectors: one shared random projection ``ext_proj`` (ext_dim x latent_dim) maps latent
  vectors to the external space; ``ad_ext = ext_proj @ ad_latent + noise`` once, the user's external
  vector is ``ext_proj @ (mixture mean of the day's interests) + noise``, refreshed daily.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

N_AGE_BUCKETS = 7
N_GENDERS = 3  # 0 = unknown
N_CITY_TIERS = 5  # 1 = largest cities


class SimConfig(BaseModel):
    """Every knob of the simulator; defaults give the 1M-impression, 14-day reference world."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    seed: int = 0
    # population
    n_users: int = Field(20_000, ge=2)
    n_ads: int = Field(2_000, ge=2)
    n_categories: int = Field(30, ge=2)
    n_advertisers: int = Field(200, ge=1)
    latent_dim: int = Field(16, ge=2)
    min_interests: int = Field(2, ge=1)
    max_interests: int = Field(4, ge=1)
    ext_dim: int = Field(32, ge=1)
    ext_noise: float = Field(0.35, ge=0)  # std of external-vector noise relative to the signal
    conv2_dim: int = Field(8, ge=1)
    ad_spread: float = Field(0.55, ge=0)  # how far an ad's latent sits from its category centre
    interest_spread: float = Field(0.45, ge=0)
    drift_sigma: float = Field(0.25, ge=0)  # per-day random-walk step of user interests
    drift_reversion: float = Field(0.3, ge=0, le=1)  # pull of the walk back to the interest's anchor
    interest_switch_prob: float = Field(0.06, ge=0, le=1)  # per interest per day: jump to a new category
    activity_sigma: float = Field(1.0, ge=0)  # lognormal spread of users' request rates
    # log
    days: int = Field(14, ge=3)
    n_impressions: int = Field(1_000_000, ge=1)
    start_ts: int = 1_704_067_200  # 2024-01-01 00:00:00 UTC (a Monday)
    min_ads_per_request: int = Field(5, ge=1)
    max_ads_per_request: int = Field(10, ge=1)
    n_candidates: int = Field(40, ge=2)  # candidates scored by the serving policy per request
    policy_noise: float = Field(0.7, ge=0)  # Gumbel scale of the serving policy
    policy_bid_weight: float = 0.5
    # click model
    target_ctr: float = Field(0.04, gt=0, lt=1)
    affinity_weight: float = 3.0
    affinity_temperature: float = Field(0.15, gt=0)
    recency_cat_weight: float = 0.9  # * log1p(decayed count of recent clicks in the ad's category)
    recency_latent_weight: float = 0.6  # * tanh(<decayed sum of recently clicked latents, ad latent>)
    recency_tau_s: float = Field(86_400.0, gt=0)  # exponential time decay of the behaviour signal
    step_s: int = Field(300, ge=1)  # behaviour state is refreshed every step_s seconds (feature lag)
    position_weight: float = 0.25  # click logit -= position_weight * log(position)
    quality_sigma: float = Field(0.4, ge=0)
    user_bias_sigma: float = Field(0.4, ge=0)
    demo_sigma: float = Field(0.3, ge=0)  # (age bucket, gender) x category click effects
    fatigue_weight: float = 0.6  # click logit -= fatigue_weight * log1p(prior exposures in window)
    fatigue_window_s: int = Field(3 * 86_400, ge=1)
    # conversions (rates are P(conv | click))
    target_cvr1: float = Field(0.10, gt=0, lt=1)
    target_cvr2: float = Field(0.05, gt=0, lt=1)
    conv1_delay_median_s: float = Field(1_800.0, gt=0)
    conv1_delay_sigma: float = Field(1.2, ge=0)
    conv2_delay_median_s: float = Field(43_200.0, gt=0)
    conv2_delay_sigma: float = Field(1.0, ge=0)
    # behaviour history written per impression
    hist_max_len: int = Field(50, ge=1)
    # time split (by whole days)
    train_frac: float = Field(0.70, gt=0, lt=1)
    valid_frac: float = Field(0.15, gt=0, lt=1)

    @model_validator(mode="after")
    def _check(self) -> "SimConfig":
        if self.min_interests > self.max_interests:
            raise ValueError("min_interests must be <= max_interests")
        if self.min_ads_per_request > self.max_ads_per_request:
            raise ValueError("min_ads_per_request must be <= max_ads_per_request")
        if self.n_candidates < 2 * self.max_ads_per_request:
            raise ValueError("n_candidates must be >= 2 * max_ads_per_request")
        if self.n_ads < max(self.n_categories, self.max_ads_per_request * 2):
            raise ValueError("n_ads must be >= n_categories and >= 2 * max_ads_per_request")
        if self.train_frac + self.valid_frac >= 1:
            raise ValueError("train_frac + valid_frac must be < 1")
        return self

    def split_days(self) -> tuple[int, int, int]:
        """Whole days in (train, valid, test): first ~70% train, next ~15% valid, rest test."""
        n_train = max(1, int(round(self.days * self.train_frac)))
        n_valid = max(1, int(round(self.days * self.valid_frac)))
        n_train = min(n_train, self.days - 2)
        n_valid = min(n_valid, self.days - n_train - 1)
        return n_train, n_valid, self.days - n_train - n_valid


def _normalise(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def _softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    z = np.exp(x - x.max(axis=axis, keepdims=True))
    return z / z.sum(axis=axis, keepdims=True)


@dataclass(frozen=True)
class World:
    """Latent and observed attributes of users, ads and advertisers (arrays indexed by id)."""

    cfg: SimConfig
    cat_center: np.ndarray  # (C, d)
    # ads
    ad_category: np.ndarray  # (A,) int64
    ad_advertiser: np.ndarray  # (A,) int64
    ad_latent: np.ndarray  # (A, d) float32
    ad_quality: np.ndarray  # (A,) click-logit offset (ad + advertiser)
    ad_cvr1_quality: np.ndarray  # (A,) purchase-logit offset (advertiser + ad)
    ad_bid: np.ndarray  # (A,)
    ad_price: np.ndarray  # (A,) heavy-tailed
    ad_age0: np.ndarray  # (A,) age in days at start_ts, heavy-tailed int64
    ad_v2: np.ndarray  # (A, d2) install subspace
    ad_app: np.ndarray  # (A,) advertiser's install propensity
    ad_ext: np.ndarray  # (A, ext_dim) float32
    cat_ads: np.ndarray  # ad ids sorted by category
    cat_start: np.ndarray  # (C,) offset of each category in cat_ads
    cat_count: np.ndarray  # (C,)
    # users
    user_age: np.ndarray  # (U,) bucket 0..6
    user_gender: np.ndarray  # (U,) 0 unknown, 1, 2
    user_city_tier: np.ndarray  # (U,) 1..5
    user_activity: np.ndarray  # (U,) relative request rate (mean 1)
    user_bias: np.ndarray  # (U,) click-logit offset
    user_buy: np.ndarray  # (U,) purchase propensity
    user_price_aff: np.ndarray  # (U,) tolerance for expensive ads (purchase)
    user_v2: np.ndarray  # (U, d2)
    interest_cat: np.ndarray  # (days, U, K) anchor category of each interest on each day
    interest_logw: np.ndarray  # (U, K) log mixture weights, -inf for padded slots
    interests: np.ndarray  # (days, U, K, d) float32, drifting
    user_ext_noise: np.ndarray  # (days, U, ext_dim) float32
    ext_proj: np.ndarray  # (ext_dim, d)
    demo_cat: np.ndarray  # (N_AGE_BUCKETS, N_GENDERS, C) click-logit offsets
    hour_effect: np.ndarray  # (24,)
    hour_prob: np.ndarray  # (24,) request distribution over hours

    def mean_interest(self, day: np.ndarray, user: np.ndarray) -> np.ndarray:
        """Mixture-weighted mean interest vector of ``user`` on ``day`` (vectorised)."""
        w = np.exp(self.interest_logw[user]).astype(np.float32)  # (n, K)
        return np.einsum("nk,nkd->nd", w, self.interests[day, user])

    def user_ext(self, day: np.ndarray, user: np.ndarray) -> np.ndarray:
        m = _normalise(self.mean_interest(day, user))
        return (m @ self.ext_proj.T + self.user_ext_noise[day, user]).astype(np.float32)


def build_world(cfg: SimConfig) -> World:
    """Draw the latent world from ``cfg.seed`` (independent of the impression stream)."""
    rng = np.random.default_rng(np.random.SeedSequence([cfg.seed, 1]))
    C, A, U, d, K = cfg.n_categories, cfg.n_ads, cfg.n_users, cfg.latent_dim, cfg.max_interests
    f32 = np.float32

    cat_center = _normalise(rng.standard_normal((C, d)))
    cat_pop = rng.dirichlet(np.full(C, 1.5))  # how common each category is among user interests

    # ---- advertisers and ads ----
    adv_cat = rng.integers(0, C, cfg.n_advertisers)  # advertisers specialise in a home category
    adv_quality = rng.normal(0, cfg.quality_sigma * 0.5, cfg.n_advertisers)
    adv_cvr = rng.normal(0, 0.5, cfg.n_advertisers)
    adv_bid = rng.lognormal(0.0, 0.5, cfg.n_advertisers)
    adv_app = rng.normal(0, 1.0, cfg.n_advertisers)
    ad_adv = rng.integers(0, cfg.n_advertisers, A)
    ad_cat = np.where(rng.random(A) < 0.7, adv_cat[ad_adv], rng.integers(0, C, A))
    ad_cat[:C] = np.arange(C)  # every category has at least one ad
    ad_latent = _normalise(cat_center[ad_cat] + cfg.ad_spread * rng.standard_normal((A, d)) / np.sqrt(d) * 2)
    ad_quality = adv_quality[ad_adv] + rng.normal(0, cfg.quality_sigma, A)
    ad_cvr1_q = adv_cvr[ad_adv] + rng.normal(0, 0.3, A)
    ad_bid = np.round(adv_bid[ad_adv] * rng.lognormal(0.0, 0.4, A), 4)
    cat_price = rng.lognormal(3.0, 1.0, C)
    ad_price = np.round(cat_price[ad_cat] * rng.lognormal(0.0, 0.8, A) + 0.01, 2)
    # heavy-tailed creative age: lognormal body with a Pareto tail
    body = rng.lognormal(np.log(15.0), 1.0, A)
    tail = (rng.pareto(1.2, A) + 1.0) * 60.0
    ad_age0 = np.minimum(np.where(rng.random(A) < 0.85, body, tail), 3_000).astype(np.int64)
    d2 = cfg.conv2_dim
    proj2 = rng.standard_normal((d2, d)) / np.sqrt(d)
    ad_v2 = _normalise(0.5 * _normalise(ad_latent @ proj2.T) + 0.85 * _normalise(rng.standard_normal((A, d2))))
    ext_proj = rng.standard_normal((cfg.ext_dim, d)) / np.sqrt(d)
    ext_scale = cfg.ext_noise / np.sqrt(cfg.ext_dim)
    ad_ext = (ad_latent @ ext_proj.T + ext_scale * rng.standard_normal((A, cfg.ext_dim))).astype(f32)
    cat_ads = np.argsort(ad_cat, kind="stable")
    cat_count = np.bincount(ad_cat, minlength=C)
    cat_start = np.concatenate([[0], np.cumsum(cat_count)[:-1]])

    # ---- users ----
    age = rng.choice(N_AGE_BUCKETS, U, p=[0.08, 0.22, 0.25, 0.19, 0.13, 0.08, 0.05])
    gender = rng.choice(N_GENDERS, U, p=[0.1, 0.45, 0.45])
    tier = rng.choice(np.arange(1, N_CITY_TIERS + 1), U, p=[0.15, 0.25, 0.25, 0.2, 0.15])
    activity = rng.lognormal(0.0, cfg.activity_sigma, U)
    activity /= activity.mean()
    demo_cat = rng.normal(0, cfg.demo_sigma, (N_AGE_BUCKETS, N_GENDERS, C))
    user_bias = rng.normal(0, cfg.user_bias_sigma, U)
    # purchase propensity and price tolerance: richer (low tier) and middle-aged users buy more
    user_buy = rng.normal(0, 0.6, U) - 0.15 * (tier - 3) + 0.1 * np.minimum(age, 4)
    user_price_aff = rng.normal(0, 0.7, U) - 0.3 * (tier - 3)

    n_int = rng.integers(cfg.min_interests, cfg.max_interests + 1, U)
    # interest categories: popularity tilted by demographics (so age/gender carry signal)
    logits = np.log(cat_pop)[None, :] + 2.0 * demo_cat[age, gender]  # (U, C)
    p = _softmax(logits)
    g = -np.log(-np.log(rng.random((U, C))))  # Gumbel top-K = sampling without replacement
    int_cat = np.argsort(-(np.log(p) + g), axis=1)[:, :K]
    slot = np.arange(K)[None, :]
    alpha = np.where(slot < n_int[:, None], 1.0, 0.0)
    raw_w = rng.gamma(np.full((U, K), 1.0)) * alpha
    w = raw_w / raw_w.sum(axis=1, keepdims=True)
    with np.errstate(divide="ignore"):
        logw = np.log(w)
    spread = cfg.interest_spread * 2 / np.sqrt(d)
    x = _normalise(cat_center[int_cat] + spread * rng.standard_normal((U, K, d)))
    interests = np.empty((cfg.days, U, K, d), dtype=f32)
    interest_cat = np.empty((cfg.days, U, K), dtype=np.int64)
    interests[0], interest_cat[0] = x, int_cat
    anchor = x.copy()  # the walk reverts to each interest's anchor, so affinities stay stationary
    kappa = cfg.drift_reversion
    dominant = cat_center[int_cat[np.arange(U), np.argmax(w, axis=1)]]
    step = cfg.drift_sigma / np.sqrt(d)
    logp = np.log(p)
    for day in range(1, cfg.days):  # slow random walk on the sphere plus rare category switches
        x = _normalise((1 - kappa) * x + kappa * anchor + step * rng.standard_normal((U, K, d)))
        switch = rng.random((U, K)) < cfg.interest_switch_prob
        su, sk = np.nonzero(switch)
        if len(su):
            new_cat = np.argmax(logp[su] - np.log(-np.log(rng.random((len(su), C)))), axis=1)
            int_cat = int_cat.copy()
            int_cat[su, sk] = new_cat
            anchor[su, sk] = _normalise(cat_center[new_cat] + spread * rng.standard_normal((len(su), d)))
            x[su, sk] = anchor[su, sk]
        interests[day], interest_cat[day] = x, int_cat
    user_v2 = _normalise(0.5 * _normalise(dominant @ proj2.T) + 0.85 * _normalise(rng.standard_normal((U, d2))))
    user_ext_noise = (ext_scale * rng.standard_normal((cfg.days, U, cfg.ext_dim))).astype(f32)

    hours = np.arange(24)
    hour_prob = 0.25 + np.exp(-0.5 * ((hours - 21) / 3.0) ** 2) + 0.6 * np.exp(-0.5 * ((hours - 12.5) / 2.0) ** 2)
    hour_prob[:6] *= 0.3
    hour_prob /= hour_prob.sum()
    hour_effect = 0.15 * np.cos((hours - 22) / 24 * 2 * np.pi)

    return World(
        cfg=cfg, cat_center=cat_center.astype(f32),
        ad_category=ad_cat.astype(np.int64), ad_advertiser=ad_adv.astype(np.int64),
        ad_latent=ad_latent.astype(f32), ad_quality=ad_quality, ad_cvr1_quality=ad_cvr1_q,
        ad_bid=ad_bid, ad_price=ad_price, ad_age0=ad_age0, ad_v2=ad_v2.astype(f32),
        ad_app=adv_app[ad_adv], ad_ext=ad_ext,
        cat_ads=cat_ads, cat_start=cat_start, cat_count=cat_count,
        user_age=age.astype(np.int64), user_gender=gender.astype(np.int64),
        user_city_tier=tier.astype(np.int64), user_activity=activity, user_bias=user_bias,
        user_buy=user_buy, user_price_aff=user_price_aff, user_v2=user_v2.astype(f32),
        interest_cat=interest_cat, interest_logw=logw.astype(f32), interests=interests,
        user_ext_noise=user_ext_noise, ext_proj=ext_proj.astype(f32), demo_cat=demo_cat,
        hour_effect=hour_effect, hour_prob=hour_prob,
    )
