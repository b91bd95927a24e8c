"""Business rules of the final list, applied by a greedy fill of the slots.

Rules (``RuleConfig``; ``None`` disables a rule):

* ``max_consecutive_same_category = m``: no run of more than ``m`` consecutive slots of one category;
* ``max_promoted_per_window = p`` with ``promoted_window = w``: every ``w`` consecutive slots hold at
  most ``p`` promoted items (with p = 1, w = 9: after a promoted item in slot s the next one comes at
  slot s + 9 or later);
* ``banned_first_types``: no item whose ``item_type`` is in the set goes to slot 1 (index 0).

Greedy fill. Slot by slot, take the highest-ranked remaining candidate that breaks no rule given the
slots already filled. Every window of slots is checked when its last slot is filled, so the output
satisfies the rules everywhere (except where a fallback is recorded). The greedy does not look ahead:
it can run out of feasible candidates where a cleverer order would not, hence the fallback.

Fallback. When no remaining candidate breaks no rule, rules are relaxed in ``relax_order`` (first
listed = first given up): the smallest prefix of ``relax_order`` that lets some candidate in is
dropped for this slot only, the highest-ranked candidate that breaks only dropped rules is taken, and
the rules it actually breaks are recorded in ``RuleResult.relaxations``. Rules absent from
``relax_order`` are never relaxed; when even the whole order does not help, filling stops early
(``relax_order=()`` means: always stop rather than break a rule). The default gives up the category
run first (a soft diversity wish), then the promoted spacing (ad load), and keeps the slot-1 ban last
(typically a policy).

Cost: O(K N) with numpy masks over the remaining candidates.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, NamedTuple

import numpy as np
from numpy.typing import ArrayLike
from pydantic import BaseModel, ConfigDict, Field, model_validator

__all__ = ["RULE_NAMES", "Relaxation", "RuleConfig", "RuleName", "RuleResult", "apply_rules"]

RuleName = Literal["max_consecutive_same_category", "max_promoted_per_window", "banned_first_types"]
RULE_NAMES: tuple[RuleName, ...] = ("max_consecutive_same_category", "max_promoted_per_window",
                                    "banned_first_types")


class RuleConfig(BaseModel):
    """The rules of the re-ranked list; ``None`` (or an empty set of types) disables a rule."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    max_consecutive_same_category: int | None = Field(5, ge=1)
    max_promoted_per_window: int | None = Field(1, ge=0)
    promoted_window: int = Field(9, ge=1)
    banned_first_types: frozenset[int] | None = None
    relax_order: tuple[RuleName, ...] = RULE_NAMES

    @model_validator(mode="after")
    def _distinct_relax_order(self) -> "RuleConfig":
        if len(set(self.relax_order)) != len(self.relax_order):
            raise ValueError(f"relax_order names a rule twice: {self.relax_order}")
        return self

    def enabled(self) -> tuple[RuleName, ...]:
        on = {"max_consecutive_same_category": self.max_consecutive_same_category is not None,
              "max_promoted_per_window": self.max_promoted_per_window is not None,
              "banned_first_types": bool(self.banned_first_types)}
        return tuple(name for name in RULE_NAMES if on[name])


class Relaxation(NamedTuple):
    """Slot (0-based) filled by breaking ``rules``."""

    slot: int
    rules: tuple[RuleName, ...]


@dataclass(frozen=True)
class RuleResult:
    positions: np.ndarray  # into ``ranked``, in slot order
    items: np.ndarray  # ``ranked[positions]``
    relaxations: tuple[Relaxation, ...]

    @property
    def n_filled(self) -> int:
        return len(self.positions)

    @property
    def relaxed_rules(self) -> frozenset[str]:
        return frozenset(rule for r in self.relaxations for rule in r.rules)


def apply_rules(ranked: ArrayLike, category: ArrayLike | None, promoted: ArrayLike | None, k: int,
                config: RuleConfig = RuleConfig(), *, item_type: ArrayLike | None = None) -> RuleResult:
    """Fill up to ``k`` slots from ``ranked`` under ``config``'s rules.

    ``ranked`` holds distinct indices into the per-item arrays ``category`` (int), ``promoted`` (bool)
    and ``item_type`` (int), best first. An array may be None when its rule is disabled.
    """
    order = _as_index_array(ranked)
    if k < 0:
        raise ValueError(f"k must be >= 0, got {k}")
    per_position = _per_position_arrays(order, config, category, promoted, item_type)
    state = _FillState(config)
    available = np.ones(len(order), dtype=bool)
    relaxations: list[Relaxation] = []
    for slot in range(min(k, len(order))):
        violations = state.violations(slot, per_position)
        pick = _pick(available, violations, config.relax_order)
        if pick is None:
            break
        position, broken = pick
        if broken:
            relaxations.append(Relaxation(slot, broken))
        available[position] = False
        state.place(position, per_position)
    positions = np.asarray(state.positions, dtype=np.int64)
    return RuleResult(positions=positions, items=order[positions], relaxations=tuple(relaxations))


