"""The label joiner: impressions wait a window per label type, then leave as training samples (SPEC 5).

Clicks arrive seconds after an impression, conversions hours or days later. For each label type k the
joiner holds every impression for a window W_k of event time; a label event inside the window makes
the sample positive. When the window closes (the stream's clock, the largest event time seen, passes
ts + W_k) the impression leaves exactly once for type k, positive or negative.

* **Adaptive windows.** W_k follows a quantile of the recently observed delays of type k (the notes'
  variance gating), clamped to [min_window_s, max_window_s]: long enough for most conversions,
  no longer than needed.
* **Late labels.** A label after its window closed means a negative was emitted that should have
  been positive (a fake negative). ``late="ignore"`` only counts it (the naive joiner);
  ``"correction"`` emits a correction sample, the impression again as a positive; ``"fake_negative"``
  does the same and asks the learner for fake-negative weighting (Ktena et al., RecSys 2019).
  Closed impressions stay findable for ``horizon_s`` of event time; labels for unknown or expired
  impressions are counted as ``orphan_labels``, never silently dropped.

The whole state is plain JSON (``state()`` / ``from_state``), saved with the checkpoint.
"""
from __future__ import annotations

import heapq
from dataclasses import dataclass, field

import numpy as np

from untwine.stream.events import Event, Impression, LabelEvent


@dataclass
class Sample:
    id: str
    ts: float
    features: dict
    task: str
    label: float
    correction: bool = False  # a late positive for an impression already emitted as a negative


@dataclass
class JoinerConfig:
    tasks: list[str]
    windows: dict[str, float] = field(default_factory=dict)  # initial W_k in seconds (default 3600)
    adaptive: bool = True
    quantile: float = 0.95
    min_window_s: float = 1.0
    max_window_s: float = 7 * 86400.0
    delays_kept: int = 5000  # recent delays per type the quantile is taken over
    min_delays: int = 50  # keep the initial window until this many delays were seen
    late: str = "correction"  # ignore | correction | fake_negative
    horizon_s: float = 14 * 86400.0  # how long closed impressions can still receive late labels

    def __post_init__(self) -> None:
        if self.late not in ("ignore", "correction", "fake_negative"):
            raise ValueError(f"late must be ignore, correction or fake_negative, got {self.late!r}")
        if not 0 < self.quantile < 1:
            raise ValueError(f"quantile must be in (0, 1), got {self.quantile}")
        unknown = sorted(set(self.windows) - set(self.tasks))
        if unknown:
            raise ValueError(f"windows name {unknown}, which are not tasks {self.tasks}")


