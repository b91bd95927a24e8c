"""P7 — recall-ml1m: implicit retrieval with side features on MovieLens 1M (PROTOCOLS.md, P7).

Sources: ``movielens-1m/ratings_user_movie_pairs.parquet`` (1,000,209 (userID, movieID) pairs, no
ratings, no timestamps), ``users.dat``, ``movies.dat`` (latin-1, ``::``-separated).

Split: users in ascending id order; for each, their items in file order are permuted with ONE
``rng = default_rng(2024)`` (``rng.permutation(n_u)``, one call per user in that order); first
``floor(0.8 n_u)`` train, next ``floor(0.1 n_u)`` valid, the rest test (always >= 1 item). Rows of a
split are grouped by ascending user, items in permuted order. Rows: 797,758 / 97,383 / 105,068.

Columns: ``user_id``, ``item_id`` (strings of the ids), ``label`` (int8, always 1: implicit positives),
user side features ``gender``, ``age`` (the ml-1m age code), ``occupation`` (code), ``zip3`` (first 3
characters of the zip code), item side feature ``genres`` (``|``-joined, as in movies.dat).
``items.parquet`` (side file) lists every movie of movies.dat (3,883) with its genres: the catalogue.

Evaluation is FULL RANKING, not CTR: for each user, score every movie of the catalogue, exclude the
user's train items (PROTOCOLS names only those; the recipe writes the splits and leaves the exclusion
to the evaluator), and compute Recall@K and NDCG@K for K = 20, 50, 100 against the user's valid (or
test) items.
The parquet rows are the positives only; the label column exists so that generic loaders work.
``group_key: user_id``.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from untwine.core.schema import Feature, Label, Schema
from untwine.data.recipes._common import SEED, Built, Context, Recipe

DIR = "movielens-1m"
PAIRS = f"{DIR}/ratings_user_movie_pairs.parquet"
USERS = f"{DIR}/users.dat"
MOVIES = f"{DIR}/movies.dat"
GENRES_MAX_LEN = 6  # at most 6 genres per movie in ml-1m


def _read_dat(path: Path, n_fields: int) -> list[list[str]]:
    rows = []
    with open(path, encoding="latin-1") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            parts = line.rstrip("\r\n").split("::")
            if len(parts) != n_fields:
                raise ValueError(f"{path}:{lineno}: expected {n_fields} '::'-separated fields, found {len(parts)}")
            rows.append(parts)
    return rows


def read_pairs(path: Path) -> tuple[np.ndarray, np.ndarray]:
    t = pq.read_table(path)
    names = {n.lower(): n for n in t.column_names}
    if "userid" not in names or "movieid" not in names:
        raise ValueError(f"{path}: expected columns userID and movieID, found {t.column_names}")
    user = pc.cast(t.column(names["userid"]), pa.int64()).to_numpy()
    movie = pc.cast(t.column(names["movieid"]), pa.int64()).to_numpy()
    return user, movie


def split_positions(user: np.ndarray, seed: int = SEED) -> dict[str, np.ndarray]:
    """Row indices (into the pair list) of each split, in protocol order."""
    order = np.argsort(user, kind="stable")  # ascending user, file order within a user
    u = user[order]
    bounds = np.flatnonzero(np.r_[True, u[1:] != u[:-1], True])
    rng = np.random.default_rng(seed)
    parts = {"train": [], "valid": [], "test": []}
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        n = int(hi - lo)
        rows = order[lo:hi][rng.permutation(n)]
        a, b = int(0.8 * n), int(0.8 * n) + int(0.1 * n)
        parts["train"].append(rows[:a])
        parts["valid"].append(rows[a:b])
        parts["test"].append(rows[b:])
    return {s: np.concatenate(v) for s, v in parts.items()}


def schema() -> Schema:
    feats = [
        Feature(name="user_id", kind="categorical", group="user"),
        Feature(name="gender", kind="categorical", group="user"),
        Feature(name="age", kind="categorical", group="user"),
        Feature(name="occupation", kind="categorical", group="user"),
        Feature(name="zip3", kind="categorical", group="user"),
        Feature(name="item_id", kind="categorical", group="item"),
        Feature(name="genres", kind="multi_categorical", group="item", max_len=GENRES_MAX_LEN),
    ]
    return Schema(features=feats, labels=[Label(name="label")], group_key="user_id")


def build(ctx: Context) -> Built:
    user, movie = read_pairs(ctx.source(PAIRS))
    users = {int(r[0]): (r[1], r[2], r[3], r[4][:3]) for r in _read_dat(ctx.source(USERS), 5)}
    movies = {int(r[0]): r[2] for r in _read_dat(ctx.source(MOVIES), 3)}
    miss_u = np.setdiff1d(np.unique(user), np.fromiter(users, dtype=np.int64))
    miss_m = np.setdiff1d(np.unique(movie), np.fromiter(movies, dtype=np.int64))
    if len(miss_u) or len(miss_m):
        raise ValueError(f"{ctx.source(PAIRS)}: {len(miss_u)} user(s) missing from users.dat, {len(miss_m)} "
                         f"movie(s) missing from movies.dat")
    # side features as lookup arrays indexed by id
    u_ids = np.fromiter(users, dtype=np.int64)
    u_tab = {k: np.empty(u_ids.max() + 1, dtype=object) for k in ("gender", "age", "occupation", "zip3")}
    for uid, vals in users.items():
        for k, v in zip(("gender", "age", "occupation", "zip3"), vals):
            u_tab[k][uid] = v
    m_ids = np.fromiter(movies, dtype=np.int64)
    m_genres = np.empty(m_ids.max() + 1, dtype=object)
    for mid, g in movies.items():
        m_genres[mid] = g
    splits = {}
    for split, rows in split_positions(user).items():
        uu, mm = user[rows], movie[rows]
        splits[split] = pa.table({
            "user_id": pa.array(uu).cast(pa.string()),
            "item_id": pa.array(mm).cast(pa.string()),
            "label": pa.array(np.ones(len(rows), dtype=np.int8)),
            **{k: pa.array(u_tab[k][uu], type=pa.string()) for k in ("gender", "age", "occupation", "zip3")},
            "genres": pa.array(m_genres[mm], type=pa.string()),
        })
    cat_ids = np.sort(m_ids)
    items = pa.table({"item_id": pa.array(cat_ids).cast(pa.string()),
                      "genres": pa.array(m_genres[cat_ids], type=pa.string())})
    return Built(splits=splits, schema=schema(), side_tables={"items": items},
                 extra={"split_rule": "users ascending; per user items (file order) permuted with one "
                                      "default_rng(2024) (one permutation call per user); floor(0.8n) train, "
                                      "floor(0.1n) valid, rest test",
                        "evaluation": "full ranking over all movies of items.parquet, the user's train items "
                                      "excluded; Recall@K and NDCG@K for K = 20, 50, 100. Rows are positives only "
                                      "(label always 1): not a CTR set",
                        "n_items": int(len(cat_ids)),
                        "n_items_with_pairs": int(len(np.unique(movie)))})


RECIPE = Recipe(key="p7", protocol="P7", dataset_name="p7-recall-ml1m", module="p7_recall_ml1m",
                sources=(PAIRS, USERS, MOVIES), build=build,
                description="MovieLens 1M implicit pairs for full-ranking retrieval with side features")
