"""The joiner: every impression leaves exactly once per label type, windows adapt, late labels are corrected."""
import json

import numpy as np
import pytest

from untwine.stream.events import BadEventError, Impression, JsonlSource, LabelEvent, parse_event
from untwine.stream.joiner import Joiner, JoinerConfig


def imp(i, ts):
    return Impression(f"i{i}", ts, {"x": i})


def lab(i, ts, t):
    return LabelEvent(f"i{i}", ts, t)


def test_hand_example_windows_and_labels():
    j = Joiner(JoinerConfig(tasks=["click", "conv"], windows={"click": 10, "conv": 100}, adaptive=False))
    out = []
    for e in [imp(0, 0), imp(1, 5), lab(0, 3, "click"), imp(2, 12), lab(1, 50, "conv"), imp(3, 200)]:
        out += [(s.id, s.task, s.label) for s in j.push(e)]
    # at t=12 click windows of i0 (0+10) closed; at t=50 i1's (15) and i2's (22); at t=200 conv of i0..i2
    assert out == [("i0", "click", 1.0), ("i1", "click", 0.0), ("i2", "click", 0.0),
                   ("i0", "conv", 0.0), ("i1", "conv", 1.0), ("i2", "conv", 0.0)]
    assert j.counts["late_labels"] == 0 and set(j.pending) == {"i3"}


def random_stream(n=2000, seed=0, delay_scale=(30.0, 3000.0)):
    rng = np.random.default_rng(seed)
    ts = np.sort(rng.integers(0, 100_000, n)).astype(float)
    events = []
    truth = {}
    for i, t in enumerate(ts):
        events.append((t, 0, imp(i, t)))
        for k, task in enumerate(("click", "conv")):
            if rng.random() < 0.3:
                d = rng.lognormal(np.log(delay_scale[k]), 1.0)
                events.append((t + d, 1, lab(i, t + d, task)))
                truth[(f"i{i}", task)] = 1
    events.sort(key=lambda x: (x[0], x[1]))
    return [e for _, _, e in events], truth


@pytest.mark.parametrize("late", ["ignore", "correction", "fake_negative"])
def test_every_impression_leaves_exactly_once_per_type_and_late_labels_are_corrected(late):
    events, truth = random_stream()
    j = Joiner(JoinerConfig(tasks=["click", "conv"], windows={"click": 60, "conv": 600}, late=late))
    samples = [s for e in events for s in j.push(e)] + j.drain()
    primary = [s for s in samples if not s.correction]
    for task in ("click", "conv"):
        ids = [s.id for s in primary if s.task == task]
        assert sorted(ids) == sorted(f"i{i}" for i in range(2000))  # once each, none lost
    # positives: in-window ones plus (unless ignored) one correction per late label; together the truth
    final = {(s.id, s.task) for s in samples if s.label == 1}
    late_n = j.counts["late_labels"]
    assert late_n > 0  # the windows are short enough to make some labels late
    if late == "ignore":
        assert len(final) == len(truth) - late_n and not any(s.correction for s in samples)
    else:
        assert final == set(truth)
        corrections = [s for s in samples if s.correction]
        assert len(corrections) == late_n and all(s.label == 1 for s in corrections)
        # a correction is for an impression emitted as a negative for that task
        neg = {(s.id, s.task) for s in primary if s.label == 0}
        assert all((s.id, s.task) in neg for s in corrections)
    assert j.counts["orphan_labels"] == 0 and not j.pending


def test_adaptive_window_tracks_the_delay_quantile():
    events, _ = random_stream(4000, seed=1, delay_scale=(30.0, 3000.0))
    j = Joiner(JoinerConfig(tasks=["click", "conv"], windows={"click": 5, "conv": 5}, quantile=0.9))
    for e in events:
        j.push(e)
    expect = {"click": 30 * np.exp(1.2816), "conv": 3000 * np.exp(1.2816)}  # lognormal 90% quantile
    for t in ("click", "conv"):
        assert j.window[t] == pytest.approx(expect[t], rel=0.35)
    # and the adaptive joiner has fewer late labels than a fixed short window
    fixed = Joiner(JoinerConfig(tasks=["click", "conv"], windows={"click": 5, "conv": 5}, adaptive=False))
    for e in events:
        fixed.push(e)
    assert j.counts["late_labels"] < fixed.counts["late_labels"] / 3


def test_orphans_duplicates_and_unknown_types_are_counted():
    j = Joiner(JoinerConfig(tasks=["click"], windows={"click": 10}, adaptive=False, horizon_s=100))
    j.push(imp(0, 0))
    j.push(imp(0, 1))  # replayed impression
    j.push(lab(0, 2, "click"))
    j.push(lab(0, 3, "click"))  # second click inside the window
    j.push(lab(9, 4, "click"))  # never seen
    j.push(lab(0, 5, "purchase"))  # not a task
    j.push(imp(1, 500))  # closes i0 and, later, expires it
    j.push(imp(2, 1000))
    j.push(lab(0, 1001, "click"))  # i0 is past the horizon
    c = j.counts
    assert (c["duplicate_impressions"], c["duplicate_labels"], c["orphan_labels"], c["unknown_label_types"]) == (1, 1, 2, 1)
    assert c["emitted_click"] == 2 and c["positive_click"] == 1


def test_state_round_trips_through_json():
    events, _ = random_stream(600, seed=2)
    cfg = JoinerConfig(tasks=["click", "conv"], windows={"click": 60, "conv": 600})
    a = Joiner(cfg)
    out_a = [s for e in events for s in a.push(e)]
    b = Joiner(cfg)
    out_b = [s for e in events[:300] for s in b.push(e)]
    b = Joiner.from_state(cfg, json.loads(json.dumps(b.state())))
    out_b += [s for e in events[300:] for s in b.push(e)]
    key = lambda s: (s.id, s.task, s.label, s.correction)  # noqa: E731
    assert [key(s) for s in out_a] == [key(s) for s in out_b]
    assert a.counts == b.counts and a.window == b.window


def test_bad_events_name_where_and_what(tmp_path):
    with pytest.raises(BadEventError, match="e.jsonl:2: field 'ts'"):
        p = tmp_path / "e.jsonl"
        p.write_text('{"type": "label", "id": "a", "ts": 1, "label": "click"}\n{"type": "label", "id": "a", "ts": "x"}\n')
        list(JsonlSource(p).read())
    with pytest.raises(BadEventError, match="e2.jsonl:1: not valid JSON"):
        p = tmp_path / "e2.jsonl"
        p.write_text("{oops\n")
        list(JsonlSource(p).read())
    with pytest.raises(BadEventError, match="'features'"):
        parse_event({"type": "impression", "id": "a", "ts": 1}, "here")


def test_jsonl_source_resumes_after_its_position_and_skips_a_partial_last_line(tmp_path):
    p = tmp_path / "e.jsonl"
    lines = [json.dumps({"type": "label", "id": str(i), "ts": i, "label": "click"}) for i in range(5)]
    p.write_text("\n".join(lines) + "\n" + '{"type": "lab')  # a writer is mid-line
    got = list(JsonlSource(p).read())
    assert [e.id for _, e in got] == ["0", "1", "2", "3", "4"]
    pos = got[1][0]
    assert [e.id for _, e in JsonlSource(p).read(pos)] == ["2", "3", "4"]
