"""Business rules: one hand-made list per rule, rules combined, the fallback, and a brute-force window
checker plus a pure-Python greedy reference on random inputs."""
import numpy as np
import pytest
from pydantic import ValidationError

from untwine.rerank.rules import RULE_NAMES, RuleConfig, apply_rules

ONLY_CATEGORY = RuleConfig(max_promoted_per_window=None)
ONLY_PROMOTED = RuleConfig(max_consecutive_same_category=None)
ONLY_BANNED = RuleConfig(max_consecutive_same_category=None, max_promoted_per_window=None,
                         banned_first_types=frozenset({1}))


def test_sixth_item_of_a_category_run_is_pushed_down():
    category = [0, 0, 0, 0, 0, 0, 1, 1]
    result = apply_rules(np.arange(8), category, None, 8, ONLY_CATEGORY)
    assert result.positions.tolist() == [0, 1, 2, 3, 4, 6, 5, 7]
    assert result.relaxations == ()


def test_second_promoted_item_waits_nine_slots():
    promoted = np.zeros(12, dtype=bool)
    promoted[[0, 2]] = True
    result = apply_rules(np.arange(12), None, promoted, 12, ONLY_PROMOTED)
    assert result.positions.tolist() == [0, 1, 3, 4, 5, 6, 7, 8, 9, 2, 10, 11]
    slots = np.flatnonzero(promoted[result.items])
    assert slots.tolist() == [0, 9]  # slot >= first + 9


def test_banned_type_leaves_slot_one():
    result = apply_rules(np.arange(3), None, None, 3, ONLY_BANNED, item_type=[1, 1, 0])
    assert result.positions.tolist() == [2, 0, 1]


def test_ranked_indexes_the_item_arrays():
    # candidates 5, 3, 1 in that rank order; item 5 has the banned type
    item_type = np.array([0, 0, 0, 0, 0, 1])
    result = apply_rules([5, 3, 1], None, None, 3, ONLY_BANNED, item_type=item_type)
    assert result.positions.tolist() == [1, 0, 2]
    assert result.items.tolist() == [3, 5, 1]


def test_rules_combined():
    # ranks 0-5 are category 0 (0, 1 promoted, 0 of the banned type), ranks 6-8 category 1 (8 promoted)
    config = RuleConfig(max_consecutive_same_category=2, max_promoted_per_window=1, promoted_window=3,
                        banned_first_types=frozenset({7}))
    category = [0, 0, 0, 0, 0, 0, 1, 1, 1]
    promoted = [1, 1, 0, 0, 0, 0, 0, 0, 1]
    item_type = [7, 0, 0, 0, 0, 0, 0, 0, 0]
    result = apply_rules(np.arange(9), category, promoted, 9, config, item_type=item_type)
    # slot 0: item 0 is banned there, item 1 (promoted) is fine;  slot 1: item 0 is promoted -> item 2;
    # slot 2: run of two 0s -> item 6;  slot 3: item 0 (promoted, the window slots 1..3 has none) ;
    # slot 4: item 3;  slot 5: run of two 0s -> item 7 (category 1);  slots 6, 7: items 4, 5 (a new run
    # of 0s);  slot 8: item 8 (promoted; the window slots 6..8 has no other)
    assert result.positions.tolist() == [1, 2, 6, 0, 3, 7, 4, 5, 8]
    assert result.relaxations == ()
    assert_rules_hold(result.items, np.asarray(category), np.asarray(promoted, bool), np.asarray(item_type),
                      config, relaxed={})


def test_fallback_relaxes_in_order_and_records_it():
    promoted = np.ones(3, dtype=bool)  # only promoted candidates left after the first slot
    relaxed = apply_rules(np.arange(3), [0, 1, 2], promoted, 3, RuleConfig())
    assert relaxed.positions.tolist() == [0, 1, 2]
    assert [(r.slot, r.rules) for r in relaxed.relaxations] == [
        (1, ("max_promoted_per_window",)), (2, ("max_promoted_per_window",))]
    assert relaxed.relaxed_rules == {"max_promoted_per_window"}

    stopped = apply_rules(np.arange(3), [0, 1, 2], promoted, 3, RuleConfig(relax_order=()))
    assert stopped.positions.tolist() == [0] and stopped.n_filled == 1


