"""P2 — ml100k-ctr: CTR with user/item side features on MovieLens 100K (PROTOCOLS.md, P2).

Sources: ``movielens-100k/u.data``, ``u.user``, ``u.item`` (latin-1), ``u.genre``.

Joined table (one row per rating, u.data file order), columns written to parquet:

- ``user_id``, ``item_id`` (strings of the integer ids), ``age`` (categorical: the age as a string),
  ``gender``, ``occupation``, ``zip3`` (first 3 characters of the zip code),
- ``genres``: multi-valued, genre names of the item in ``u.genre`` order joined with ``|``
  (``"unknown"`` when no flag is set),
- ``hour`` (``"0"``..``"23"``) and ``weekday`` (``"0"`` = Monday .. ``"6"`` = Sunday) of the UTC timestamp,
- ``timestamp`` (int64 unix seconds; kept for reference and split checks, NOT a schema feature),
- ``label`` = rating >= 4 (int8). The rating itself is not written.

Split: stable sort of the table by timestamp (ties keep u.data order); first 80% train, next 10%
valid, last 10% test (cut points ``int(0.8 n)``, ``int(0.9 n)``): 80,000 / 10,000 / 10,000 rows.

Schema groups: user_id, age, gender, occupation, zip3 -> user; item_id, genres -> item; hour, weekday
-> context. ``group_key: user_id``.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from untwine.core.schema import Feature, Label, Schema
from untwine.data.recipes._common import Built, Context, Recipe, label_array, split_sizes, str_array

DIR = "movielens-100k"
SOURCES = (f"{DIR}/u.data", f"{DIR}/u.user", f"{DIR}/u.item", f"{DIR}/u.genre")
GENRES_MAX_LEN = 6  # at most 6 genres per movie in ml-100k


@dataclass
class ML100K:
    """u.data joined with its side information, as numpy arrays in u.data row order."""

    user: np.ndarray  # int64
    item: np.ndarray  # int64
    rating: np.ndarray  # int64
    ts: np.ndarray  # int64 unix seconds
    user_feats: dict[int, tuple[str, str, str, str]]  # user -> (age, gender, occupation, zip3)
    item_genres: dict[int, list[str]]  # item -> genre names in u.genre order ("unknown" if none)

    def __len__(self) -> int:
        return len(self.user)


def _read_genres(path: Path) -> list[str]:
    pairs = []
    with open(path, encoding="latin-1") as fh:
        for line in fh:
            line = line.strip()
            if line:
                name, _, idx = line.rpartition("|")
                pairs.append((int(idx), name))
    return [name for _, name in sorted(pairs)]


def load(root: Path) -> ML100K:
    data = np.loadtxt(root / DIR / "u.data", dtype=np.int64, delimiter="\t", ndmin=2)
    if data.shape[1] != 4:
        raise ValueError(f"{root / DIR / 'u.data'}: expected 4 tab-separated columns, found {data.shape[1]}")
    users = {}
    with open(root / DIR / "u.user", encoding="latin-1") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            parts = line.rstrip("\n").split("|")
            if len(parts) != 5:
                raise ValueError(f"{root / DIR / 'u.user'}:{lineno}: expected 5 '|'-separated fields")
            uid, age, gender, occ, zipc = parts
            users[int(uid)] = (age.strip(), gender.strip(), occ.strip(), zipc.strip()[:3])
    genre_names = _read_genres(root / DIR / "u.genre")
    items = {}
    with open(root / DIR / "u.item", encoding="latin-1") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            parts = line.rstrip("\n").split("|")
            flags = parts[-len(genre_names):]
            if len(parts) < 5 + len(genre_names) or any(f not in ("0", "1") for f in flags):
                raise ValueError(f"{root / DIR / 'u.item'}:{lineno}: expected 5 fields and {len(genre_names)} 0/1 flags")
            names = [g for g, f in zip(genre_names, flags) if f == "1"]
            items[int(parts[0])] = names or ["unknown"]
    return ML100K(user=data[:, 0], item=data[:, 1], rating=data[:, 2], ts=data[:, 3], user_feats=users,
                  item_genres=items)


def hour_weekday(ts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """UTC hour 0..23 and weekday 0 (Monday) .. 6 (Sunday) of unix seconds."""
    ts = np.asarray(ts, dtype=np.int64)
    days = np.floor_divide(ts, 86400)
    return np.floor_divide(np.mod(ts, 86400), 3600), np.mod(days + 3, 7)  # 1970-01-01 was a Thursday (3)


def feature_columns(ml: ML100K, rows: np.ndarray) -> dict[str, pa.Array]:
    """P2's feature columns (and timestamp, label) for the given u.data rows, in that order."""
    user, item, ts = ml.user[rows], ml.item[rows], ml.ts[rows]
    uf = [ml.user_feats[int(u)] for u in user]
    hour, wday = hour_weekday(ts)
    return {
        "user_id": str_array(user),
        "item_id": str_array(item),
        "age": pa.array([f[0] for f in uf], type=pa.string()),
        "gender": pa.array([f[1] for f in uf], type=pa.string()),
        "occupation": pa.array([f[2] for f in uf], type=pa.string()),
        "zip3": pa.array([f[3] for f in uf], type=pa.string()),
        "genres": pa.array(["|".join(ml.item_genres[int(i)]) for i in item], type=pa.string()),
        "hour": str_array(hour),
        "weekday": str_array(wday),
        "timestamp": pa.array(ts, type=pa.int64()),
        "label": label_array(ml.rating[rows] >= 4),
    }


def features() -> list[Feature]:
    return [
        Feature(name="user_id", kind="categorical", group="user"),
        Feature(name="item_id", kind="categorical", group="item"),
        Feature(name="age", kind="categorical", group="user"),
        Feature(name="gender", kind="categorical", group="user"),
        Feature(name="occupation", kind="categorical", group="user"),
        Feature(name="zip3", kind="categorical", group="user"),
        Feature(name="genres", kind="multi_categorical", group="item", max_len=GENRES_MAX_LEN),
        Feature(name="hour", kind="categorical", group="context"),
        Feature(name="weekday", kind="categorical", group="context"),
    ]


def schema() -> Schema:
    return Schema(features=features(), labels=[Label(name="label")], group_key="user_id")


def build(ctx: Context) -> Built:
    ml = load(ctx.data_root)
    order = np.argsort(ml.ts, kind="stable")
    a, b = split_sizes(len(order))
    parts = {"train": order[:a], "valid": order[a:b], "test": order[b:]}
    return Built(splits={s: pa.table(feature_columns(ml, rows)) for s, rows in parts.items()},
                 schema=schema(),
                 extra={"split_rule": "stable sort by timestamp (ties keep u.data order); cut at int(0.8n), "
                                      "int(0.9n)",
                        "columns_not_in_schema": ["timestamp"],
                        "encoding": "hour/weekday of the UTC timestamp, weekday 0 = Monday; genres in u.genre "
                                    "order joined with '|', 'unknown' when none"})


RECIPE = Recipe(key="p2", protocol="P2", dataset_name="p2-ml100k-ctr", module="p2_ml100k", sources=SOURCES,
                build=build, description="MovieLens 100K CTR (rating >= 4) with side features, time split")
