"""The simulated log as an event stream (JSON lines) for ``untwine stream``.

Each impression becomes an ``impression`` event at its time, with the dataset's feature columns; each
click a ``label`` event ``click_delay_mean_s`` (exponential) later, each conversion a ``label`` event
after the simulator's own conversion delay. Events are in time order (an impression before its labels).
The ground truth of every impression goes to a side file (``<name>.truth.parquet`` beside the events: id, p_click, p_conv1,
p_conv2, click, conv1, conv2) for measuring a streamed model against what really happened.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from untwine.core.io import atomic_path
from untwine.sim.simulate import SimLog, to_table
from untwine.sim.writer import GROUND_TRUTH, TASKS

NOT_FEATURES = {*TASKS, *GROUND_TRUTH, "conv1_delay_s", "conv2_delay_s", "n_prior_exposures", "user_activity",
                "request_id"}


def impression_ids(log: SimLog, rows: slice) -> np.ndarray:
    return np.array([f"i{r}" for r in range(*rows.indices(len(log)))])


def write_events(log: SimLog, path: str | Path, rows: slice = slice(None), click_delay_mean_s: float = 30.0,
                 seed: int = 0, decimals: int = 4) -> dict:
    """Write the events of ``rows`` (a contiguous, time-sorted slice of the log) to ``path``; returns counts."""
    path = Path(path)
    table = to_table(log, rows)
    n = table.num_rows
    ids = impression_ids(log, rows)
    ts = table.column("impression_ts").to_numpy().astype(np.int64)
    rng = np.random.default_rng(seed)
    labels = [("click", ts + np.ceil(rng.exponential(click_delay_mean_s, n)).astype(np.int64))]
    for t in ("conv1", "conv2"):
        labels.append((t, ts + np.ceil(np.nan_to_num(table.column(f"{t}_delay_s").to_numpy(zero_copy_only=False),
                                                     nan=0.0)).astype(np.int64)))
    # (time, kind 0 = impression / 1 = label, row, task) sorted: an impression precedes its own labels
    order_t, order_k, order_r, order_task = [ts], [np.zeros(n, np.int8)], [np.arange(n)], [np.full(n, -1, np.int8)]
    for k, (t, when) in enumerate(labels):
        hit = np.flatnonzero(table.column(t).to_numpy(zero_copy_only=False) > 0)
        order_t.append(when[hit])
        order_k.append(np.ones(len(hit), np.int8))
        order_r.append(hit)
        order_task.append(np.full(len(hit), k, np.int8))
    t_all, k_all, r_all, task_all = (np.concatenate(x) for x in (order_t, order_k, order_r, order_task))
    order = np.lexsort((task_all, r_all, k_all, t_all))
    feature_cols = [c for c in table.column_names if c not in NOT_FEATURES]
    feats = table.select(feature_cols).to_pylist()
    names = [t for t, _ in labels]
    counts = {"impressions": n, **{t: 0 for t in names}}
    with atomic_path(path) as tmp, open(tmp, "w") as fh:
        for j in order:
            r = int(r_all[j])
            if k_all[j] == 0:
                f = {c: ([round(x, decimals) for x in v] if isinstance(v, list) else v) for c, v in feats[r].items()}
                fh.write(json.dumps({"type": "impression", "id": ids[r], "ts": int(t_all[j]), "features": f}) + "\n")
            else:
                t = names[task_all[j]]
                counts[t] += 1
                fh.write(json.dumps({"type": "label", "id": ids[r], "ts": int(t_all[j]), "label": t}) + "\n")
    truth = {"id": pa.array(ids), **{c: table.column(c) for c in (*GROUND_TRUTH, *TASKS)}}
    with atomic_path(path.with_name(path.stem + ".truth.parquet")) as tmp:
        pq.write_table(pa.table(truth), tmp)
    return counts
