"""Encode a dataset once into memory-mapped arrays, cached by a fingerprint of (files, schema).

``prepare(spec)`` fits vocabularies and numeric statistics on the training split only, encodes
every split chunk by chunk (files larger than memory stream through) and writes::

    CACHE/<name>-<fingerprint>/
        meta.json                      feature space (vocab sizes, numeric stats), rows per split
        vocab/<feature>.{parquet,json} one vocabulary per vocabulary-owning feature
        <split>/<array>.bin            raw little-endian arrays; dtype and shape in meta.json

Arrays per split: ``categorical`` (N, F_cat) int32, ``numeric`` (N, F_num) float32 normalised
(missing -> 0), ``numeric_raw`` (N, F_num) float32 (missing -> NaN), ``multi.<f>`` (N, L) int32,
``seq.<f>`` (N, L) int32 (+ ``seq.<f>.ts`` int64, ``seq.<f>.<side>`` int32), ``vec.<f>`` (N, d)
float32, ``labels`` (N, T) float32, ``label_mask`` (N, T) float32 if any task is masked,
``weights`` (N,) float32, ``groups`` (N,) int64, ``timestamp`` (N,) int64 (the sample's event time).
Padding id is 0 everywhere.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from untwine.core.dataset_spec import SPLITS, DatasetSpec
from untwine.core.features import FeatureSpace, NumericStats
from untwine.core.io import atomic_write_json
from untwine.core.paths import cache_root
from untwine.core.schema import Feature, FeatureKind, Schema, VectorTable
from untwine.data.readers import BadInputError, BadRowReport, ColumnTypes, OnBadRows, file_columns, iter_chunks
from untwine.data.vocab import MISSING, NUM_RESERVED, CountAccumulator, Vocab, fnv1a64

ENCODING_VERSION = 2  # 2: numeric quantiles and integer flag, sample timestamps


# ------------------------------------------------------------------ schema vs data
def column_types(schema: Schema) -> ColumnTypes:
    strings, numbers, lists = [], [], []
    for f in schema.features:
        if f.kind is FeatureKind.NUMERIC:
            numbers.append(f.source)
        elif f.kind is FeatureKind.VECTOR:
            lists.append(f.source)
        else:
            strings.append(f.source)
        if f.timestamps:
            strings.append(f.timestamps)
        strings.extend(f.side_fields)
    labels = [lab.source for lab in schema.labels]
    numbers += labels + [lab.mask_column for lab in schema.labels if lab.mask_column]
    if schema.weight:
        numbers.append(schema.weight)
    if schema.group_key:
        strings.append(schema.group_key)
    if schema.timestamp:
        numbers.append(schema.timestamp)
    dedup = lambda xs: tuple(dict.fromkeys(xs))  # noqa: E731
    return ColumnTypes(strings=dedup(c for c in strings if c not in numbers), numbers=dedup(numbers),
                       required=dedup(labels), lists=dedup(lists))


def validate_against_files(spec: DatasetSpec, splits=SPLITS) -> None:
    """Fail before any work if a file is missing or lacks a column the schema reads."""
    needed = spec.schema.source_columns()
    for split in splits:
        for path in spec.files(split):
            if not path.exists():
                raise FileNotFoundError(f"{path}: listed for split {split!r} of dataset {spec.name!r} but missing")
            have = set(file_columns(spec, path))
            missing = [c for c in needed if c not in have]
            if missing:
                raise BadInputError(
                    f"{path}: schema of dataset {spec.name!r} reads column(s) {missing} which the file does not "
                    f"have; it has {sorted(have)}")


# ------------------------------------------------------------------ fingerprint
def fingerprint(spec: DatasetSpec, on_bad_rows: str) -> str:
    files = []
    for split in SPLITS:
        for p in spec.files(split):
            st = p.stat()
            files.append([split, str(p.resolve()), st.st_size, st.st_mtime_ns])
    for table in spec.schema.vector_tables:  # a side file's change re-encodes like a data file's
        path = spec.resolve(table.file)
        st = path.stat() if path.exists() else None
        files.append(["table", str(path.resolve()), st and st.st_size, st and st.st_mtime_ns])
    blob = json.dumps({"v": ENCODING_VERSION, "schema": spec.schema.to_dict(), "format": spec.format,
                       "header": spec.header, "columns": spec.column_names, "files": files,
                       "bad_rows": on_bad_rows}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def build_vector_table(spec: DatasetSpec, table: VectorTable, vocab: Vocab, log=print) -> np.ndarray:
    """(vocab size, dim) float32 rows aligned with the key's ids: PAD, OOV and ids without a vector stay zero.
    Keys outside the vocabulary (values never seen in training) are dropped and counted."""
    path = spec.resolve(table.file)
    if not path.exists():
        raise FileNotFoundError(f"vector table {table.name!r}: {path} does not exist")
    key_col = table.key_column or spec.schema.feature(table.key).source
    t = pq.read_table(path)
    for col in (key_col, table.vector_column):
        if col not in t.column_names:
            raise BadInputError(f"{path}: vector table {table.name!r} expects a column {col!r}; it has {t.column_names}")
    vectors = t.column(table.vector_column).combine_chunks()
    lengths = pc.list_value_length(vectors).to_numpy(zero_copy_only=False)
    bad = np.flatnonzero(lengths != table.dim)
    if len(bad):
        raise BadInputError(f"{path}: row {bad[0] + 1}, column {table.vector_column!r}: expected a vector of "
                            f"{table.dim} floats, found {lengths[bad[0]]}")
    flat = np.asarray(pc.list_flatten(vectors).to_numpy(zero_copy_only=False), dtype=np.float32)
    ids = vocab.encode(t.column(key_col))
    out = np.zeros((vocab.size, table.dim), dtype=np.float32)
    known = ids >= NUM_RESERVED
    out[ids[known]] = flat.reshape(-1, table.dim)[known]
    if (~known).any():
        log(f"{spec.name}: vector table {table.name!r}: {int((~known).sum())} of {len(ids)} keys are not in the "
            f"{table.key!r} vocabulary (never seen in training) and are dropped")
    return out


# ------------------------------------------------------------------ fitting
QUANTILE_POINTS = 1000  # quantiles at 0, 1/1000, ..., 1
QUANTILE_SAMPLE = 200_000  # values kept per numeric feature to estimate them (uniform reservoir)


class _NumericAccumulator:
    def __init__(self, transform: str) -> None:
        self.transform = transform
        self.sample = np.empty(0, dtype=np.float64)
        self.seen = 0  # finite raw values offered to the reservoir
        self.integer = True
        self.rng = np.random.default_rng(0)
        self.n = 0
        self.total = 0.0
        self.total_sq = 0.0
        self.lo = np.inf
        self.hi = -np.inf
        self.missing = 0

    def add(self, x: np.ndarray) -> None:
        self._reservoir(np.asarray(x, dtype=np.float64))
        y = _pre_transform(x, self.transform)
        ok = np.isfinite(y)
        self.missing += int((~ok).sum())
        y = y[ok]
        if y.size:
            self.n += y.size
            self.total += float(y.sum(dtype=np.float64))
            self.total_sq += float(np.square(y, dtype=np.float64).sum())
            self.lo = min(self.lo, float(y.min()))
            self.hi = max(self.hi, float(y.max()))

    def _reservoir(self, x: np.ndarray) -> None:
        x = x[np.isfinite(x)]
        if not x.size:
            return
        self.integer = self.integer and bool(np.all(x == np.round(x)))
        room = max(QUANTILE_SAMPLE - self.sample.size, 0)
        if room:
            self.sample = np.concatenate([self.sample, x[:room]])
            self.seen += min(room, x.size)
            x = x[room:]
        if x.size:  # each later value replaces a random slot with probability cap / (its index + 1)
            idx = self.seen + np.arange(x.size)
            slot = self.rng.integers(0, idx + 1)
            keep = slot < QUANTILE_SAMPLE
            self.sample[slot[keep]] = x[keep]
            self.seen += x.size

    def stats(self) -> NumericStats:
        mean = self.total / self.n if self.n else 0.0
        var = max(self.total_sq / self.n - mean * mean, 0.0) if self.n else 0.0
        q = (tuple(float(v) for v in np.quantile(self.sample, np.linspace(0, 1, QUANTILE_POINTS + 1)))
             if self.sample.size else ())
        return NumericStats(transform=self.transform, mean=mean, std=float(np.sqrt(var)) or 1.0,
                            min=self.lo if self.n else 0.0, max=self.hi if self.n else 1.0,
                            count=self.n, missing=self.missing, quantiles=q,
                            integer=self.integer and self.sample.size > 0)


def _pre_transform(x: np.ndarray, transform: str) -> np.ndarray:
    if transform == "log1p_standard":
        return np.sign(x) * np.log1p(np.abs(x))
    return x


def normalise(x: np.ndarray, st: NumericStats) -> np.ndarray:
    """Apply the fitted transform; missing values become 0 (the training mean after standardising)."""
    y = _pre_transform(x.astype(np.float64), st.transform)
    if st.transform in ("standard", "log1p_standard"):
        y = (y - st.mean) / st.std
    elif st.transform == "minmax":
        y = (y - st.min) / ((st.max - st.min) or 1.0)
    y = np.where(np.isfinite(y), y, 0.0)
    return y.astype(np.float32)


def _list_values(col: pa.ChunkedArray | pa.Array, delimiter: str) -> pa.ListArray:
    col = pc.cast(col, pa.string())
    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks()
    # an empty or null cell is an empty list, not a list holding one empty string
    col = pc.if_else(pc.equal(pc.fill_null(col, ""), ""), pa.scalar(None, pa.string()), col)
    return pc.split_pattern(col, delimiter)


def fit(spec: DatasetSpec, on_bad_rows: OnBadRows, report: BadRowReport, progress=None) -> tuple[dict[str, Vocab], dict[str, NumericStats]]:
    schema = spec.schema
    types = column_types(schema)
    owners = [f for f in schema.features if f.kind in (FeatureKind.CATEGORICAL, FeatureKind.MULTI_CATEGORICAL)
              and f.vocab_from is None]
    # sequences that own their vocabulary (no vocab_from) are fitted from their own values
    owners += [f for f in schema.sequences if f.vocab_from is None]
    counters = {f.name: CountAccumulator() for f in owners if f.hash_buckets is None}
    numerics = {f.name: _NumericAccumulator(f.transform) for f in schema.numeric}
    for chunk in iter_chunks(spec, "train", types, on_bad_rows, report):
        for f in owners:
            if f.name not in counters:
                continue
            col = chunk.column(f.source)
            if f.kind is FeatureKind.CATEGORICAL:
                counters[f.name].add(col)
            else:
                counters[f.name].add(pc.list_flatten(_list_values(col, f.delimiter)))
        for f in schema.numeric:
            numerics[f.name].add(chunk.column(f.source).to_numpy(zero_copy_only=False))
        if progress:
            progress(chunk.num_rows)
    vocabs: dict[str, Vocab] = {}
    for f in owners:
        if f.hash_buckets:
            vocabs[f.name] = Vocab.hashing(f.hash_buckets)
        else:
            vals, cnts = counters[f.name].result()
            vocabs[f.name] = Vocab.from_counts(vals, cnts, f.min_count)
    return vocabs, {name: acc.stats() for name, acc in numerics.items()}


# ------------------------------------------------------------------ encoding
class _ArrayWriter:
    """Appends row blocks of one array to a raw binary file."""

    def __init__(self, path: Path, dtype, width: int | None) -> None:
        self.path, self.dtype, self.width, self.rows = path, np.dtype(dtype), width, 0
        self.fh = open(path, "wb")

    def write(self, block: np.ndarray) -> None:
        block = np.ascontiguousarray(block, dtype=self.dtype)
        self.fh.write(block.tobytes())
        self.rows += block.shape[0]

    def close(self) -> dict:
        self.fh.close()
        shape = [self.rows] if self.width is None else [self.rows, self.width]
        return {"dtype": self.dtype.str, "shape": shape}


def _pad_lists(lists: pa.ListArray, ids: np.ndarray, max_len: int, keep: str, dtype=np.int32) -> np.ndarray:
    """Scatter flattened per-row lists into (N, max_len), keeping the first or the last max_len."""
    n = len(lists)
    offsets = lists.offsets.to_numpy()
    lengths = np.diff(offsets)
    out = np.zeros((n, max_len), dtype=dtype)
    if ids.size == 0:
        return out
    row = np.repeat(np.arange(n), lengths)
    pos = np.arange(ids.size) - np.repeat(offsets[:-1] - offsets[0], lengths)
    if keep == "last":  # most recent max_len, still oldest first
        pos = pos - np.repeat(np.maximum(lengths - max_len, 0), lengths)
    ok = (pos >= 0) & (pos < max_len)
    out[row[ok], pos[ok]] = ids[ok]
    return out


def _encode_chunk(chunk: pa.Table, schema: Schema, vocabs: dict[str, Vocab], stats: dict[str, NumericStats],
                  path_hint: str, labels: bool = True) -> dict[str, np.ndarray]:
    n = chunk.num_rows
    out: dict[str, np.ndarray] = {}
    cats = schema.categorical
    if cats:
        block = np.empty((n, len(cats)), dtype=np.int32)
        for j, f in enumerate(cats):
            block[:, j] = vocabs[schema.vocab_owner(f)].encode(chunk.column(f.source))
        out["categorical"] = block
    if schema.numeric:
        raw = np.stack([chunk.column(f.source).to_numpy(zero_copy_only=False).astype(np.float32)
                        for f in schema.numeric], axis=1)
        out["numeric_raw"] = raw
        out["numeric"] = np.stack([normalise(raw[:, j], stats[f.name]) for j, f in enumerate(schema.numeric)], axis=1)
    for f in schema.multi_categorical:
        lists = _list_values(chunk.column(f.source), f.delimiter)
        ids = vocabs[schema.vocab_owner(f)].encode(pc.list_flatten(lists))
        out[f"multi.{f.name}"] = _pad_lists(lists, ids, f.max_len, keep="first")
    for f in schema.sequences:
        lists = _list_values(chunk.column(f.source), f.delimiter)
        ids = vocabs[schema.vocab_owner(f)].encode(pc.list_flatten(lists))
        out[f"seq.{f.name}"] = _pad_lists(lists, ids, f.max_len, keep="last")
        lengths = np.diff(lists.offsets.to_numpy())
        if f.timestamps:
            ts_lists = _list_values(chunk.column(f.timestamps), f.delimiter)
            _check_aligned(lengths, ts_lists, f.name, f.timestamps, path_hint)
            ts = pc.cast(pc.list_flatten(ts_lists), pa.int64()).to_numpy(zero_copy_only=False)
            out[f"seq.{f.name}.ts"] = _pad_lists(ts_lists, ts, f.max_len, keep="last", dtype=np.int64)
        for side, ref in f.side_fields.items():
            side_lists = _list_values(chunk.column(side), f.delimiter)
            _check_aligned(lengths, side_lists, f.name, side, path_hint)
            sids = vocabs[schema.vocab_owner(schema.feature(ref))].encode(pc.list_flatten(side_lists))
            out[f"seq.{f.name}.{side}"] = _pad_lists(side_lists, sids, f.max_len, keep="last")
    for f in schema.vectors:
        out[f"vec.{f.name}"] = _vector_block(chunk.column(f.source), f, path_hint)
    if labels:
        out.update(_label_arrays(chunk, schema, path_hint))
    if schema.group_key:
        out["groups"] = fnv1a64(chunk.column(schema.group_key)).view(np.int64)
    if schema.timestamp:
        out["timestamp"] = _timestamps(chunk.column(schema.timestamp), schema.timestamp, path_hint)
    return out


def _label_arrays(chunk: pa.Table, schema: Schema, path_hint: str) -> dict[str, np.ndarray]:
    """``labels`` (and ``label_mask``, ``weights`` when the schema has them) of a chunk."""
    out: dict[str, np.ndarray] = {}
    labels = []
    for lab in schema.labels:
        y = chunk.column(lab.source).to_numpy(zero_copy_only=False)
        y = np.where(y < 0, 0.0, y)  # -1/1 labels
        bad = ~np.isin(y, (0.0, 1.0))
        if bad.any():
            r = int(np.flatnonzero(bad)[0])
            raise BadInputError(f"{path_hint}: label column {lab.source!r} row {r + 1} of the chunk: expected 0/1 "
                                f"(or -1/1), found {y[r]!r}")
        labels.append(y.astype(np.float32))
    out["labels"] = np.stack(labels, axis=1)
    if any(lab.mask_column for lab in schema.labels):
        out["label_mask"] = np.stack([
            (chunk.column(lab.mask_column).to_numpy(zero_copy_only=False) > 0).astype(np.float32)
            if lab.mask_column else np.ones(chunk.num_rows, np.float32) for lab in schema.labels], axis=1)
    if schema.weight:
        out["weights"] = np.nan_to_num(chunk.column(schema.weight).to_numpy(zero_copy_only=False), nan=1.0).astype(np.float32)
    return out


def _timestamps(col: pa.ChunkedArray, name: str, path_hint: str) -> np.ndarray:
    try:
        ts = pc.cast(col, pa.int64())
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as e:
        raise BadInputError(f"{path_hint}: timestamp column {name!r}: expected integer seconds ({e})") from None
    if ts.null_count:
        r = int(np.flatnonzero(pc.is_null(ts).to_numpy(zero_copy_only=False))[0])
        raise BadInputError(f"{path_hint}: chunk row {r + 1}: timestamp column {name!r} is empty")
    return ts.to_numpy(zero_copy_only=False).astype(np.int64)


def _check_aligned(lengths: np.ndarray, other: pa.ListArray, name: str, col: str, path_hint: str) -> None:
    other_len = np.diff(other.offsets.to_numpy())
    bad = np.flatnonzero(other_len != lengths)
    if bad.size:
        r = int(bad[0])
        raise BadInputError(f"{path_hint}: chunk row {r + 1}: column {col!r} has {other_len[r]} entries but "
                            f"sequence {name!r} has {lengths[r]}")


def _vector_block(col: pa.ChunkedArray, f: Feature, path_hint: str) -> np.ndarray:
    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks()
    if pa.types.is_string(col.type) or pa.types.is_large_string(col.type):
        col = pc.cast(pc.split_pattern(pc.utf8_trim_whitespace(col), f.delimiter), pa.list_(pa.float32()))
    lengths = pc.list_value_length(col).to_numpy(zero_copy_only=False)
    bad = np.flatnonzero(np.nan_to_num(lengths, nan=-1) != f.dim)
    if bad.size:
        r = int(bad[0])
        raise BadInputError(f"{path_hint}: row {r + 1} of the chunk, column {f.source!r}: expected a vector of "
                            f"{f.dim} numbers, found {lengths[r]}")
    flat = pc.list_flatten(col).to_numpy(zero_copy_only=False).astype(np.float32)
    return flat.reshape(len(col), f.dim)


# ------------------------------------------------------------------ entry point
@dataclass
class PreparedData:
    """Where a prepared dataset lives and what it holds."""

    root: Path
    space: FeatureSpace
    rows: dict[str, int]
    arrays: dict[str, dict[str, dict]]  # split -> array name -> {dtype, shape}
    bad_rows: dict[str, dict] = field(default_factory=dict)
    seconds: float = 0.0
    from_cache: bool = False

    def vocab(self, feature: str) -> Vocab:
        return Vocab.load(self.root / "vocab" / feature)

    def vector_table(self, name: str) -> np.ndarray:
        """The schema's vector table ``name`` aligned with its key's ids (see :func:`build_vector_table`)."""
        return np.load(self.root / "tables" / f"{name}.npy", allow_pickle=False)


def prepare(spec: DatasetSpec, cache_dir: Path | None = None, on_bad_rows: OnBadRows = "error",
            splits=SPLITS, progress: bool = False, log=print) -> PreparedData:
    """Encode ``spec`` into the cache (or reuse a complete earlier encoding with the same fingerprint)."""
    splits = tuple(s for s in splits if spec.files(s))
    validate_against_files(spec, splits)
    cache_dir = Path(cache_dir) if cache_dir else cache_root()
    fp = fingerprint(spec, on_bad_rows)
    root = cache_dir / f"{spec.name}-{fp}"
    if (root / "meta.json").exists():
        prepared = load_prepared(root)
        prepared.from_cache = True
        return prepared
    t0 = time.perf_counter()
    tmp = cache_dir / f".{spec.name}-{fp}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "vocab").mkdir(parents=True)
    schema = spec.schema
    bar = _progress_bar(progress, f"fit {spec.name}")
    train_report = BadRowReport()
    vocabs, stats = fit(spec, on_bad_rows, train_report, progress=bar.update if bar is not None else None)
    if bar is not None:
        bar.close()
    for name, v in vocabs.items():
        v.save(tmp / "vocab" / name)
    if schema.vector_tables:
        (tmp / "tables").mkdir()
    for table in schema.vector_tables:
        np.save(tmp / "tables" / f"{table.name}.npy", build_vector_table(spec, table, vocabs[table.key], log),
                allow_pickle=False)
    space = FeatureSpace(schema=schema, vocab_sizes={f.name: vocabs[schema.vocab_owner(f)].size
                                                     for f in schema.features if f.name in vocabs or f.vocab_from},
                         numeric_stats=stats)
    rows, arrays, reports = {}, {}, {}
    for split in splits:
        rows[split], arrays[split], reports[split] = _encode_split(spec, split, vocabs, stats, tmp, on_bad_rows,
                                                                   progress, log)
    meta = {"version": ENCODING_VERSION, "name": spec.name, "fingerprint": fp, "space": space.to_dict(),
            "rows": rows, "arrays": arrays, "bad_rows": reports, "seconds": time.perf_counter() - t0}
    atomic_write_json(tmp / "meta.json", meta)
    try:
        os.rename(tmp, root)
    except OSError:  # another process finished the same encoding first: use theirs
        shutil.rmtree(tmp, ignore_errors=True)
    return load_prepared(root)


def _encode_split(spec: DatasetSpec, split: str, vocabs: dict[str, Vocab], stats: dict[str, NumericStats],
                  root: Path, on_bad_rows: OnBadRows, progress: bool, log) -> tuple[int, dict, dict]:
    schema = spec.schema
    (root / split).mkdir(parents=True, exist_ok=True)
    writers: dict[str, _ArrayWriter] = {}
    report = BadRowReport()
    bar = _progress_bar(progress, f"encode {spec.name}/{split}")
    for chunk in iter_chunks(spec, split, column_types(schema), on_bad_rows, report):
        block = _encode_chunk(chunk, schema, vocabs, stats, f"{spec.name}/{split}")
        for key, arr in block.items():
            if key not in writers:
                writers[key] = _ArrayWriter(root / split / f"{key}.bin", arr.dtype,
                                            arr.shape[1] if arr.ndim == 2 else None)
            writers[key].write(arr)
        if bar is not None:
            bar.update(chunk.num_rows)
    if bar is not None:
        bar.close()
    arrays = {k: w.close() for k, w in writers.items()}
    rows = next(iter(arrays.values()))["shape"][0] if arrays else 0
    if report.total:
        log(f"{spec.name}/{split}: {report.summary()}")
    return rows, arrays, {"skipped": report.total, "by_reason": dict(report.counts), "examples": report.examples}


def encode_with_vocab(spec: DatasetSpec, space: FeatureSpace, vocab_dir: Path, split: str,
                      cache_dir: Path | None = None, on_bad_rows: OnBadRows = "error", log=print) -> PreparedData:
    """Encode one split with already-fitted vocabularies and numeric stats (evaluation, serving).

    Unseen values map to OOV. The schema must be the one the vocabularies were fitted with.
    """
    if spec.schema.to_dict() != space.schema.to_dict():
        raise ValueError(f"dataset {spec.name!r} has a different schema from the one the run was trained on")
    validate_against_files(spec, (split,))
    schema = space.schema
    vocabs = load_vocabs(space, vocab_dir)
    digest = hashlib.sha256()
    for name in sorted(vocabs):
        digest.update((Path(vocab_dir) / f"{name}.parquet").read_bytes())
    vocab_hash = digest.hexdigest()[:8]
    root = (Path(cache_dir) if cache_dir else cache_root()) / f"{spec.name}-{fingerprint(spec, on_bad_rows)}-v{vocab_hash}-{split}"
    if not (root / "meta.json").exists():
        tmp = root.with_name(root.name + f".tmp-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        n, arrays, report = _encode_split(spec, split, vocabs, space.numeric_stats, tmp, on_bad_rows, False, log)
        atomic_write_json(tmp / "meta.json", {"version": ENCODING_VERSION, "name": spec.name, "space": space.to_dict(),
                                              "rows": {split: n}, "arrays": {split: arrays},
                                              "bad_rows": {split: report}})
        try:
            os.rename(tmp, root)
        except OSError:
            shutil.rmtree(tmp, ignore_errors=True)
    return load_prepared(root)


def load_vocabs(space: FeatureSpace, vocab_dir: Path) -> dict[str, Vocab]:
    """The vocabularies a run was trained with, one per vocabulary-owning feature."""
    return {f.name: Vocab.load(Path(vocab_dir) / f.name) for f in space.sparse_features() if f.vocab_from is None}


def table_from_records(records: list[dict], schema: Schema, where: str = "records") -> pa.Table:
    """Feature records (JSON objects: column -> value) as an arrow table typed as the file readers type
    them: strings for categorical / multi-valued / sequence columns (lists are joined with the feature's
    delimiter), float64 for numeric and timestamp columns, float32 lists for vectors. A missing column
    is a null (MISSING, or NaN for numbers), except the timestamp, which is required."""
    types = column_types(schema)
    delims = {f.source: f.delimiter for f in schema.features if f.kind in (FeatureKind.MULTI_CATEGORICAL, FeatureKind.SEQUENCE)}
    for f in schema.sequences:
        for col in (f.timestamps, *f.side_fields):
            if col:
                delims[col] = f.delimiter
    label_cols = {lab.source for lab in schema.labels} | {lab.mask_column for lab in schema.labels if lab.mask_column}
    cols: dict[str, pa.Array] = {}
    for name in types.strings:
        d = delims.get(name)
        vals = []
        for r in records:
            v = r.get(name)
            if isinstance(v, list):
                if d is None:
                    raise BadInputError(f"{where}: column {name!r}: expected one value, found a list")
                v = d.join(str(x) for x in v)
            vals.append(None if v is None else str(v))
        cols[name] = pa.array(vals, pa.string())
    for name in types.numbers:
        if name in label_cols or name == schema.weight:
            continue
        vals = [r.get(name) for r in records]
        for i, v in enumerate(vals):
            if v is not None and not isinstance(v, (int, float)):
                raise BadInputError(f"{where}: record {i + 1}, column {name!r}: expected a number, found {v!r}")
            if v is None and name == schema.timestamp:
                raise BadInputError(f"{where}: record {i + 1}: the timestamp column {name!r} is missing")
        cols[name] = pa.array([float("nan") if v is None else float(v) for v in vals], pa.float64())
    for name in types.lists:
        vals = [r.get(name) for r in records]
        for i, v in enumerate(vals):
            if not isinstance(v, list):
                raise BadInputError(f"{where}: record {i + 1}, column {name!r}: expected a list of numbers, found {v!r}")
        cols[name] = pa.array(vals, pa.list_(pa.float32()))
    return pa.table(cols) if cols else pa.table({"_": pa.nulls(len(records))})


def encode_features(table: pa.Table, space: FeatureSpace, vocabs: dict[str, Vocab], where: str = "rows") -> dict[str, np.ndarray]:
    """Encode in-memory rows (streaming, serving) with fitted vocabularies: the feature arrays, group
    and timestamp of ``prepare``, no labels. Unseen values map to OOV."""
    return _encode_chunk(table, space.schema, vocabs, space.numeric_stats, where, labels=False)


def load_prepared(root: Path) -> PreparedData:
    meta = json.loads((Path(root) / "meta.json").read_text())
    return PreparedData(root=Path(root), space=FeatureSpace.from_dict(meta["space"]), rows=meta["rows"],
                        arrays=meta["arrays"], bad_rows=meta.get("bad_rows", {}), seconds=meta.get("seconds", 0.0))


def _progress_bar(enabled: bool, desc: str):
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(desc=desc, unit=" rows", unit_scale=True, leave=False, disable=None)  # off when not a terminal


__all__ = ["prepare", "encode_with_vocab", "load_prepared", "PreparedData", "validate_against_files", "fingerprint", "normalise",
           "MISSING"]