def _as_index_array(ranked: ArrayLike) -> np.ndarray:
    order = np.asarray(ranked)
    if order.ndim != 1 or (order.size and not np.issubdtype(order.dtype, np.integer)):
        raise ValueError(f"ranked must be a 1-D integer array, got dtype {order.dtype}, shape {order.shape}")
    if len(np.unique(order)) != len(order):
        raise ValueError("ranked lists an item twice")
    return order.astype(np.int64)


def _per_position_arrays(order: np.ndarray, config: RuleConfig, category: ArrayLike | None,
                         promoted: ArrayLike | None, item_type: ArrayLike | None) -> dict[str, np.ndarray]:
    """The item attributes each enabled rule needs, reordered to positions of ``ranked``."""
    needed = {"max_consecutive_same_category": ("category", category),
              "max_promoted_per_window": ("promoted", promoted),
              "banned_first_types": ("item_type", item_type)}
    arrays: dict[str, np.ndarray] = {}
    for rule in config.enabled():
        name, values = needed[rule]
        if values is None:
            raise ValueError(f"rule {rule} is enabled but {name} was not given")
        values = np.asarray(values)
        if values.ndim != 1 or (order.size and order.max() >= len(values)) or (order.size and order.min() < 0):
            raise ValueError(f"{name} must be 1-D and cover every index of ranked, got shape {values.shape}")
        arrays[name] = values[order]
    if "promoted" in arrays:
        arrays["promoted"] = arrays["promoted"].astype(bool)
    return arrays


class _FillState:
    """What the rules need to know about the slots filled so far."""

    def __init__(self, config: RuleConfig) -> None:
        self.config = config
        self.positions: list[int] = []
        self.promoted_slots: list[bool] = []
        self.last_category: int | None = None
        self.run_length = 0

    def place(self, position: int, per_position: dict[str, np.ndarray]) -> None:
        self.positions.append(position)
        if "promoted" in per_position:
            self.promoted_slots.append(bool(per_position["promoted"][position]))
        if "category" in per_position:
            category = int(per_position["category"][position])
            self.run_length = self.run_length + 1 if category == self.last_category else 1
            self.last_category = category

    def violations(self, slot: int, per_position: dict[str, np.ndarray]) -> dict[RuleName, np.ndarray]:
        """For each rule that can bind at ``slot``: which positions would break it there."""
        cfg, found = self.config, {}
        if "category" in per_position and self.run_length >= cfg.max_consecutive_same_category:
            found["max_consecutive_same_category"] = per_position["category"] == self.last_category
        if "promoted" in per_position:
            # the only new window is the one ending at `slot`: the w - 1 slots before it plus itself
            recent = self.promoted_slots[max(0, slot - cfg.promoted_window + 1):]
            if sum(recent) >= cfg.max_promoted_per_window:
                found["max_promoted_per_window"] = per_position["promoted"]
        if "item_type" in per_position and slot == 0:
            found["banned_first_types"] = np.isin(per_position["item_type"], list(cfg.banned_first_types))
        return found


def _pick(available: np.ndarray, violations: dict[RuleName, np.ndarray],
          relax_order: tuple[RuleName, ...]) -> tuple[int, tuple[RuleName, ...]] | None:
    """Highest-ranked candidate breaking no kept rule, relaxing prefixes of ``relax_order`` as needed."""
    for n_relaxed in range(len(relax_order) + 1):
        dropped = set(relax_order[:n_relaxed])
        if n_relaxed and relax_order[n_relaxed - 1] not in violations:
            continue  # dropping a rule that does not bind here changes nothing
        feasible = available.copy()
        for rule, breaks in violations.items():
            if rule not in dropped:
                feasible &= ~breaks
        if feasible.any():
            position = int(np.argmax(feasible))
            broken = tuple(rule for rule in RULE_NAMES if rule in violations and violations[rule][position])
            return position, broken
    return None