class Joiner:
    def __init__(self, cfg: JoinerConfig) -> None:
        self.cfg = cfg
        self.window = {t: float(cfg.windows.get(t, 3600.0)) for t in cfg.tasks}
        self.clock = -np.inf
        self.pending: dict[str, dict] = {}  # id -> {"ts", "features", "open": [tasks], "pos": [tasks]}
        self.heaps: dict[str, list] = {t: [] for t in cfg.tasks}  # (ts, seq, id) per task, of open impressions
        self.closed: dict[str, dict] = {}  # id -> {"ts", "features", "closed": {task: label}} within the horizon
        self.closed_order: list = []  # (close clock, seq, id), a heap for expiry
        self.delays: dict[str, list[float]] = {t: [] for t in cfg.tasks}
        self.seq = 0
        self.counts = {"impressions": 0, "labels": 0, "duplicate_impressions": 0, "orphan_labels": 0,
                       "duplicate_labels": 0, "late_labels": 0, "unknown_label_types": 0,
                       **{f"emitted_{t}": 0 for t in cfg.tasks}, **{f"positive_{t}": 0 for t in cfg.tasks},
                       **{f"corrections_{t}": 0 for t in cfg.tasks}}

    # ---- events
    def push(self, event: Event) -> list[Sample]:
        """Account for one event; returns the samples whose windows it closed (and any correction)."""
        out: list[Sample] = []
        if isinstance(event, Impression):
            self._impression(event)
        elif isinstance(event, LabelEvent):
            out += self._label(event)
        if event.ts > self.clock:
            self.clock = event.ts
        out += self._close(self.clock)
        return out

    def drain(self) -> list[Sample]:
        """End of stream: close every open window now (the rest of the labels will never come)."""
        return self._close(np.inf)

    def _impression(self, e: Impression) -> None:
        self.counts["impressions"] += 1
        if e.id in self.pending or e.id in self.closed:
            self.counts["duplicate_impressions"] += 1  # the first one counts; a replayed copy does not
            return
        self.pending[e.id] = {"ts": e.ts, "features": e.features, "open": list(self.cfg.tasks), "pos": []}
        for t in self.cfg.tasks:
            heapq.heappush(self.heaps[t], (e.ts, self.seq, e.id))
        self.seq += 1

    def _label(self, e: LabelEvent) -> list[Sample]:
        self.counts["labels"] += 1
        t = e.label
        if t not in self.heaps:
            self.counts["unknown_label_types"] += 1
            return []
        rec = self.pending.get(e.id)
        if rec is not None and t in rec["open"]:
            if t in rec["pos"]:
                self.counts["duplicate_labels"] += 1
            else:
                rec["pos"].append(t)
                self._observe_delay(t, e.ts - rec["ts"])
            return []
        done = self.closed.get(e.id) or rec  # fully closed, or still open for another task
        closed_label = (done or {}).get("closed", {}).get(t)
        if closed_label is None:
            self.counts["orphan_labels"] += 1
            return []
        if closed_label >= 1:
            self.counts["duplicate_labels"] += 1
            return []
        self.counts["late_labels"] += 1
        self._observe_delay(t, e.ts - done["ts"])
        if self.cfg.late == "ignore":
            return []
        done["closed"][t] = 1.0  # a second late label for the same impression is a duplicate
        self.counts[f"corrections_{t}"] += 1
        return [Sample(e.id, done["ts"], done["features"], t, 1.0, correction=True)]

    def _observe_delay(self, t: str, delay: float) -> None:
        d = self.delays[t]
        d.append(max(float(delay), 0.0))
        if len(d) > self.cfg.delays_kept:
            del d[: len(d) - self.cfg.delays_kept]
        if self.cfg.adaptive and len(d) >= self.cfg.min_delays:
            w = float(np.quantile(d, self.cfg.quantile))
            self.window[t] = float(min(max(w, self.cfg.min_window_s), self.cfg.max_window_s))

    def _close(self, clock: float) -> list[Sample]:
        out: list[Sample] = []
        for t in self.cfg.tasks:
            heap, w = self.heaps[t], self.window[t]
            while heap and heap[0][0] + w <= clock:
                ts, _, iid = heapq.heappop(heap)
                rec = self.pending[iid]
                label = 1.0 if t in rec["pos"] else 0.0
                rec["open"].remove(t)
                rec.setdefault("closed", {})[t] = label
                self.counts[f"emitted_{t}"] += 1
                self.counts[f"positive_{t}"] += int(label)
                out.append(Sample(iid, ts, rec["features"], t, label))
                if not rec["open"]:
                    del self.pending[iid]
                    self.closed[iid] = {"ts": ts, "features": rec["features"], "closed": rec["closed"]}
                    heapq.heappush(self.closed_order, (clock if np.isfinite(clock) else ts, self.seq, iid))
                    self.seq += 1
        # forget closed impressions past the horizon (late labels for them become orphans)
        while self.closed_order and self.closed_order[0][0] + self.cfg.horizon_s < clock and np.isfinite(clock):
            _, _, iid = heapq.heappop(self.closed_order)
            self.closed.pop(iid, None)
        return out

    # ---- state
    def state(self) -> dict:
        return {"window": self.window, "clock": None if not np.isfinite(self.clock) else self.clock,
                "pending": self.pending, "heaps": self.heaps, "closed": self.closed,
                "closed_order": self.closed_order, "delays": self.delays, "seq": self.seq, "counts": self.counts}

    @classmethod
    def from_state(cls, cfg: JoinerConfig, state: dict) -> "Joiner":
        j = cls(cfg)
        j.window = {t: float(v) for t, v in state["window"].items()}
        j.clock = -np.inf if state["clock"] is None else float(state["clock"])
        j.pending, j.closed = state["pending"], state["closed"]
        j.heaps = {t: [tuple(x) for x in h] for t, h in state["heaps"].items()}
        j.closed_order = [tuple(x) for x in state["closed_order"]]
        for h in (*j.heaps.values(), j.closed_order):
            heapq.heapify(h)
        j.delays, j.seq, j.counts = state["delays"], int(state["seq"]), state["counts"]
        return j
