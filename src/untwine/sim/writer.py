"""Write a simulated log as train/valid/test parquet files plus the ``dataset.yaml`` describing them.

Split by time, in whole days: the first ``round(days * train_frac)`` days (~70%) are train, the next
``round(days * valid_frac)`` (~15%) valid, the rest test (see ``SimConfig.split_days``). Histories
reach back across split boundaries (a valid row's history may hold train-period clicks), as in
production; every history event is strictly earlier than its row.

Columns beyond the schema's features: ``request_id``, ``impression_ts`` (int64 seconds; the schema's
``timestamp``), ``user_activity``,
``n_prior_exposures`` (earlier impressions of the same (user, ad) within the fatigue window),
``conv1_delay_s``/``conv2_delay_s`` (NaN without conversion) and the ground truth ``p_click``,
``p_conv1``, ``p_conv2`` (probabilities per impression; never features).

``items.parquet`` (side file ``items``) is the catalogue: every ad of the world with its item features
as of the end of the log (``age_days`` = age at the start + ``days``), including ads the log never
showed; retrieval ranks over it.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from untwine.core.dataset_spec import DatasetSpec
from untwine.core.io import atomic_path
from untwine.core.schema import Feature, Label, Schema
from untwine.metrics import auc
from untwine.sim.simulate import DAY_S, SimLog, run, to_table
from untwine.sim.world import SimConfig, build_world

TASKS = ("click", "conv1", "conv2")
GROUND_TRUTH = ("p_click", "p_conv1", "p_conv2")


def dataset_schema(cfg: SimConfig) -> Schema:
    """The schema of a simulated dataset (ground-truth columns are deliberately absent)."""
    cat = "categorical"
    return Schema(
        features=[
            Feature(name="user_id", kind=cat, group="user"),
            Feature(name="age", kind=cat, group="user"),
            Feature(name="gender", kind=cat, group="user"),
            Feature(name="city_tier", kind=cat, group="user"),
            Feature(name="ad_id", kind=cat, group="item"),
            Feature(name="category", kind=cat, group="item"),
            Feature(name="advertiser", kind=cat, group="item"),
            Feature(name="price", kind="numeric", group="item", transform="log1p_standard"),
            Feature(name="age_days", kind="numeric", group="item", transform="log1p_standard"),
            Feature(name="bid", kind="numeric", group="item"),
            Feature(name="hour", kind=cat, group="context"),
            Feature(name="weekday", kind=cat, group="context"),
            Feature(name="position", kind=cat, group="context"),
            Feature(name="hist_ad_id", kind="sequence", group="user", vocab_from="ad_id",
                    max_len=cfg.hist_max_len, timestamps="hist_ts",
                    side_fields={"hist_category": "category"}),
            Feature(name="user_ext_vec", kind="vector", group="user", dim=cfg.ext_dim),
            Feature(name="ad_ext_vec", kind="vector", group="item", dim=cfg.ext_dim),
        ],
        labels=[Label(name=t) for t in TASKS],
        group_key="user_id",
        timestamp="impression_ts",  # the target time of the history (TIM's time gaps)
    )


def split_rows(log: SimLog) -> dict[str, slice]:
    """Contiguous row ranges (the log is time-sorted) of the train/valid/test days."""
    cfg = log.cfg
    n_train, n_valid, _ = cfg.split_days()
    day = (log.columns["impression_ts"] - cfg.start_ts) // DAY_S
    a = int(np.searchsorted(day, n_train, "left"))
    b = int(np.searchsorted(day, n_train + n_valid, "left"))
    return {"train": slice(0, a), "valid": slice(a, b), "test": slice(b, len(day))}


def _stats(log: SimLog, rows: slice) -> dict:
    c = log.columns
    click = c["click"][rows]
    n_click = int(click.sum())
    out = {
        "rows": int(len(click)),
        "ctr": float(click.mean()) if len(click) else float("nan"),
        "cvr1_per_click": float(c["conv1"][rows].sum() / max(n_click, 1)),
        "cvr2_per_click": float(c["conv2"][rows].sum() / max(n_click, 1)),
        "mean_p_click": float(c["p_click"][rows].mean()) if len(click) else float("nan"),
        "oracle_auc": {t: float(auc(c[g][rows], c[t][rows])) for t, g in zip(TASKS, GROUND_TRUTH)},
    }
    return out


def write_log(log: SimLog, out_dir: str | Path, name: str = "sim-ads") -> Path:
    """Write ``log`` under ``out_dir``; returns the path of the ``dataset.yaml``."""
    cfg = log.cfg
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    splits = split_rows(log)
    stats = {}
    for split, rows in splits.items():
        with atomic_path(out_dir / f"{split}.parquet") as tmp:
            pq.write_table(to_table(log, rows), tmp, compression="zstd")
        stats[split] = _stats(log, rows)
    # the catalogue: every ad of the world (not only those the log happened to show), as of the log's end
    world = build_world(cfg)
    ext = np.ascontiguousarray(world.ad_ext, dtype=np.float32)
    items = pa.table({"ad_id": pa.array(np.arange(cfg.n_ads, dtype=np.int64)),
                      "category": pa.array(world.ad_category), "advertiser": pa.array(world.ad_advertiser),
                      "price": pa.array(world.ad_price), "age_days": pa.array(world.ad_age0 + cfg.days),
                      "bid": pa.array(world.ad_bid),
                      "ad_ext_vec": pa.FixedSizeListArray.from_arrays(pa.array(ext.reshape(-1)), ext.shape[1])})
    with atomic_path(out_dir / "items.parquet") as tmp:
        pq.write_table(items, tmp, compression="zstd")
    comp = log.components
    p1 = np.clip(log.columns["p_conv1"], 1e-12, 1 - 1e-12)
    n_train, n_valid, n_test = cfg.split_days()
    spec = DatasetSpec(
        name=name,
        format="parquet",
        train=["train.parquet"],
        valid=["valid.parquet"],
        test=["test.parquet"],
        schema=dataset_schema(cfg),
        extra={
            "generator": "untwine.sim",
            "side_files": {"items": "items.parquet"},
            "seed": cfg.seed,
            "config": cfg.model_dump(mode="json"),
            "split": {"by": "day", "train_days": n_train, "valid_days": n_valid, "test_days": n_test},
            "rows": {s: v["rows"] for s, v in stats.items()},
            "stats": stats,
            "oracle_auc": {s: v["oracle_auc"] for s, v in stats.items()},
            "ground_truth_columns": list(GROUND_TRUTH),
            "intercepts": {k: float(v) for k, v in log.intercepts.items()},
            "entanglement": {
                "corr_click_logit_cvr1_logit": float(np.corrcoef(comp["click_logit"], comp["cvr1_logit"])[0, 1]),
                "corr_click_logit_cvr2_logit": float(np.corrcoef(comp["click_logit"], comp["cvr2_logit"])[0, 1]),
                "corr_click_logit_ctcvr1_logit": float(
                    np.corrcoef(comp["click_logit"], np.log(p1 / (1 - p1)))[0, 1]),
            },
        },
    )
    path = out_dir / "dataset.yaml"
    spec.to_yaml(path)
    return path


def write_dataset(cfg: SimConfig, out_dir: str | Path, name: str = "sim-ads") -> Path:
    """Simulate ``cfg`` and write it under ``out_dir``; returns the path of the ``dataset.yaml``."""
    return write_log(run(cfg), out_dir, name=name)
