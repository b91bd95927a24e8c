"""One feature record (a JSON object) encoded without pyarrow: the serving path of a single request.

``encode_features(table_from_records([record]))`` costs about 1 ms per request in pyarrow call
overhead, a tenth of the whole funnel; this module gives the same arrays for one record with plain
Python and numpy. The two paths must agree exactly: ``tests/data/test_record.py`` checks them against
each other on random records (lists and scalars, missing values, unknown ids, long histories, bad types).

Semantics (those of ``table_from_records`` then ``encode_features``): string columns take ``str(v)``,
a list joined by the feature's delimiter (a list where one value is expected is an error); an empty or
missing cell is an empty list / the ``MISSING`` token; numbers must be JSON numbers (missing -> NaN,
normalised to 0); vectors lists of ``dim`` numbers; timestamps whole seconds.
"""
from __future__ import annotations

import math

import numpy as np
import pyarrow as pa

from untwine.core.features import FeatureSpace
from untwine.data.encode import normalise
from untwine.data.readers import BadInputError
from untwine.data.vocab import MISSING, OOV, Vocab, fnv1a64_text


def _text(record: dict, column: str, delimiter: str | None, where: str) -> str | None:
    v = record.get(column)
    if isinstance(v, list):
        if delimiter is None:
            raise BadInputError(f"{where}: column {column!r}: expected one value, found a list")
        return delimiter.join(str(x) for x in v)
    return None if v is None else str(v)


def _ids(vocab: Vocab, values: list[str | None]) -> np.ndarray:
    if vocab.hash_buckets:  # rare: the vectorised hash on a tiny array
        return vocab.encode(pa.array(values, pa.string())).astype(np.int64)
    lookup = vocab._lookup()
    return np.fromiter((lookup.get(MISSING if v is None else v, OOV) for v in values), np.int64, len(values))


def _tokens(text: str | None, delimiter: str) -> list[str]:
    return [] if not text else text.split(delimiter)


def _padded(ids: np.ndarray, max_len: int, keep: str, dtype=np.int32) -> np.ndarray:
    out = np.zeros((1, max_len), dtype=dtype)
    kept = ids[:max_len] if keep == "first" else ids[-max_len:] if len(ids) else ids
    out[0, :len(kept)] = kept
    return out


def _number(record: dict, column: str, where: str) -> float:
    v = record.get(column)
    if v is not None and not isinstance(v, (int, float)):
        raise BadInputError(f"{where}: record 1, column {column!r}: expected a number, found {v!r}")
    return math.nan if v is None else float(v)


def _seconds(texts: list[str], column: str, where: str) -> np.ndarray:
    try:
        return np.array([int(t) for t in texts], dtype=np.int64)
    except ValueError:
        raise BadInputError(f"{where}: column {column!r}: expected integer seconds, found {texts[:3]}") from None


def encode_record(record: dict, space: FeatureSpace, vocabs: dict[str, Vocab], where: str = "request") -> dict[str, np.ndarray]:
    """The arrays ``encode_features`` gives for this one record (one row each), unseen values -> OOV."""
    schema = space.schema
    out: dict[str, np.ndarray] = {}
    cats = schema.categorical
    if cats:
        out["categorical"] = np.array(
            [_ids(vocabs[schema.vocab_owner(f)], [_text(record, f.source, None, where)])[0] for f in cats],
            dtype=np.int32)[None, :]
    if schema.numeric:
        raw = np.array([_number(record, f.source, where) for f in schema.numeric], dtype=np.float32)[None, :]
        out["numeric_raw"] = raw
        out["numeric"] = np.stack([normalise(raw[:, j], space.numeric_stats[f.name])
                                   for j, f in enumerate(schema.numeric)], axis=1)
    for f in schema.multi_categorical:
        tokens = _tokens(_text(record, f.source, f.delimiter, where), f.delimiter)
        out[f"multi.{f.name}"] = _padded(_ids(vocabs[schema.vocab_owner(f)], tokens), f.max_len, "first")
    for f in schema.sequences:
        tokens = _tokens(_text(record, f.source, f.delimiter, where), f.delimiter)
        out[f"seq.{f.name}"] = _padded(_ids(vocabs[schema.vocab_owner(f)], tokens), f.max_len, "last")
        if f.timestamps:
            ts = _tokens(_text(record, f.timestamps, f.delimiter, where), f.delimiter)
            _aligned(len(tokens), len(ts), f.name, f.timestamps, where)
            out[f"seq.{f.name}.ts"] = _padded(_seconds(ts, f.timestamps, where), f.max_len, "last", np.int64)
        for side, ref in f.side_fields.items():
            values = _tokens(_text(record, side, f.delimiter, where), f.delimiter)
            _aligned(len(tokens), len(values), f.name, side, where)
            vocab = vocabs[schema.vocab_owner(schema.feature(ref))]
            out[f"seq.{f.name}.{side}"] = _padded(_ids(vocab, values), f.max_len, "last")
    for f in schema.vectors:
        v = record.get(f.source)
        if not isinstance(v, list):
            raise BadInputError(f"{where}: record 1, column {f.source!r}: expected a list of numbers, found {v!r}")
        if len(v) != f.dim:
            raise BadInputError(f"{where}: row 1 of the chunk, column {f.source!r}: expected a vector of {f.dim} "
                                f"numbers, found {len(v)}")
        try:
            out[f"vec.{f.name}"] = np.array([math.nan if x is None else x for x in v], dtype=np.float32)[None, :]
        except (TypeError, ValueError):
            raise BadInputError(f"{where}: column {f.source!r}: expected a list of numbers, found {v[:3]!r}") from None
    if schema.group_key:
        key = _text(record, schema.group_key, None, where)
        out["groups"] = np.array([fnv1a64_text(key)], dtype=np.uint64).view(np.int64)
    if schema.timestamp:
        t = _number(record, schema.timestamp, where)
        if not math.isfinite(t) or t != int(t):
            raise BadInputError(f"{where}: timestamp column {schema.timestamp!r}: expected integer seconds, found "
                                f"{record.get(schema.timestamp)!r}")
        out["timestamp"] = np.array([int(t)], dtype=np.int64)
    return out


def _aligned(n_items: int, n_other: int, name: str, column: str, where: str) -> None:
    if n_items != n_other:
        raise BadInputError(f"{where}: chunk row 1: column {column!r} has {n_other} entries but sequence {name!r} "
                            f"has {n_items}")

