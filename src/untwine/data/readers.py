"""Chunked readers for CSV/TSV, Parquet and libFM that report bad input by file, line and column.

Every reader yields ``pyarrow.Table`` chunks holding only the requested columns, with categorical
columns as strings and numeric/label columns as float64. Files larger than memory stream through.
Bad rows (wrong width, a non-numeric value in a numeric column, an empty label) raise
:class:`BadInputError` naming file, line and column, or are skipped and counted when
``on_bad_rows="skip"``.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from untwine.core.dataset_spec import DatasetSpec

OnBadRows = Literal["error", "skip"]
CHUNK_BYTES = 16 << 20  # arrow needs ~25x a block while converting 40 string columns: keeps peak RSS low
PARQUET_BATCH_ROWS = 262_144
_FLOAT_RE = r"^\s*[-+]?((\d+(\.\d*)?|\.\d+)([eE][-+]?\d+)?|nan|NaN|NAN|inf|Inf|INF|infinity|Infinity)\s*$"


class BadInputError(ValueError):
    """A row of an input file does not match the schema."""


@dataclass
class BadRowReport:
    """Counts of skipped rows by reason, plus the first few locations for the log."""

    counts: Counter = field(default_factory=Counter)
    examples: list[str] = field(default_factory=list)

    def add(self, reason: str, where: str, n: int = 1) -> None:
        self.counts[reason] += n
        if len(self.examples) < 10:
            self.examples.append(f"{where}: {reason}")

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def summary(self) -> str:
        if not self.total:
            return "no bad rows"
        parts = ", ".join(f"{n} {reason}" for reason, n in sorted(self.counts.items()))
        return f"skipped {self.total} bad rows ({parts}); first: " + "; ".join(self.examples[:3])


@dataclass(frozen=True)
class ColumnTypes:
    """Which requested columns are parsed as numbers and which must never be empty."""

    strings: tuple[str, ...]
    numbers: tuple[str, ...]
    required: tuple[str, ...]  # label columns: empty is an error
    lists: tuple[str, ...] = ()  # parquet list columns (vectors) passed through as they are


def iter_chunks(spec: DatasetSpec, split: str, types: ColumnTypes, on_bad_rows: OnBadRows = "error",
                report: BadRowReport | None = None) -> Iterator[pa.Table]:
    """Yield the split's rows in file order, chunk by chunk, as typed tables."""
    report = report if report is not None else BadRowReport()
    files = spec.files(split)
    if not files:
        raise FileNotFoundError(f"dataset {spec.name!r} has no files for split {split!r}")
    for path in files:
        if not path.exists():
            raise FileNotFoundError(f"{path}: file listed for split {split!r} of dataset {spec.name!r} does not exist")
        if spec.format == "parquet":
            yield from _parquet_chunks(path, types, on_bad_rows, report)
        elif spec.format in ("csv", "tsv"):
            yield from _csv_chunks(path, spec, types, on_bad_rows, report)
        elif spec.format == "libfm":
            yield from _libfm_chunks(path, spec, types, on_bad_rows, report)
        else:  # pragma: no cover - pydantic restricts the literal
            raise ValueError(f"unknown format {spec.format!r}")


def file_columns(spec: DatasetSpec, path: Path) -> list[str]:
    """Column names of one file, without reading its rows."""
    if spec.format == "parquet":
        return pq.ParquetFile(path).schema_arrow.names
    if spec.format == "libfm":
        if not spec.column_names:
            raise ValueError(f"{path}: libfm needs column_names (label first, then one name per field)")
        return list(spec.column_names)
    if not spec.header:
        if not spec.column_names:
            raise ValueError(f"{path}: a {spec.format} file without header needs column_names")
        return list(spec.column_names)
    import csv

    delim = "\t" if spec.format == "tsv" else ","
    with open(path, newline="") as fh:
        return next(csv.reader(fh, delimiter=delim), [])  # handles quoted names


# ---------------------------------------------------------------- parquet
def _parquet_chunks(path: Path, types: ColumnTypes, on_bad_rows: OnBadRows,
                    report: BadRowReport) -> Iterator[pa.Table]:
    pf = pq.ParquetFile(path)
    wanted = list(dict.fromkeys(types.strings + types.numbers + types.required + types.lists))
    missing = [c for c in wanted if c not in pf.schema_arrow.names]
    if missing:
        raise BadInputError(f"{path}: missing column(s) {missing}; file has {pf.schema_arrow.names}")
    row0 = 0
    for rb in pf.iter_batches(batch_size=PARQUET_BATCH_ROWS, columns=wanted):
        table = pa.Table.from_batches([rb])
        yield _convert(table, types, path, lambda r, base=row0: f"row {base + r + 1}", on_bad_rows, report)
        row0 += rb.num_rows


