"""Impression-log generation: requests, a serving policy, clicks, conversions, behaviour histories.

Pipeline (all numpy, vectorised over impressions; the only Python loops are over request chunks and
over ``step_s``-second time steps, never over impressions):

1. Requests: sizes uniform in [min_ads_per_request, max_ads_per_request]; user drawn proportionally
   to activity; day uniform, hour from a diurnal profile, second uniform. Sorted by time.
2. Serving policy: per request ``n_candidates`` ads (half from the user's interest categories, half
   uniform), scored by ``affinity_weight * affinity + policy_bid_weight * log(bid) + Gumbel noise``;
   the top ``size`` are shown in that order (slot position 1 = best).
3. Click logit =
       b0 + affinity_weight * affinity                       (soft-max over drifting interests)
          + recency                                          (decayed recent clicks, see below)
          - position_weight * log(position) + ad quality + user bias
          + demographics x category + hour effect + price/freshness effects (monotone, saturating)
          - fatigue_weight * log1p(prior exposures of this (user, ad) in fatigue_window_s).
   ``affinity = tau * log sum_k w_k exp(<interest_k(day), ad_latent> / tau)``.
   ``recency = recency_cat_weight * log1p(D_cat) + recency_latent_weight * tanh(<S, ad_latent>)`` where
   ``D_cat`` is the exponentially decayed (tau = recency_tau_s) count of the user's earlier clicks in
   the ad's category and ``S`` the decayed sum of the clicked ads' latents. Clicks feed back into
   later click probabilities, so this part runs as a loop over ``step_s`` time steps: the state seen
   by an impression contains the clicks of all earlier steps (a feature-pipeline lag of < step_s).
   ``b0`` is calibrated to ``target_ctr`` by a secant search over pilot runs on a random user subset.
4. Conversions, only after a click: pCVR1 (purchase) likes cheap ads (unless the user tolerates high
   prices), older established ads, high-propensity users, and penalises click-bait quality;
   pCVR2 (install) lives in its own latent subspace (``user_v2``, ``ad_v2``) plus the advertiser's
   app propensity. Intercepts calibrated to ``target_cvr1``/``target_cvr2`` (per click).
   Delays: lognormal per type (conv2 much longer); NaN when no conversion.
5. Histories: per impression, the user's ``hist_max_len`` most recent clicks strictly before its
   timestamp, as a CSR index into the log (oldest first).

Ground truth ``p_click``, ``p_conv1 = p_click * pCVR1``, ``p_conv2 = p_click * pCVR2`` is kept per row.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from untwine.sim.world import SimConfig, World, build_world

DAY_S = 86_400


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _solve_intercept(x: np.ndarray, target: float, weight: np.ndarray | None = None,
                     max_n: int = 400_000) -> float:
    """b such that the (weighted) mean of sigmoid(b + x) equals ``target`` (bisection)."""
    if len(x) > max_n:  # a deterministic thinning is plenty for one scalar
        sel = np.linspace(0, len(x) - 1, max_n).astype(np.int64)
        x = x[sel]
        weight = None if weight is None else weight[sel]
    wsum = len(x) if weight is None else weight.sum()
    lo, hi = -30.0, 30.0
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        p = _sigmoid(mid + x)
        m = (p.sum() if weight is None else (p * weight).sum()) / wsum
        lo, hi = (mid, hi) if m < target else (lo, mid)
    return 0.5 * (lo + hi)


@dataclass
class SimLog:
    """A simulated impression log: columns in time order plus diagnostics.

    ``columns`` holds 1-D arrays (and 2-D ``user_ext_vec``/``ad_ext_vec``); the behaviour history of
    row ``i`` is ``hist_rows[hist_ptr[i]:hist_ptr[i + 1]]`` (row indices of earlier clicks, oldest
    first). ``components`` holds the terms of the click logit and the conversion logits.
    """

    cfg: SimConfig
    columns: dict[str, np.ndarray]
    hist_ptr: np.ndarray
    hist_rows: np.ndarray
    components: dict[str, np.ndarray]
    intercepts: dict[str, float] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.columns["click"])


# ---------------------------------------------------------------- requests and serving policy


def _requests(cfg: SimConfig, world: World, rng: np.random.Generator):
    lo, hi = cfg.min_ads_per_request, cfg.max_ads_per_request
    est = cfg.n_impressions // lo + 1
    sizes = rng.integers(lo, hi + 1, est)
    cum = np.cumsum(sizes)
    n_req = int(np.searchsorted(cum, cfg.n_impressions)) + 1
    sizes = sizes[:n_req].copy()
    sizes[-1] -= cum[n_req - 1] - cfg.n_impressions
    users = rng.choice(cfg.n_users, n_req, p=world.user_activity / world.user_activity.sum())
    day = rng.integers(0, cfg.days, n_req)
    hour = rng.choice(24, n_req, p=world.hour_prob)
    ts = cfg.start_ts + day * DAY_S + hour * 3600 + rng.integers(0, 3600, n_req)
    order = np.argsort(ts, kind="stable")
    return sizes[order], users[order].astype(np.int64), ts[order].astype(np.int64)


def _affinity(interests: np.ndarray, logw: np.ndarray, ads_latent: np.ndarray, tau: float) -> np.ndarray:
    """tau * log sum_k w_k exp(<interest_k, ad>/tau) for interests (R,K,d), ads (R,C,d) -> (R,C)."""
    s = np.einsum("rkd,rcd->rck", interests, ads_latent) / tau + logw[:, None, :]
    m = s.max(axis=-1)
    return tau * (m + np.log(np.exp(s - m[..., None]).sum(axis=-1)))


def _serve(cfg: SimConfig, world: World, rng: np.random.Generator, sizes, users, ts, chunk: int = 8192):
    """Choose and order the ads of every request; returns per-impression arrays."""
    C, K, A = cfg.n_candidates, cfg.max_interests, cfg.n_ads
    n_int = C // 2
    day_r = (ts - cfg.start_ts) // DAY_S
    log_bid = np.log(world.ad_bid)
    w_int = np.exp(world.interest_logw.astype(np.float64))
    out_req, out_ad, out_pos, out_aff = [], [], [], []
    for s0 in range(0, len(sizes), chunk):
        sl = slice(s0, s0 + chunk)
        uu, dd, sz = users[sl], day_r[sl], sizes[sl]
        R = len(uu)
        cumw = np.cumsum(w_int[uu], axis=1)
        k = (rng.random((R, n_int))[:, :, None] > cumw[:, None, :]).sum(-1)
        k = np.minimum(k, K - 1)
        cat = world.interest_cat[dd[:, None], uu[:, None], k]
        pick = world.cat_start[cat] + (rng.random((R, n_int)) * world.cat_count[cat]).astype(np.int64)
        cand = np.concatenate([world.cat_ads[pick], rng.integers(0, A, (R, C - n_int))], axis=1)
        cand.sort(axis=1)
        dup = np.zeros(cand.shape, dtype=bool)
        dup[:, 1:] = cand[:, 1:] == cand[:, :-1]
        aff = _affinity(world.interests[dd, uu], world.interest_logw[uu], world.ad_latent[cand],
                        cfg.affinity_temperature)
        gumbel = -np.log(-np.log(rng.random((R, C))))
        score = cfg.affinity_weight * aff + cfg.policy_bid_weight * log_bid[cand] + cfg.policy_noise * gumbel
        score[dup] = -np.inf
        top = np.argsort(-score, axis=1, kind="stable")[:, : cfg.max_ads_per_request]
        keep = (np.arange(top.shape[1])[None, :] < sz[:, None]) & np.isfinite(
            np.take_along_axis(score, top, axis=1))
        rr = np.broadcast_to(np.arange(s0, s0 + R)[:, None], top.shape)
        out_req.append(rr[keep])
        out_ad.append(np.take_along_axis(cand, top, axis=1)[keep])
        out_pos.append(np.broadcast_to(np.arange(1, top.shape[1] + 1)[None, :], top.shape)[keep])
        out_aff.append(np.take_along_axis(aff, top, axis=1)[keep])
    return (np.concatenate(out_req), np.concatenate(out_ad), np.concatenate(out_pos).astype(np.int64),
            np.concatenate(out_aff).astype(np.float64))


# ---------------------------------------------------------------- exposure counts and histories


def _prior_exposures(user, ad, ts, n_ads: int, window: int) -> np.ndarray:
    """Number of strictly earlier impressions of the same (user, ad) within ``window`` seconds."""
    t = ts - ts.min()
    span = int(t.max()) + window + 1
    key = (user * n_ads + ad) * span + t
    sk = np.sort(key)
    return np.searchsorted(sk, key, "left") - np.searchsorted(sk, key - window, "left")


def _histories(user, ts, click, max_len: int) -> tuple[np.ndarray, np.ndarray]:
    """CSR (ptr, rows): each row's user's ``max_len`` latest clicks with timestamp < its own."""
    crow = np.flatnonzero(click)
    crow = crow[np.argsort(user[crow], kind="stable")]  # rows are time-sorted -> (user, ts) order
    t = ts - ts.min()
    span = int(t.max()) + 1
    ckey = user[crow] * span + t[crow]
    end = np.searchsorted(ckey, user * span + t, "left")  # strictly earlier clicks
    ustart = np.searchsorted(ckey, user * span, "left")
    begin = np.maximum(ustart, end - max_len)
    lens = end - begin
    ptr = np.zeros(len(user) + 1, dtype=np.int64)
    np.cumsum(lens, out=ptr[1:])
    idx = np.arange(ptr[-1], dtype=np.int64) - np.repeat(ptr[:-1] - begin, lens)
    return ptr, crow[idx]


# ---------------------------------------------------------------- behaviour feedback loop


def _click_pass(cfg: SimConfig, rows: np.ndarray, user, cat, ts, latent, static,
                u_click, b0: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Run the time-stepped click process over ``rows`` (time-sorted). Returns (recency, p, click)."""
    U, C = cfg.n_users, cfg.n_categories
    tau = cfg.recency_tau_s
    uu, cc, tt, lat = user[rows], cat[rows], ts[rows], latent[rows]
    x = static[rows] + b0
    ur = u_click[rows]
    dcat = np.zeros((U, C))  # sum over clicks of exp((t_i - t0)/tau)
    dlat = np.zeros((U, cfg.latent_dim))
    t0 = float(cfg.start_ts)
    rec = np.empty(len(rows))
    p = np.empty(len(rows))
    clk = np.zeros(len(rows), dtype=bool)
    step = (tt - cfg.start_ts) // cfg.step_s
    bounds = np.concatenate([[0], np.flatnonzero(np.diff(step)) + 1, [len(rows)]])
    for a, b in zip(bounds[:-1], bounds[1:]):
        if (tt[b - 1] - t0) / tau > 200:  # rebase the exponential scale to stay finite
            shift = float(tt[a])
            f = np.exp(-(shift - t0) / tau)
            dcat *= f
            dlat *= f
            t0 = shift
        u_s = uu[a:b]
        decay = np.exp(-(tt[a:b] - t0) / tau)
        d_c = dcat[u_s, cc[a:b]] * decay
        d_l = np.einsum("nd,nd->n", dlat[u_s], lat[a:b]) * decay
        r = cfg.recency_cat_weight * np.log1p(d_c) + cfg.recency_latent_weight * np.tanh(d_l)
        pr = _sigmoid(x[a:b] + r)
        k = ur[a:b] < pr
        rec[a:b], p[a:b], clk[a:b] = r, pr, k
        if k.any():
            w = np.exp((tt[a:b][k] - t0) / tau)
            np.add.at(dcat, (u_s[k], cc[a:b][k]), w)
            np.add.at(dlat, u_s[k], w[:, None] * lat[a:b][k])
    return rec, p, clk


