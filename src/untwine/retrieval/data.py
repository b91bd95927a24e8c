"""What retrieval needs from a dataset: a catalogue of items, users, and positive interactions by index.

Ranking data is rows; retrieval needs the item catalogue (every rankable item with its item-group
feature values), a user index and, per split, which catalogue items each user interacted with. All of
it is derived from the dataset's own files:

- the catalogue is the dataset's side table ``items`` when it has one (P7: every movie of movies.dat,
  rated or not), else every distinct item id of the train, valid and test files, with the item-group
  features of its first row;
- users are the distinct values of the user key over all splits, in order of first appearance;
- a split's positives are its rows with the first label > 0.5 (every row when the label is constant 1);
- a split's queries are, per user with a positive, the user/context features of that user's first
  positive row: what a request for that user would carry.

Items and users are integer indices (0..N-1, 0..U-1) from here on; ``encode_rows`` turns raw feature
tables (catalogue rows, query rows, request records) into model batches with the run's vocabularies,
unknown ids going to the OOV slot.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import scipy.sparse as sp

from untwine.core.batch import Batch
from untwine.core.dataset_spec import DatasetSpec
from untwine.core.features import FeatureSpace
from untwine.core.schema import FeatureKind, FieldGroup, Schema
from untwine.data.encode import column_types, encode_features
from untwine.data.loader import SplitArrays, column_index, make_batch
from untwine.data.readers import iter_chunks
from untwine.data.vocab import Vocab
from untwine.retrieval.channel import interaction_matrix

SPLITS = ("train", "valid", "test")


def feature_columns(schema: Schema, side: str) -> list[str]:
    """Source columns of the item-group features (``side="item"``) or of the user and context ones."""
    cols: list[str] = []
    for f in schema.features:
        if (f.group == FieldGroup.ITEM) != (side == "item"):
            continue
        cols.append(f.source)
        if f.kind == FeatureKind.SEQUENCE:
            cols += [c for c in (f.timestamps, *f.side_fields) if c]
    return list(dict.fromkeys(cols))


def default_keys(schema: Schema) -> tuple[str, str]:
    """(user key, item key): the group key (else the first user-group categorical) and the first
    item-group categorical feature."""
    items = [f.name for f in schema.categorical if f.group == FieldGroup.ITEM]
    users = [f.name for f in schema.categorical if f.group == FieldGroup.USER]
    if not items:
        raise ValueError("retrieval needs an item-group categorical feature as the item id; the schema has none")
    user = schema.group_key or (users[0] if users else None)
    if user is None:
        raise ValueError("retrieval needs a user key: set the schema's group_key or a user-group categorical feature")
    return user, items[0]


def read_split(spec: DatasetSpec, split: str) -> pa.Table:
    """A split's rows as typed arrow columns (the readers' typing), in file order."""
    return pa.concat_tables(list(iter_chunks(spec, split, column_types(spec.schema))))


def fill_missing_columns(table: pa.Table, schema: Schema) -> pa.Table:
    """Add every schema column the table lacks as missing values (null strings, NaN numbers, zero
    vectors, timestamp 0), so item-only or user-only rows encode with the full schema."""
    types = column_types(schema)
    n = table.num_rows
    for name in types.strings:
        if name not in table.column_names:
            table = table.append_column(name, pa.nulls(n, pa.string()))
    for name in types.numbers:
        if name not in table.column_names:
            fill = 0.0 if name == schema.timestamp else float("nan")
            table = table.append_column(name, pa.array(np.full(n, fill), pa.float64()))
    dims = {f.source: f.dim for f in schema.vectors}
    for name in types.lists:
        if name not in table.column_names:
            flat = pa.array(np.zeros(n * dims[name], np.float32))
            table = table.append_column(name, pa.FixedSizeListArray.from_arrays(flat, dims[name]))
    return table


def encode_rows(table: pa.Table, space: FeatureSpace, vocabs: dict[str, Vocab], where: str = "rows") -> Batch:
    """Raw feature rows -> a Batch (labels zero), missing columns filled, unknown ids -> OOV."""
    schema = space.schema
    table = fill_missing_columns(table, schema)
    for lab in schema.labels:
        if lab.source not in table.column_names:
            table = table.append_column(lab.source, pa.array(np.zeros(table.num_rows, np.float64)))
    arrays = encode_features(table, space, vocabs, where=where)
    arrays["labels"] = np.zeros((table.num_rows, len(schema.labels)), np.float32)
    return make_batch(SplitArrays(arrays=arrays, rows=table.num_rows), slice(None), column_index(schema))


def _first_rows(keys: np.ndarray) -> np.ndarray:
    """Index of the first occurrence of each distinct key, in order of first appearance."""
    _, first = np.unique(keys, return_index=True)
    return np.sort(first)


@dataclass
class RetrievalData:
    user_key: str
    item_key: str
    item_ids: np.ndarray  # (N,) raw catalogue ids (str)
    items: pa.Table  # (N rows) the item-group feature columns
    user_ids: np.ndarray  # (U,) raw user ids (str)
    positives: dict[str, tuple[np.ndarray, np.ndarray]]  # split -> (user index, item index) per positive row
    queries: dict[str, pa.Table] = field(default_factory=dict)  # split -> user/context rows, one per query user
    query_users: dict[str, np.ndarray] = field(default_factory=dict)  # split -> user index of each query row
    # split -> (user index, item index) of every catalogue item in the history sequence of a positive row
    # (P6: a user's first item appears only in histories, never as a target)
    sequence_items: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)

    @property
    def n_items(self) -> int:
        return len(self.item_ids)

    @property
    def n_users(self) -> int:
        return len(self.user_ids)

    def _pairs(self, splits: tuple[str, ...], with_sequences: bool) -> tuple[np.ndarray, np.ndarray]:
        """(user, item) of the splits' positives, then (with_sequences) of their history sequences."""
        parts = [self.positives[s] for s in splits]
        if with_sequences:
            parts += [self.sequence_items[s] for s in splits if s in self.sequence_items]
        return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])

    def matrix(self, splits: tuple[str, ...] = ("train",), with_sequences: bool = False) -> sp.csr_matrix:
        """Binary (U, N) interaction matrix of the given splits' positives (and history items)."""
        m = interaction_matrix(*self._pairs(splits, with_sequences), self.n_users, self.n_items)
        m.data[:] = 1.0  # repeated pairs count once
        return m

    def histories(self, users: np.ndarray, splits: tuple[str, ...] = ("train",),
                  with_sequences: bool = False) -> list[np.ndarray]:
        """Per user, the catalogue indices of its positives in the given splits, in file order (then, with
        ``with_sequences``, the items of those rows' history sequences not already among them)."""
        u, i = self._pairs(splits, with_sequences)
        order = np.argsort(u, kind="stable")
        u, i = u[order], i[order]
        bounds = np.searchsorted(u, np.arange(self.n_users + 1))
        out = [i[bounds[x]:bounds[x + 1]] for x in users]
        if with_sequences:  # first occurrence order, duplicates (a target also in a later history) once
            out = [h[np.sort(np.unique(h, return_index=True)[1])] for h in out]
        return out

    def targets(self, split: str) -> list[np.ndarray]:
        """Per query user of ``split`` (the order of ``queries[split]``), its distinct positive items."""
        return [np.unique(h) for h in self.histories(self.query_users[split], (split,))]


