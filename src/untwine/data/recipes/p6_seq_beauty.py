"""P6 — seq-beauty: behaviour sequences, order only, Amazon Beauty (S3-Rec version) (PROTOCOLS.md, P6).

Sources: ``amazon-yelp-lastfm-seq-s3rec/Beauty.txt`` (one line per user: user id, then item ids oldest
first) and ``Beauty_item2attributes.json`` (item -> attribute ids).

Leave-one-out per user (sequence ``s`` of length n): ``s[n-1]`` = test, ``s[n-2]`` = valid,
``s[:n-2]`` = train. Item universe: ids 1..N, N = the largest item id in Beauty.txt (12,101; every id
in between occurs).

CTR form (``train/valid/test.parquet``):

- train: for every train position t >= 1 (0-based, t < n-2), a positive (history = ``s[max(0,t-50):t]``,
  target ``s[t]``) immediately followed by one negative with the same history;
- valid: history = the last 50 of ``s[:n-2]``, the positive ``s[n-2]`` then 4 negatives;
- test: history = the last 50 of ``s[:n-1]``, the positive ``s[n-1]`` then 4 negatives.

Negatives: target uniform over the items the user never interacted with (anywhere in ``s``). One
``rng = numpy.random.default_rng(2024)``; users in file order (= ascending user id); per user a single
call ``r = rng.integers(0, len(C), size=k)`` with ``C`` = the sorted complement of the user's items and
``k = (n-3) + 4 + 4``; the draws are ``C[r]``, used in that order: the first n-3 for the train
positions t = 1..n-3, the next 4 for valid, the last 4 for test. Rows are grouped by user (file
order). Rows: 262,826 / 111,815 / 111,815.

Columns: ``user_id``, ``item_id`` (target), ``item_attrs`` (attribute ids of the target joined with ``|``,
multi-valued item feature), ``attr_first`` (its first attribute, categorical item feature),
``hist_item_id`` (history joined with ``|``, oldest first; sequence with ``vocab_from: item_id``),
``hist_attr_first`` (first attribute of each history item; side field sharing ``attr_first``'s
vocabulary), ``label`` (int8). There are no timestamps. ``group_key: user_id``.

Retrieval form (side files, listed in ``extra.side_files``; full ranking over all N items, the user's
earlier items excluded; HR@10/NDCG@10/HR@20/NDCG@20 on the last item, valid on the second last):

- ``retrieval_train.parquet``: ``user_id, item_id, position`` — every train interaction ``s[:n-2]``;
- ``retrieval_valid.parquet`` / ``retrieval_test.parquet``: ``user_id, item_id`` (the held-out item),
  ``hist_item_id`` (the last 50 earlier items) and ``seen_item_id`` (ALL earlier items, ``|``-joined,
  the exclusion list for ranking);
- ``items.parquet``: ``item_id, item_attrs, attr_first`` for every item 1..N.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa

from untwine.core.schema import Feature, Label, Schema
from untwine.data.recipes._common import SEED, Built, Context, Recipe, label_array

DIR = "amazon-yelp-lastfm-seq-s3rec"
SEQ_FILE = f"{DIR}/Beauty.txt"
ATTR_FILE = f"{DIR}/Beauty_item2attributes.json"
MAX_HIST = 50
N_EVAL_NEG = 4


def read_sequences(path: Path) -> tuple[list[int], list[list[int]]]:
    users, seqs = [], []
    with open(path) as fh:
        for lineno, line in enumerate(fh, 1):
            parts = line.split()
            if not parts:
                continue
            if len(parts) < 4:
                raise ValueError(f"{path}:{lineno}: a user needs at least 3 items for leave-one-out, "
                                 f"found {len(parts) - 1}")
            users.append(int(parts[0]))
            seqs.append([int(x) for x in parts[1:]])
    return users, seqs


def read_attributes(path: Path) -> dict[int, list[int]]:
    with open(path) as fh:
        raw = json.load(fh)
    return {int(k): [int(a) for a in v] for k, v in raw.items()}


def complement_draws(seen: np.ndarray, n_items: int, r: np.ndarray) -> np.ndarray:
    """``C[r]`` for ``C`` = sorted(set(1..n_items) - seen), without building ``C``."""
    u = np.unique(seen)
    adjusted = u - np.arange(len(u))  # non-decreasing; k-th missing value below u[k] counts
    v = r + 1
    return v + np.searchsorted(adjusted, v, side="right")


def max_attrs(attrs: dict[int, list[int]]) -> int:
    return max((len(v) for v in attrs.values()), default=1)


def schema(attr_max_len: int) -> Schema:
    feats = [
        Feature(name="user_id", kind="categorical", group="user"),
        Feature(name="item_id", kind="categorical", group="item"),
        Feature(name="item_attrs", kind="multi_categorical", group="item", max_len=attr_max_len),
        Feature(name="attr_first", kind="categorical", group="item"),
        Feature(name="hist_item_id", kind="sequence", group="user", vocab_from="item_id", max_len=MAX_HIST,
                side_fields={"hist_attr_first": "attr_first"}),
    ]
    return Schema(features=feats, labels=[Label(name="label")], group_key="user_id")


class _Columns:
    def __init__(self) -> None:
        self.user: list[int] = []
        self.item: list[int] = []
        self.hist: list[str] = []
        self.hist_attr: list[str] = []
        self.label: list[int] = []

    def add(self, user: int, item: int, hist: str, hist_attr: str, label: int) -> None:
        self.user.append(user)
        self.item.append(item)
        self.hist.append(hist)
        self.hist_attr.append(hist_attr)
        self.label.append(label)

    def table(self, attr_str: dict[int, str], attr_first: dict[int, str]) -> pa.Table:
        return pa.table({
            "user_id": pa.array(self.user).cast(pa.string()),
            "item_id": pa.array(self.item).cast(pa.string()),
            "item_attrs": pa.array([attr_str[i] for i in self.item], type=pa.string()),
            "attr_first": pa.array([attr_first[i] for i in self.item], type=pa.string()),
            "hist_item_id": pa.array(self.hist, type=pa.string()),
            "hist_attr_first": pa.array(self.hist_attr, type=pa.string()),
            "label": label_array(self.label),
        })


def build(ctx: Context) -> Built:
    seq_path, attr_path = ctx.source(SEQ_FILE), ctx.source(ATTR_FILE)
    users, seqs = read_sequences(seq_path)
    attrs = read_attributes(attr_path)
    n_items = max(max(s) for s in seqs)
    missing_attr = [i for i in range(1, n_items + 1) if i not in attrs]
    if missing_attr:
        raise ValueError(f"{attr_path}: no attributes for {len(missing_attr)} item(s), e.g. {missing_attr[:5]}")
    attr_str = {i: "|".join(map(str, attrs[i])) for i in range(1, n_items + 1)}
    attr_first = {i: str(attrs[i][0]) for i in range(1, n_items + 1)}

    rng = np.random.default_rng(SEED)
    ctr = {s: _Columns() for s in ("train", "valid", "test")}
    r_train = {"user_id": [], "item_id": [], "position": []}
    r_eval = {s: {"user_id": [], "item_id": [], "hist_item_id": [], "seen_item_id": []} for s in ("valid", "test")}
    for user, seq in zip(users, seqs):
        n = len(seq)
        k = (n - 3) + 2 * N_EVAL_NEG
        neg = complement_draws(np.asarray(seq), n_items, rng.integers(0, n_items - len(set(seq)), size=k)).tolist()
        s_str = [str(i) for i in seq]
        a_str = [attr_first[i] for i in seq]
        for t in range(1, n - 2):
            lo = max(0, t - MAX_HIST)
            h, ha = "|".join(s_str[lo:t]), "|".join(a_str[lo:t])
            ctr["train"].add(user, seq[t], h, ha, 1)
            ctr["train"].add(user, neg[t - 1], h, ha, 0)
        for split, t, negs in (("valid", n - 2, neg[n - 3:n - 3 + N_EVAL_NEG]), ("test", n - 1, neg[n - 3 + N_EVAL_NEG:])):
            lo = max(0, t - MAX_HIST)
            h, ha = "|".join(s_str[lo:t]), "|".join(a_str[lo:t])
            ctr[split].add(user, seq[t], h, ha, 1)
            for j in negs:
                ctr[split].add(user, j, h, ha, 0)
            ev = r_eval[split]
            ev["user_id"].append(user)
            ev["item_id"].append(seq[t])
            ev["hist_item_id"].append(h)
            ev["seen_item_id"].append("|".join(s_str[:t]))
        r_train["user_id"] += [user] * (n - 2)
        r_train["item_id"] += seq[:n - 2]
        r_train["position"] += list(range(n - 2))

    def ids(v):
        return pa.array(v, type=pa.int64()).cast(pa.string())

    side = {
        "retrieval_train": pa.table({"user_id": ids(r_train["user_id"]), "item_id": ids(r_train["item_id"]),
                                     "position": pa.array(r_train["position"], type=pa.int32())}),
        **{f"retrieval_{s}": pa.table({"user_id": ids(ev["user_id"]), "item_id": ids(ev["item_id"]),
                                       "hist_item_id": pa.array(ev["hist_item_id"], type=pa.string()),
                                       "seen_item_id": pa.array(ev["seen_item_id"], type=pa.string())})
           for s, ev in r_eval.items()},
        "items": pa.table({"item_id": ids(list(range(1, n_items + 1))),
                           "item_attrs": pa.array([attr_str[i] for i in range(1, n_items + 1)], type=pa.string()),
                           "attr_first": pa.array([attr_first[i] for i in range(1, n_items + 1)], type=pa.string())}),
    }
    return Built(
        splits={s: c.table(attr_str, attr_first) for s, c in ctr.items()},
        schema=schema(max_attrs(attrs)),
        side_tables=side,
        extra={"split_rule": "leave-one-out per user: last = test, second last = valid, rest = train",
               "negatives": "default_rng(2024), users in file order, per user one rng.integers(0, |C|, size="
                            "(n-3)+4+4) indexing the sorted complement C of the user's items; train negatives "
                            "first (t = 1..n-3), then 4 valid, then 4 test",
               "n_items": n_items,
               "n_users": len(users),
               "retrieval": {"train": "retrieval_train.parquet", "valid": "retrieval_valid.parquet",
                             "test": "retrieval_test.parquet", "items": "items.parquet",
                             "evaluation": "full ranking over all n_items items, seen_item_id excluded; "
                                           "HR@10, NDCG@10, HR@20, NDCG@20"}})


RECIPE = Recipe(key="p6", protocol="P6", dataset_name="p6-seq-beauty", module="p6_seq_beauty",
                sources=(SEQ_FILE, ATTR_FILE), build=build,
                description="Amazon Beauty sequences (S3-Rec): CTR form with sampled negatives + retrieval form")