# ---------------------------------------------------------------- csv / tsv
def _csv_chunks(path: Path, spec: DatasetSpec, types: ColumnTypes, on_bad_rows: OnBadRows,
                report: BadRowReport) -> Iterator[pa.Table]:
    delim = "\t" if spec.format == "tsv" else ","
    names = file_columns(spec, path)
    header_lines = 1 if spec.header else 0
    # vector columns in text files are delimited strings, parsed by the encoder
    wanted = list(dict.fromkeys(types.strings + types.numbers + types.required + types.lists))
    missing = [c for c in wanted if c not in names]
    if missing:
        raise BadInputError(f"{path}: missing column(s) {missing}; file has {names}")
    skipped_lines: list[int] = []
    errors: list[str] = []  # an exception raised inside the handler would be swallowed by pyarrow

    def on_invalid(row) -> str:
        where = f"{path}:{row.number}" if row.number is not None else str(path)
        msg = f"expected {row.expected_columns} columns, found {row.actual_columns}"
        if on_bad_rows == "skip":
            report.add("wrong width", where)
            if row.number is not None:
                skipped_lines.append(row.number)
        elif not errors:
            errors.append(f"{where}: {msg}: {row.text[:200]!r}")
        return "skip"

    # serial parsing keeps line numbers known to the handler; the columns are plain strings, so
    # conversion threads would buy little
    read = pacsv.ReadOptions(column_names=names, skip_rows=header_lines, block_size=CHUNK_BYTES,
                             use_threads=False)
    parse = pacsv.ParseOptions(delimiter=delim, invalid_row_handler=on_invalid)
    # everything as strings: numbers are converted by _convert, which can point at the bad line
    conv = pacsv.ConvertOptions(include_columns=wanted, column_types={c: pa.string() for c in wanted},
                                strings_can_be_null=True, quoted_strings_can_be_null=True)
    try:
        reader = pacsv.open_csv(path, read_options=read, parse_options=parse, convert_options=conv)
    except pa.ArrowInvalid as e:  # an error in the first block surfaces here
        raise BadInputError(f"{path}: {e}") from None
    row0 = 0
    base_line = header_lines + 1
    while True:
        try:
            rb = reader.read_next_batch()
        except StopIteration:
            break
        except pa.ArrowInvalid as e:
            raise BadInputError(f"{path}: {e}") from None
        if errors:
            raise BadInputError(errors[0])
        table = pa.Table.from_batches([rb])
        skipped = np.asarray(sorted(skipped_lines), dtype=np.int64)

        def line_of(r: int, base=row0, skipped=skipped) -> str:
            good = base + r
            k = int(np.searchsorted(skipped - np.arange(len(skipped)), good + base_line, side="right"))
            return f"line {good + base_line + k}"

        yield _convert(table, types, path, line_of, on_bad_rows, report)
        row0 += rb.num_rows


# ---------------------------------------------------------------- libFM
def _libfm_chunks(path: Path, spec: DatasetSpec, types: ColumnTypes, on_bad_rows: OnBadRows,
                  report: BadRowReport) -> Iterator[pa.Table]:
    """libFM rows ``label idx:val idx:val ...`` with one active index per field, in field order.

    The label becomes the first column name; field i's token index becomes column i+1 as a string.
    """
    names = file_columns(spec, path)
    label = names[0]
    raw_types = ColumnTypes(strings=tuple(names), numbers=(), required=())
    for table in _csv_chunks_space(path, names, raw_types, on_bad_rows, report):
        cols = {}
        for name in names[1:]:
            tok = table.column(name)
            parts = pc.split_pattern(tok, ":", max_splits=1)
            cols[name] = pc.list_element(parts, 0)
            val = pc.list_element(parts, 1)
            if pc.any(pc.not_equal(val, "1")).as_py():
                raise BadInputError(f"{path}: column {name}: libFM value other than 1; "
                                    "only one-hot categorical libFM is supported")
        lab = table.column(label)
        cols[label] = pc.if_else(pc.equal(lab, "-1"), "0", lab)
        out = pa.table({n: cols[n] for n in names})
        yield _convert(out.select([c for c in names if c in set(types.strings + types.numbers + types.required)]),
                       types, path, lambda r: f"record {r + 1}", on_bad_rows, report)