def _positive_rows(table: pa.Table, schema: Schema) -> np.ndarray:
    if not schema.labels:
        return np.arange(table.num_rows)
    lab = pc.cast(table.column(schema.labels[0].source), pa.float64()).to_numpy(zero_copy_only=False)
    return np.flatnonzero(lab > 0.5)


def load_retrieval_data(spec: DatasetSpec, user_key: str | None = None, item_key: str | None = None,
                        items_table: str | Path | None = None) -> RetrievalData:
    """Catalogue, users, positives and query rows of every split the dataset has (see the module doc)."""
    schema = spec.schema
    du, di = default_keys(schema)
    user_key, item_key = user_key or du, item_key or di
    splits = {s: read_split(spec, s) for s in SPLITS if spec.files(s)}
    item_cols = [c for c in feature_columns(schema, "item") if c in splits["train"].column_names]
    user_cols = [c for c in feature_columns(schema, "user") if c in splits["train"].column_names]
    if items_table is None and "items" in (spec.extra.get("side_files") or {}):
        items_table = spec.resolve(spec.extra["side_files"]["items"])
    if items_table is not None:
        cat = pq.read_table(items_table)
        missing = [c for c in item_cols if c not in cat.column_names]
        if missing:
            raise ValueError(f"{items_table}: the item table lacks item feature column(s) {missing}")
        cat = cat.select(item_cols)
    else:
        cat = pa.concat_tables([t.select(item_cols) for t in splits.values()])
    keys = np.asarray(cat.column(item_key).to_pylist(), dtype=object)
    first = _first_rows(keys.astype(str))
    cat, item_ids = cat.take(pa.array(first)), keys[first].astype(str)
    item_index = {k: j for j, k in enumerate(item_ids)}
    all_users = np.concatenate([np.asarray(t.column(user_key).to_pylist(), dtype=object).astype(str)
                                for t in splits.values()])
    user_ids = all_users[_first_rows(all_users)]
    user_index = {k: j for j, k in enumerate(user_ids)}
    data = RetrievalData(user_key=user_key, item_key=item_key, item_ids=item_ids, items=cat, user_ids=user_ids,
                         positives={})
    for split, t in splits.items():
        rows = _positive_rows(t, schema)
        pos = t.take(pa.array(rows))
        raw_items = np.asarray(pos.column(item_key).to_pylist(), dtype=object).astype(str)
        unknown = sorted({k for k in raw_items if k not in item_index})
        if unknown:
            raise ValueError(f"dataset {spec.name!r}, split {split!r}: {len(unknown)} item id(s) of column "
                             f"{item_key!r} are not in the catalogue, e.g. {unknown[:5]}")
        raw_users = np.asarray(pos.column(user_key).to_pylist(), dtype=object).astype(str)
        users = np.fromiter((user_index[k] for k in raw_users), np.int64, len(raw_users))
        data.positives[split] = (users, np.fromiter((item_index[k] for k in raw_items), np.int64, len(raw_items)))
        q = _first_rows(users)
        data.queries[split] = pos.select(user_cols).take(pa.array(q))
        data.query_users[split] = users[q]
        seq = next((f for f in schema.sequences if f.vocab_from == item_key and f.group != FieldGroup.ITEM), None)
        if seq is not None and seq.source in pos.column_names:
            lists = pc.split_pattern(pc.fill_null(pos.column(seq.source), ""), seq.delimiter)
            counts = pc.list_value_length(lists).to_numpy(zero_copy_only=False)
            flat = np.asarray(pc.list_flatten(lists).to_pylist(), dtype=object).astype(str)
            rows_of = np.repeat(users, counts)
            known = np.array([k in item_index for k in flat], dtype=bool) if len(flat) else np.zeros(0, bool)
            data.sequence_items[split] = (rows_of[known], np.fromiter((item_index[k] for k in flat[known]), np.int64,
                                                                      int(known.sum())))
    return data
