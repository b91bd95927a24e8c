"""Read an untwine ``dataset.yaml`` and its split files with plain yaml + pyarrow, and encode them the way
a DeepCTR-Torch / torch-rechub user would (the caller's own preprocessing): vocabularies fitted on train.

Supported feature kinds: ``categorical``, ``multi_categorical`` (delimited string or list column) and
``numeric``. Encodings, identical for every peer that takes pre-encoded ids:

- categorical: id 0 = missing or unseen in train (or below ``min_count``), 1..V = train values by
  descending count (ties by value);
- multi_categorical: same vocabulary rule over all tokens; ``max_len`` ids per row, padded with 0
  at the end (0 is the padding id the peers mask when mean-pooling);
- numeric: ``log1p(max(x, 0))``, missing -> 0 (the same values feed "raw" and "embedded" modes).
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import yaml

SPLITS = ("train", "valid", "test")
KINDS = ("categorical", "multi_categorical", "numeric")


@dataclass
class FeatureSpec:
    name: str
    kind: str
    source: str
    delimiter: str = "|"
    max_len: int | None = None
    min_count: int = 1


@dataclass
class DatasetSpec:
    path: Path  # the dataset.yaml
    name: str
    format: str
    files: dict[str, list[Path]]
    features: list[FeatureSpec]
    label: str  # source column of the (first) label
    label_name: str
    group_key: str | None
    extra: dict = field(default_factory=dict)
    header: bool = True
    column_names: list[str] | None = None

    @property
    def protocol(self) -> str | None:
        p = self.extra.get("protocol")
        return str(p) if p is not None else None

    def of_kind(self, kind: str) -> list[FeatureSpec]:
        return [f for f in self.features if f.kind == kind]


def load_spec(path: str | Path) -> DatasetSpec:
    path = Path(path).resolve()
    if path.is_dir():
        path = path / "dataset.yaml"
    raw = yaml.safe_load(path.read_text())
    root = Path(raw.get("root") or path.parent).resolve()
    files = {}
    for split in SPLITS:
        v = raw.get(split) or []
        v = [v] if isinstance(v, str) else v
        files[split] = [p if p.is_absolute() else root / p for p in map(Path, v)]
    schema = raw["schema"]
    feats = []
    for f in schema["features"]:
        kind = f["kind"]
        if kind not in KINDS:
            raise SystemExit(f"{path}: feature {f['name']!r} has kind {kind!r}; the peer harness supports {KINDS}")
        if f.get("hash_buckets"):
            raise SystemExit(f"{path}: feature {f['name']!r} uses hash_buckets, which the peer harness does not mirror")
        feats.append(FeatureSpec(name=f["name"], kind=kind, source=f.get("column") or f["name"],
                                 delimiter=f.get("delimiter", "|"), max_len=f.get("max_len"),
                                 min_count=int(f.get("min_count", 1))))
    labels = schema["labels"]
    if len(labels) != 1:
        raise SystemExit(f"{path}: the peer harness handles one label; got {[lab['name'] for lab in labels]}")
    lab = labels[0]
    return DatasetSpec(path=path, name=raw["name"], format=raw.get("format", "parquet"), files=files,
                       features=feats, label=lab.get("column") or lab["name"], label_name=lab["name"],
                       group_key=schema.get("group_key"), extra=raw.get("extra") or {},
                       header=raw.get("header", True), column_names=raw.get("column_names"))


def _columns(spec: DatasetSpec) -> list[str]:
    cols = [f.source for f in spec.features] + [spec.label]
    if spec.group_key:
        cols.append(spec.group_key)
    return list(dict.fromkeys(cols))


def read_split(spec: DatasetSpec, split: str) -> pa.Table:
    """The split's needed columns, categorical/multi as strings, numeric/label as float64."""
    paths = spec.files[split]
    if not paths:
        raise SystemExit(f"{spec.path}: no files for split {split!r}")
    cols = _columns(spec)
    tables = []
    for p in paths:
        if spec.format == "parquet":
            t = pq.read_table(p, columns=cols)
        elif spec.format in ("csv", "tsv"):
            ro = pacsv.ReadOptions(column_names=None if spec.header else spec.column_names)
            po = pacsv.ParseOptions(delimiter="," if spec.format == "csv" else "\t")
            str_cols = [f.source for f in spec.features if f.kind != "numeric"]
            if spec.group_key:
                str_cols.append(spec.group_key)
            co = pacsv.ConvertOptions(include_columns=cols, column_types={c: pa.string() for c in str_cols})
            t = pacsv.read_csv(p, read_options=ro, parse_options=po, convert_options=co)
        else:
            raise SystemExit(f"{spec.path}: format {spec.format!r} not supported by the peer harness")
        tables.append(t.select(cols))
    t = pa.concat_tables(tables, promote_options="permissive") if len(tables) > 1 else tables[0]
    out = {}
    for f in spec.features:
        col = t.column(f.source)
        if f.kind == "numeric":
            out[f.source] = pc.cast(col, pa.float64())
        elif f.kind == "multi_categorical" and pa.types.is_list(col.type):
            out[f.source] = pc.binary_join(pc.cast(col, pa.list_(pa.string())), f.delimiter)
        else:
            out[f.source] = pc.cast(col, pa.string())
    lab = t.column(spec.label)
    if pa.types.is_boolean(lab.type):
        lab = pc.cast(lab, pa.int8())
    out[spec.label] = pc.cast(lab, pa.float64())
    if spec.group_key and spec.group_key not in out:
        out[spec.group_key] = pc.cast(t.column(spec.group_key), pa.string())
    return pa.table(out)