def _calibrate_click(cfg: SimConfig, rng: np.random.Generator, user, cat, ts, latent, static,
                     u_click, pilot_rows_max: int = 250_000, max_iter: int = 6) -> float:
    """Intercept b0 with mean p_click ~= target_ctr, including the recency feedback.

    The mean CTR is monotone in b0; solve logit(mean p(b0)) = logit(target) by the secant method on
    pilot runs of the click process over a random subset of users (all users for small logs). Users
    only influence their own recency state, so a user subset is an unbiased pilot.
    """
    n = len(user)
    frac = min(1.0, pilot_rows_max / max(n, 1))
    rows = np.flatnonzero((rng.random(cfg.n_users) < frac)[user]) if frac < 1 else np.arange(n)
    if len(rows) == 0:
        return _solve_intercept(static, cfg.target_ctr)
    goal = np.log(cfg.target_ctr / (1 - cfg.target_ctr))

    def h(b: float) -> float:
        _, p, _ = _click_pass(cfg, rows, user, cat, ts, latent, static, u_click, b)
        m = float(np.clip(p.mean(), 1e-9, 1 - 1e-9))
        return np.log(m / (1 - m)) - goal

    b_prev = _solve_intercept(static[rows], cfg.target_ctr)  # ignores recency: CTR comes out high
    h_prev = h(b_prev)
    b = b_prev - h_prev
    for _ in range(max_iter):
        hb = h(b)
        if abs(hb) < 0.005:
            break
        slope = (hb - h_prev) / (b - b_prev) if b != b_prev else 1.0
        slope = slope if slope > 0.2 else 1.0
        b_prev, h_prev = b, hb
        b = b - hb / slope
    return b