def _csv_chunks_space(path: Path, names: list[str], types: ColumnTypes, on_bad_rows: OnBadRows,
                      report: BadRowReport) -> Iterator[pa.Table]:
    errors: list[str] = []

    def on_invalid(row) -> str:
        where = f"{path}:{row.number}"
        if on_bad_rows == "skip":
            report.add("wrong width", where)
        elif not errors:
            errors.append(f"{where}: expected {row.expected_columns} fields, found {row.actual_columns}")
        return "skip"

    read = pacsv.ReadOptions(column_names=names, block_size=CHUNK_BYTES, use_threads=False)
    parse = pacsv.ParseOptions(delimiter=" ", invalid_row_handler=on_invalid)
    conv = pacsv.ConvertOptions(column_types={c: pa.string() for c in names})
    reader = pacsv.open_csv(path, read_options=read, parse_options=parse, convert_options=conv)
    for rb in reader:
        if errors:
            raise BadInputError(errors[0])
        yield pa.Table.from_batches([rb])


# ---------------------------------------------------------------- typing and validation
def _convert(table: pa.Table, types: ColumnTypes, path: Path, where, on_bad_rows: OnBadRows,
             report: BadRowReport) -> pa.Table:
    """Cast numbers, check labels; drop (skip mode) or report (error mode) the offending rows."""
    keep = None  # boolean mask of rows to keep
    cols: dict[str, pa.ChunkedArray] = {}
    for name in types.numbers:
        col = table.column(name)
        if pa.types.is_floating(col.type) or pa.types.is_integer(col.type) or pa.types.is_boolean(col.type):
            cols[name] = pc.cast(col, pa.float64())
            continue
        col = pc.cast(col, pa.string())
        ok = pc.or_kleene(pc.is_null(col), pc.match_substring_regex(col, _FLOAT_RE))
        ok = pc.fill_null(ok, True)
        if not pc.all(ok).as_py():
            bad = np.flatnonzero(~ok.to_numpy(zero_copy_only=False))
            if on_bad_rows == "error":
                r = int(bad[0])
                raise BadInputError(f"{path}: {where(r)}, column {name!r}: expected a number, "
                                    f"found {col[r].as_py()!r}")
            for r in bad[:3]:
                report.add("non-numeric value", f"{path} {where(int(r))} column {name!r}")
            report.counts["non-numeric value"] += max(0, len(bad) - 3)
            mask = ok.to_numpy(zero_copy_only=False)
            keep = mask if keep is None else keep & mask
            col = pc.if_else(ok, col, pa.scalar(None, pa.string()))
        cols[name] = pc.cast(pc.utf8_trim_whitespace(col), pa.float64())
    for name in types.required:
        col = cols.get(name, table.column(name))
        empty = pc.is_null(col)
        if pa.types.is_string(col.type) or pa.types.is_large_string(col.type):
            empty = pc.or_(empty, pc.equal(pc.utf8_trim_whitespace(col), ""))
        if pa.types.is_floating(col.type):
            empty = pc.or_(empty, pc.is_nan(col))
        empty = pc.fill_null(empty, True)
        if pc.any(empty).as_py():
            bad = np.flatnonzero(empty.to_numpy(zero_copy_only=False))
            if on_bad_rows == "error":
                raise BadInputError(f"{path}: {where(int(bad[0]))}, column {name!r}: expected a label, found an empty value")
            for r in bad[:3]:
                report.add("empty label", f"{path} {where(int(r))} column {name!r}")
            report.counts["empty label"] += max(0, len(bad) - 3)
            mask = ~empty.to_numpy(zero_copy_only=False)
            keep = mask if keep is None else keep & mask
    out = {}
    for name in table.column_names:
        out[name] = cols.get(name, table.column(name))
        if name in types.strings and not pa.types.is_string(out[name].type) and name not in types.numbers:
            out[name] = pc.cast(out[name], pa.string())
    result = pa.table(out)
    if keep is not None:
        result = result.filter(pa.array(keep))
    return result
