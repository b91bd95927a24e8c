"""Serving policies: pick one of C candidates per request to maximise eCPM = bid x pCTR (SPEC 5, 003:2854-2887).

Score-based policies read K probability draws per (request, candidate), ``draws`` (K, R, C), from a
PredictiveModel: ``greedy`` ranks by the mean, ``epsilon_greedy`` serves a uniform candidate with
probability epsilon, ``ucb`` ranks by bid x (mean + c x std), ``thompson`` by one draw per request (the
same member for all of the request's candidates). ``LinUCB`` keeps its own disjoint ridge regression
per ad on a context vector (Li et al., WWW 2010) and ranks by bid x (theta_a . x + alpha sqrt(x' A_a^-1 x)).
"""
from __future__ import annotations

import numpy as np


def greedy(bids: np.ndarray, draws: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return np.argmax(bids * draws.mean(axis=0), axis=1)


def epsilon_greedy(epsilon: float):
    def choose(bids, draws, rng):
        pick = greedy(bids, draws, rng)
        explore = rng.random(len(pick)) < epsilon
        pick[explore] = rng.integers(0, bids.shape[1], int(explore.sum()))
        return pick
    return choose


def ucb(c: float):
    def choose(bids, draws, rng):
        return np.argmax(bids * (draws.mean(axis=0) + c * draws.std(axis=0)), axis=1)
    return choose


def thompson(bids: np.ndarray, draws: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    k = rng.integers(0, draws.shape[0], draws.shape[1])
    return np.argmax(bids * draws[k, np.arange(draws.shape[1])], axis=1)


def random_policy(bids: np.ndarray, draws: np.ndarray | None, rng: np.random.Generator) -> np.ndarray:
    return rng.integers(0, bids.shape[1], bids.shape[0])


class LinUCB:
    """Disjoint LinUCB: per ad a, A_a = I + sum x x', b_a = sum r x; A_a^-1 kept by Sherman-Morrison."""

    def __init__(self, n_ads: int, dim: int, alpha: float = 1.0) -> None:
        self.alpha = alpha
        self.a_inv = np.broadcast_to(np.eye(dim), (n_ads, dim, dim)).copy()
        self.b = np.zeros((n_ads, dim))

    def scores(self, ctx: np.ndarray, cand: np.ndarray, chunk: int = 128) -> np.ndarray:
        """(R, C) upper confidence bounds of the click rate for contexts (R, d) and candidate ads (R, C)."""
        out = np.empty(cand.shape)
        for s in range(0, len(cand), chunk):  # (chunk, C, d, d) at a time keeps memory bounded
            c, x = cand[s:s + chunk], ctx[s:s + chunk]
            a_inv = self.a_inv[c]
            theta = np.einsum("rcij,rcj->rci", a_inv, self.b[c])
            width = np.sqrt(np.maximum(np.einsum("ri,rcij,rj->rc", x, a_inv, x), 0.0))
            out[s:s + chunk] = np.einsum("rci,ri->rc", theta, x) + self.alpha * width
        return out

    def choose(self, bids: np.ndarray, ctx: np.ndarray, cand: np.ndarray) -> np.ndarray:
        return np.argmax(bids * self.scores(ctx, cand), axis=1)

    def update(self, ctx: np.ndarray, ads: np.ndarray, rewards: np.ndarray) -> None:
        for x, a, r in zip(ctx, ads, rewards):
            ai = self.a_inv[a]
            v = ai @ x
            self.a_inv[a] = ai - np.outer(v, v) / (1.0 + x @ v)
            self.b[a] += r * x
