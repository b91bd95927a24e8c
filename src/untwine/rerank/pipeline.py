"""The re-rank stage from one config: a diversity method orders the candidates, the rules fill the slots.

    1. diversity (``mmr``, ``dpp`` or none) orders the first ``depth`` candidates (all when None);
       the candidates it did not order (beyond ``depth``, or left out by a DPP that stopped on a
       rank-deficient kernel) follow in relevance order, so the rules still have something to fill with;
    2. ``apply_rules`` takes the first feasible candidates of that order for the ``k`` slots.

The rules come last on purpose: they are hard constraints of the displayed list, and a diversity
method run after them would move items and break them (e.g. bring two promoted items together).
Running the rules on the diversified order keeps both: the rules only delay items, never reorder
the others.

Example YAML::

    k: 20
    depth: 100
    rules: {max_consecutive_same_category: 3, banned_first_types: [2]}
    diversity: {method: dpp, theta: 0.7, window: 8}
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike
from pydantic import BaseModel, ConfigDict, Field

from untwine.rerank._inputs import relevance_vector
from untwine.rerank.dpp import DPPConfig, dpp_greedy
from untwine.rerank.mmr import MMRConfig, mmr
from untwine.rerank.rules import RuleConfig, RuleResult, apply_rules

__all__ = ["RerankConfig", "RerankResult", "rerank"]


class RerankConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    k: int = Field(10, ge=0)
    depth: int | None = Field(None, ge=1)  # how many candidates the diversity method orders; None = all
    rules: RuleConfig | None = RuleConfig()
    diversity: MMRConfig | DPPConfig | None = Field(default_factory=MMRConfig, discriminator="method")


@dataclass(frozen=True)
class RerankResult:
    items: np.ndarray  # indices into the candidate arrays, in slot order
    diversified: np.ndarray  # the order the rules filled from
    rules: RuleResult | None  # None when no rules are configured


def rerank(relevance: ArrayLike, config: RerankConfig = RerankConfig(), *,
           embeddings: ArrayLike | None = None, similarity: ArrayLike | None = None,
           category: ArrayLike | None = None, promoted: ArrayLike | None = None,
           item_type: ArrayLike | None = None) -> RerankResult:
    """Re-rank N candidates (per-item arrays, any order) into ``config.k`` slots."""
    rel = relevance_vector(relevance)
    order = _diversified_order(rel, config, embeddings, similarity)
    if config.rules is None:
        return RerankResult(items=order[: config.k], diversified=order, rules=None)
    result = apply_rules(order, category, promoted, config.k, config.rules, item_type=item_type)
    return RerankResult(items=result.items, diversified=order, rules=result)


def _diversified_order(rel: np.ndarray, config: RerankConfig, embeddings: ArrayLike | None,
                       similarity: ArrayLike | None) -> np.ndarray:
    by_relevance = np.argsort(-rel, kind="stable")
    method = config.diversity
    if method is None:
        return by_relevance
    depth = len(rel) if config.depth is None else min(config.depth, len(rel))
    options = method.model_dump(exclude={"method"})
    select = mmr if isinstance(method, MMRConfig) else dpp_greedy
    head = select(rel, depth, embeddings=embeddings, similarity=similarity, **options)
    tail = by_relevance[~np.isin(by_relevance, head)]
    return np.concatenate([head, tail]).astype(np.int64)