def label_array(table: pa.Table, spec: DatasetSpec) -> np.ndarray:
    """Labels as float32 0/1 (accepts 0/1, -1/1 and booleans)."""
    y = table.column(spec.label).to_numpy(zero_copy_only=False)
    return (np.nan_to_num(y, nan=0.0) > 0).astype(np.float32)


def numeric_values(col: pa.ChunkedArray) -> np.ndarray:
    x = np.nan_to_num(col.to_numpy(zero_copy_only=False).astype(np.float64), nan=0.0)
    return np.log1p(np.maximum(x, 0.0)).astype(np.float32)


def _tokens(col: pa.ChunkedArray, delimiter: str) -> list[list[str]]:
    return [[] if (v is None or v == "") else [t for t in v.split(delimiter) if t != ""]
            for v in col.to_pylist()]


def _vocab(counts: Counter, min_count: int) -> dict[str, int]:
    kept = sorted(((v, c) for v, c in counts.items() if c >= min_count), key=lambda vc: (-vc[1], vc[0]))
    return {v: i for i, (v, _) in enumerate(kept, start=1)}


@dataclass
class Encoded:
    """Encoded arrays of one split: name -> array; plus labels and group keys."""
    x: dict[str, np.ndarray]
    y: np.ndarray
    groups: np.ndarray | None


@dataclass
class Encoder:
    spec: DatasetSpec
    vocabs: dict[str, dict[str, int]] = field(default_factory=dict)
    max_lens: dict[str, int] = field(default_factory=dict)

    def fit(self, train: pa.Table) -> "Encoder":
        for f in self.spec.features:
            col = train.column(f.source)
            if f.kind == "categorical":
                vc = pc.value_counts(pc.drop_null(col)).flatten()  # struct<values, counts>
                counts = Counter(dict(zip(vc[0].to_pylist(), vc[1].to_pylist())))
                counts.pop("", None)
                self.vocabs[f.name] = _vocab(counts, f.min_count)
            elif f.kind == "multi_categorical":
                toks = _tokens(col, f.delimiter)
                self.vocabs[f.name] = _vocab(Counter(t for row in toks for t in row), f.min_count)
                self.max_lens[f.name] = int(f.max_len or max(1, max(map(len, toks))))
        return self

    def vocab_size(self, name: str) -> int:
        """Embedding rows needed: values 1..V plus id 0."""
        return len(self.vocabs[name]) + 1

    def transform(self, table: pa.Table) -> Encoded:
        x = {}
        for f in self.spec.features:
            col = table.column(f.source)
            if f.kind == "numeric":
                x[f.name] = numeric_values(col)
            elif f.kind == "categorical":
                values = pa.array(list(self.vocabs[f.name]), type=pa.string())  # in id order 1..V
                idx = pc.index_in(col, value_set=values)  # 0-based position or null
                x[f.name] = pc.fill_null(pc.add(idx, 1), 0).to_numpy(zero_copy_only=False).astype(np.int64)
            else:
                voc, L = self.vocabs[f.name], self.max_lens[f.name]
                arr = np.zeros((len(col), L), dtype=np.int64)
                for i, row in enumerate(_tokens(col, f.delimiter)):
                    ids = [voc[t] for t in row if t in voc][:L]
                    arr[i, :len(ids)] = ids
                x[f.name] = arr
        groups = None
        if self.spec.group_key:
            groups = np.asarray(table.column(self.spec.group_key).to_pylist(), dtype=object)
        return Encoded(x=x, y=label_array(table, self.spec), groups=groups)


def batch_size_for(n_train: int) -> int:
    """PROTOCOLS.md: 4096, or 1024 when 4096 would give fewer than 20 batches per epoch."""
    return 4096 if n_train / 4096 >= 20 else 1024