# ---------------------------------------------------------------- main entry points


def run(cfg: SimConfig, world: World | None = None) -> SimLog:
    """Simulate the impression log described by ``cfg`` (deterministic given ``cfg.seed``)."""
    world = world if world is not None else build_world(cfg)
    ss = np.random.SeedSequence([cfg.seed, 2]).spawn(4)
    rng_req, rng_pol, rng_lab, rng_pilot = (np.random.default_rng(s) for s in ss)

    sizes, req_user, req_ts = _requests(cfg, world, rng_req)
    req, ad, pos, aff = _serve(cfg, world, rng_pol, sizes, req_user, req_ts)
    user, ts = req_user[req], req_ts[req]
    n = len(req)
    day = (ts - cfg.start_ts) // DAY_S
    hour = (ts // 3600) % 24
    weekday = ((ts // DAY_S) + 3) % 7  # Monday = 0
    cat = world.ad_category[ad]
    age_days = world.ad_age0[ad] + day
    price = world.ad_price[ad]

    # monotone, saturating numeric effects (standardised on the ad table)
    lp = np.log(world.ad_price)
    z_price = np.tanh((np.log(price) - lp.mean()) / lp.std())
    la = np.log1p(world.ad_age0 + cfg.days / 2)
    z_age = np.tanh((np.log1p(age_days) - la.mean()) / la.std())

    n_prior = _prior_exposures(user, ad, ts, cfg.n_ads, cfg.fatigue_window_s)
    comp = {
        "affinity": cfg.affinity_weight * aff,
        "position": -cfg.position_weight * np.log(pos),
        "quality": world.ad_quality[ad],
        "user_bias": world.user_bias[user],
        "demographic": world.demo_cat[world.user_age[user], world.user_gender[user], cat],
        "hour": world.hour_effect[hour],
        "price": 0.35 * z_price,
        "freshness": -0.3 * z_age,
        "fatigue": -cfg.fatigue_weight * np.log1p(n_prior),
    }
    static = np.sum(list(comp.values()), axis=0)
    latent = world.ad_latent[ad]
    u_click = rng_lab.random(n)

    # calibrate b0 on pilot users: the recency feedback raises the CTR above the static solution
    b0 = _calibrate_click(cfg, rng_pilot, user, cat, ts, latent, static, u_click)
    rec, p_click, click = _click_pass(cfg, np.arange(n), user, cat, ts, latent, static, u_click, b0)
    comp["recency"] = rec
    comp["intercept"] = np.full(n, b0)
    click_logit = static + rec + b0

    # conversions: drivers partly opposed to the click driver
    x1 = (world.user_buy[user] + 0.4 * world.user_price_aff[user]
          + (-0.9 + 0.6 * world.user_price_aff[user]) * z_price + 0.4 * z_age
          + 0.5 * aff + world.ad_cvr1_quality[ad] - 0.5 * world.ad_quality[ad])
    v2 = np.einsum("nd,nd->n", world.user_v2[user], world.ad_v2[ad])
    x2 = 3.0 * v2 + 0.8 * world.ad_app[ad] - 0.25 * (world.user_age[user] - 2) + 0.2 * aff
    c1 = _solve_intercept(x1, cfg.target_cvr1, weight=p_click)
    c2 = _solve_intercept(x2, cfg.target_cvr2, weight=p_click)
    cvr1_logit, cvr2_logit = x1 + c1, x2 + c2
    pcvr1, pcvr2 = _sigmoid(cvr1_logit), _sigmoid(cvr2_logit)
    conv1 = click & (rng_lab.random(n) < pcvr1)
    conv2 = click & (rng_lab.random(n) < pcvr2)
    d1 = cfg.conv1_delay_median_s * np.exp(cfg.conv1_delay_sigma * rng_lab.standard_normal(n))
    d2 = cfg.conv2_delay_median_s * np.exp(cfg.conv2_delay_sigma * rng_lab.standard_normal(n))
    comp.update(click_logit=click_logit, cvr1_logit=cvr1_logit, cvr2_logit=cvr2_logit)

    hist_ptr, hist_rows = _histories(user, ts, click, cfg.hist_max_len)

    # external vectors: the user's is refreshed daily from that day's interests
    uday = np.unique(day * cfg.n_users + user)
    ud, uu = uday // cfg.n_users, uday % cfg.n_users
    ext_tab = world.user_ext(ud, uu)
    user_ext = ext_tab[np.searchsorted(uday, day * cfg.n_users + user)]

    columns = {
        "request_id": req.astype(np.int64),
        "impression_ts": ts,
        "user_id": user,
        "age": world.user_age[user],
        "gender": world.user_gender[user],
        "city_tier": world.user_city_tier[user],
        "user_activity": np.round(world.user_activity[user], 4),
        "ad_id": ad.astype(np.int64),
        "category": cat,
        "advertiser": world.ad_advertiser[ad],
        "price": price,
        "age_days": age_days.astype(np.int64),
        "bid": world.ad_bid[ad],
        "hour": hour.astype(np.int64),
        "weekday": weekday.astype(np.int64),
        "position": pos,
        "n_prior_exposures": n_prior.astype(np.int64),
        "user_ext_vec": user_ext,
        "ad_ext_vec": world.ad_ext[ad],
        "click": click.astype(np.int8),
        "conv1": conv1.astype(np.int8),
        "conv2": conv2.astype(np.int8),
        "conv1_delay_s": np.where(conv1, np.round(d1, 1), np.nan),
        "conv2_delay_s": np.where(conv2, np.round(d2, 1), np.nan),
        "p_click": p_click,
        "p_conv1": p_click * pcvr1,
        "p_conv2": p_click * pcvr2,
    }
    return SimLog(cfg=cfg, columns=columns, hist_ptr=hist_ptr, hist_rows=hist_rows, components=comp,
                  intercepts={"click": b0, "cvr1": c1, "cvr2": c2})


def _joined(values: np.ndarray, ptr: np.ndarray) -> pa.Array:
    """'|'-joined strings of ``values[ptr[i]:ptr[i+1]]`` per row (empty string when empty)."""
    strings = pc.cast(pa.array(values), pa.string())
    lists = pa.ListArray.from_arrays(pa.array(ptr, pa.int64()), strings)
    return pc.binary_join(lists, "|")


def to_table(log: SimLog, rows: np.ndarray | slice | None = None) -> pa.Table:
    """The log (or a row subset) as an arrow table; histories as '|'-joined strings."""
    cols = log.columns
    n = len(log)
    sel = np.arange(n) if rows is None else np.arange(n)[rows]
    contiguous = len(sel) == 0 or (sel[-1] - sel[0] + 1 == len(sel) and np.all(np.diff(sel) == 1))
    if contiguous:
        a = int(sel[0]) if len(sel) else 0
        b = a + len(sel)
        ptr = log.hist_ptr[a: b + 1] - log.hist_ptr[a]
        hrows = log.hist_rows[log.hist_ptr[a]: log.hist_ptr[b]]
        take = slice(a, b)
    else:
        lens = log.hist_ptr[sel + 1] - log.hist_ptr[sel]
        ptr = np.zeros(len(sel) + 1, dtype=np.int64)
        np.cumsum(lens, out=ptr[1:])
        idx = np.arange(ptr[-1]) - np.repeat(ptr[:-1] - log.hist_ptr[sel], lens)
        hrows = log.hist_rows[idx]
        take = sel
    out: dict[str, pa.Array] = {}
    for name, arr in cols.items():
        v = arr[take]
        if v.ndim == 2:
            flat = pa.array(np.ascontiguousarray(v, dtype=np.float32).reshape(-1))
            out[name] = pa.FixedSizeListArray.from_arrays(flat, v.shape[1])
        else:
            out[name] = pa.array(v)
        if name == "ad_id":
            out["hist_ad_id"] = _joined(cols["ad_id"][hrows], ptr)
            out["hist_category"] = _joined(cols["category"][hrows], ptr)
            out["hist_ts"] = _joined(cols["impression_ts"][hrows], ptr)
    return pa.table(out)


def simulate(cfg: SimConfig) -> pa.Table:
    """Simulate and return the whole log as one arrow table (time order)."""
    return to_table(run(cfg))