def test_fallback_gives_up_the_category_run_before_the_promoted_spacing():
    # after 0, 0 only a promoted item of a new category or an organic item of category 0 remain
    config = RuleConfig(max_consecutive_same_category=2)
    category, promoted = [0, 0, 0, 1], [True, False, False, True]
    result = apply_rules(np.arange(4), category, promoted, 4, config)
    # slot 2: item 2 breaks the run, item 3 the spacing: the run is relaxed first -> item 2
    assert result.positions.tolist() == [0, 1, 2, 3]
    assert [(r.slot, r.rules) for r in result.relaxations] == [
        (2, ("max_consecutive_same_category",)), (3, ("max_promoted_per_window",))]
    # with the spacing given up first, item 3 comes before item 2
    spacing_first = config.model_copy(update={"relax_order": ("max_promoted_per_window",)})
    result = apply_rules(np.arange(4), category, promoted, 4, spacing_first)
    assert result.positions.tolist() == [0, 1, 3, 2]


def test_hard_rule_that_cannot_be_met_stops_the_fill():
    config = RuleConfig(max_consecutive_same_category=None, max_promoted_per_window=None,
                        banned_first_types=frozenset({1}), relax_order=())
    result = apply_rules(np.arange(2), None, None, 2, config, item_type=[1, 1])
    assert result.n_filled == 0


def test_config_is_frozen_and_strict():
    with pytest.raises(ValidationError):
        RuleConfig(max_consecutive=3)
    with pytest.raises(ValidationError):
        RuleConfig(relax_order=("banned_first_types", "banned_first_types"))
    with pytest.raises(ValidationError):
        RuleConfig().max_promoted_per_window = 2
    with pytest.raises(ValueError):  # an enabled rule without its data
        apply_rules(np.arange(3), None, None, 3, RuleConfig())


# ---- random inputs: a brute-force checker of every window and a pure-Python greedy reference

def rules_broken_at(slot, items, category, promoted, item_type, config) -> set[str]:
    """Rules broken by the windows of the output that end at ``slot``, from plain slicing."""
    broken = set()
    m = config.max_consecutive_same_category
    if m is not None and slot >= m and len({int(category[i]) for i in items[slot - m: slot + 1]}) == 1:
        broken.add("max_consecutive_same_category")
    p = config.max_promoted_per_window
    start = max(0, slot - config.promoted_window + 1)
    if p is not None and sum(bool(promoted[i]) for i in items[start: slot + 1]) > p:
        broken.add("max_promoted_per_window")
    if slot == 0 and config.banned_first_types and int(item_type[items[0]]) in config.banned_first_types:
        broken.add("banned_first_types")
    return broken


def assert_rules_hold(items, category, promoted, item_type, config, relaxed: dict[int, tuple]):
    for slot in range(len(items)):
        broken = rules_broken_at(slot, items, category, promoted, item_type, config)
        assert broken <= set(relaxed.get(slot, ())), f"slot {slot} breaks {broken}, relaxed {relaxed}"


def reference_greedy(category, promoted, item_type, k, config) -> list[int]:
    """Slot by slot: the first remaining item breaking no rule, else relax ``relax_order`` prefixes."""
    chosen: list[int] = []
    for _ in range(min(k, len(category))):
        rest = [i for i in range(len(category)) if i not in chosen]
        broken = {i: rules_broken_at(len(chosen), chosen + [i], category, promoted, item_type, config)
                  for i in rest}
        pick = None
        for n_relaxed in range(len(config.relax_order) + 1):
            allowed = set(config.relax_order[:n_relaxed])
            pick = next((i for i in rest if broken[i] <= allowed), None)
            if pick is not None:
                break
        if pick is None:
            break
        chosen.append(pick)
    return chosen


@pytest.mark.parametrize("seed", range(30))
def test_random_lists_respect_every_window(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(5, 40))
    category = rng.integers(0, int(rng.integers(1, 4)), size=n)  # few categories: long runs
    promoted = rng.random(n) < rng.uniform(0.1, 0.6)
    item_type = rng.integers(0, 3, size=n)
    config = RuleConfig(max_consecutive_same_category=int(rng.integers(1, 4)),
                        max_promoted_per_window=int(rng.integers(0, 3)), promoted_window=int(rng.integers(2, 10)),
                        banned_first_types=frozenset({0, 1}) if seed % 2 else None,
                        relax_order=RULE_NAMES if seed % 3 else ())
    k = int(rng.integers(1, n + 1))
    result = apply_rules(np.arange(n), category, promoted, k, config, item_type=item_type)
    assert len(set(result.items.tolist())) == result.n_filled
    relaxed = {r.slot: r.rules for r in result.relaxations}
    assert_rules_hold(result.items, category, promoted, item_type, config, relaxed)
    if not config.relax_order:
        assert relaxed == {}
    else:
        assert result.n_filled == k  # every rule may be relaxed: the fill never stops early
    assert result.positions.tolist() == reference_greedy(category, promoted, item_type, k, config)
