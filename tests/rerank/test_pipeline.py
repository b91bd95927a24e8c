"""The composed re-rank stage: diversity order first, rules fill the slots from it."""
import numpy as np
import pytest
from pydantic import ValidationError

from untwine.rerank.dpp import DPPConfig, dpp_greedy
from untwine.rerank.mmr import mmr
from untwine.rerank.pipeline import RerankConfig, rerank
from untwine.rerank.rules import RuleConfig, apply_rules


def candidates(seed: int, n: int = 40):
    rng = np.random.default_rng(seed)
    return dict(relevance=rng.normal(size=n), embeddings=rng.normal(size=(n, 6)),
                category=rng.integers(0, 3, size=n), promoted=rng.random(n) < 0.3, item_type=rng.integers(0, 3, n))


def test_config_from_yaml_like_dict():
    config = RerankConfig.model_validate({"k": 8, "rules": {"max_consecutive_same_category": 2},
                                          "diversity": {"method": "dpp", "theta": 0.7, "window": 4}})
    assert config.diversity == DPPConfig(theta=0.7, window=4)
    with pytest.raises(ValidationError):
        RerankConfig.model_validate({"diversity": {"method": "dpp", "lam": 0.5}})  # an MMR key under dpp
    with pytest.raises(ValidationError):
        RerankConfig.model_validate({"diversity": {"method": "xquad"}})


def test_rules_fill_from_the_mmr_order():
    c = candidates(0)
    config = RerankConfig(k=10, rules=RuleConfig(max_consecutive_same_category=2))
    result = rerank(c["relevance"], config, embeddings=c["embeddings"], category=c["category"],
                    promoted=c["promoted"])
    order = mmr(c["relevance"], 40, embeddings=c["embeddings"])
    assert result.diversified.tolist() == order.tolist()
    expected = apply_rules(order, c["category"], c["promoted"], 10, config.rules)
    assert result.items.tolist() == expected.items.tolist()


def test_dpp_stop_is_followed_by_the_relevance_tail():
    c = candidates(1)
    config = RerankConfig(k=12, rules=None, diversity=DPPConfig(theta=0.5))
    result = rerank(c["relevance"], config, embeddings=c["embeddings"])
    head = dpp_greedy(c["relevance"], 40, embeddings=c["embeddings"], theta=0.5)
    assert len(head) == 6  # rank of the 6-d embeddings
    tail = [i for i in np.argsort(-c["relevance"], kind="stable") if i not in set(head.tolist())]
    assert result.items.tolist() == (head.tolist() + tail)[:12]
    assert sorted(result.diversified.tolist()) == list(range(40))


def test_no_diversity_no_rules_is_the_relevance_order():
    c = candidates(2)
    result = rerank(c["relevance"], RerankConfig(k=5, rules=None, diversity=None))
    assert result.items.tolist() == np.argsort(-c["relevance"])[:5].tolist()
