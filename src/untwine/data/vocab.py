"""Vocabularies: value -> id with PAD = 0 and OOV = 1, fitted on the training split only.

Ids of known values start at 2, ordered by training count (descending, ties by value) so the
encoding is deterministic. Values below ``min_count`` map to OOV. With ``hash_buckets`` nothing is
fitted: id = 2 + fnv1a64(value) mod buckets (stable across runs, machines and library versions).
Missing values are encoded as the token ``MISSING`` and get an id like any other value when frequent.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from untwine.core.io import atomic_path, atomic_write_json

PAD, OOV = 0, 1
NUM_RESERVED = 2
MISSING = "__missing__"
SMALL_INPUT = 256  # inputs up to this many values are encoded through a cached dict (serving, streaming)

_FNV_OFFSET = np.uint64(0xCBF29CE484222325)
_FNV_PRIME = np.uint64(0x100000001B3)


def fnv1a64(values: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """Vectorised 64-bit FNV-1a of each string's UTF-8 bytes (uint64). Nulls hash as ``MISSING``."""
    arr = pc.fill_null(pc.cast(values, pa.string()), MISSING)
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    n = len(arr)
    if n == 0:
        return np.zeros(0, dtype=np.uint64)
    offsets = np.frombuffer(arr.buffers()[1], dtype=np.int32, count=n + 1, offset=arr.offset * 4)
    data = np.frombuffer(arr.buffers()[2], dtype=np.uint8) if arr.buffers()[2] is not None else np.zeros(0, np.uint8)
    lengths = np.diff(offsets)
    h = np.full(n, _FNV_OFFSET, dtype=np.uint64)
    with np.errstate(over="ignore"):
        for pos in range(int(lengths.max(initial=0))):
            live = lengths > pos
            byte = data[offsets[:-1][live] + pos].astype(np.uint64)
            h[live] = (h[live] ^ byte) * _FNV_PRIME
    return h


def fnv1a64_text(text: str | None) -> int:
    """:func:`fnv1a64` of one string (None hashes as ``MISSING``), in Python integers: for one request's key
    the vectorised version's array set-up costs 50-150 us, this about 2."""
    h = 0xCBF29CE484222325
    for byte in (MISSING if text is None else text).encode():
        h = ((h ^ byte) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return h


@dataclass
class Vocab:
    """A fitted vocabulary (``values`` ordered by id - 2) or a hashing one (``hash_buckets``)."""

    values: pa.Array  # string array; id of values[i] is i + 2
    counts: np.ndarray
    hash_buckets: int | None = None
    min_count: int = 1

    @property
    def size(self) -> int:
        """Number of ids including PAD and OOV: the embedding table's row count."""
        return NUM_RESERVED + (self.hash_buckets if self.hash_buckets else len(self.values))

    @classmethod
    def hashing(cls, buckets: int) -> "Vocab":
        return cls(values=pa.array([], pa.string()), counts=np.zeros(0, np.int64), hash_buckets=buckets)

    @classmethod
    def from_counts(cls, values: pa.Array, counts: np.ndarray, min_count: int = 1) -> "Vocab":
        keep = counts >= min_count
        values, counts = pc.filter(values, pa.array(keep)), counts[keep]
        # count descending, value ascending: the same data always gives the same ids
        order = pc.sort_indices(pa.table({"c": counts, "v": values}),
                                sort_keys=[("c", "descending"), ("v", "ascending")])
        return cls(values=pc.take(values, order), counts=counts[order.to_numpy()], min_count=min_count)

    def encode(self, values: pa.Array | pa.ChunkedArray) -> np.ndarray:
        """Ids (int32) of ``values``; unseen values -> OOV, nulls -> the id of ``MISSING``."""
        values = pc.fill_null(pc.cast(values, pa.string()), MISSING)
        if self.hash_buckets:
            return (NUM_RESERVED + fnv1a64(values) % np.uint64(self.hash_buckets)).astype(np.int32)
        if len(values) <= SMALL_INPUT:
            # index_in hashes the whole value set on every call (~100 ms for 100k values): a request's
            # few values are looked up in a dict built once instead
            lookup = self._lookup()
            return np.fromiter((lookup.get(v, OOV) for v in values.to_pylist()), np.int32, len(values))
        idx = pc.index_in(values, value_set=self.values)
        idx = pc.fill_null(idx, OOV - NUM_RESERVED)
        return (np.asarray(idx.to_numpy(zero_copy_only=False), dtype=np.int32) + NUM_RESERVED)

    def _lookup(self) -> dict[str, int]:
        lookup = self.__dict__.get("_lookup_cache")
        if lookup is None:  # a benign race: two threads may both build the same dict
            lookup = {v: i + NUM_RESERVED for i, v in enumerate(self.values.to_pylist())}
            self.__dict__["_lookup_cache"] = lookup
        return lookup

    def decode(self, ids: np.ndarray) -> list[str | None]:
        """Values of ``ids`` (None for PAD/OOV); not available for hashing vocabularies."""
        if self.hash_buckets:
            raise ValueError("a hashing vocabulary cannot decode ids")
        vals = self.values.to_pylist()
        return [vals[i - NUM_RESERVED] if i >= NUM_RESERVED else None for i in np.asarray(ids).tolist()]

    # ---- persistence: parquet for values, JSON for metadata; nothing is pickled
    def save(self, path_stem: Path) -> None:
        meta = {"size": self.size, "hash_buckets": self.hash_buckets, "min_count": self.min_count,
                "num_values": len(self.values)}
        with atomic_path(path_stem.with_suffix(".parquet")) as tmp:
            pq.write_table(pa.table({"value": self.values, "count": self.counts}), tmp)
        atomic_write_json(path_stem.with_suffix(".json"), meta)

    @classmethod
    def load(cls, path_stem: Path) -> "Vocab":
        meta = json.loads(path_stem.with_suffix(".json").read_text())
        t = pq.read_table(path_stem.with_suffix(".parquet"))
        return cls(values=t.column("value").combine_chunks(), counts=t.column("count").to_numpy(),
                   hash_buckets=meta["hash_buckets"], min_count=meta["min_count"])


class CountAccumulator:
    """Streaming value counts over chunks; memory bounded by the number of distinct values."""

    def __init__(self) -> None:
        self._parts: list[pa.Table] = []
        self._rows = 0

    def add(self, values: pa.Array | pa.ChunkedArray) -> None:
        values = pc.fill_null(pc.cast(values, pa.string()), MISSING)
        vc = pc.value_counts(values)
        self._parts.append(pa.table({"v": vc.field("values"), "c": vc.field("counts")}))
        self._rows += sum(len(p) for p in self._parts[-1:])
        if len(self._parts) >= 4:  # bounded memory: merge partial counts often
            self._parts = [self._merged()]

    def _merged(self) -> pa.Table:
        t = pa.concat_tables(self._parts)
        g = t.group_by("v").aggregate([("c", "sum")])
        return g.rename_columns(["v", "c"])

    def result(self) -> tuple[pa.Array, np.ndarray]:
        if not self._parts:
            return pa.array([], pa.string()), np.zeros(0, np.int64)
        t = self._merged()
        return t.column("v").combine_chunks(), t.column("c").to_numpy().astype(np.int64)
