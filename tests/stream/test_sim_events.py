"""The simulator's event stream: time order, every impression before its labels, labels = the log's."""
import json

import pyarrow.parquet as pq


def test_events_are_time_ordered_and_match_the_truth(sim_stream):
    events = [json.loads(x) for x in sim_stream["events"].read_text().splitlines()]
    ts = [e["ts"] for e in events]
    assert ts == sorted(ts)
    seen, labels = {}, {"click": 0, "conv1": 0, "conv2": 0}
    for e in events:
        if e["type"] == "impression":
            seen[e["id"]] = e["ts"]
        else:
            assert e["id"] in seen and e["ts"] >= seen[e["id"]]
            labels[e["label"]] += 1
    truth = pq.read_table(sim_stream["root"] / "events.truth.parquet")
    assert len(seen) == truth.num_rows == sim_stream["counts"]["impressions"]
    for t, n in labels.items():
        assert n == sum(truth.column(t).to_pylist()) == sim_stream["counts"][t]
    first = next(e for e in events if e["type"] == "impression")
    assert {"user_id", "ad_id", "hist_ad_id", "impression_ts", "user_ext_vec"} <= set(first["features"])
    assert not {"click", "p_click", "conv1_delay_s"} & set(first["features"])  # no label leaks into features
