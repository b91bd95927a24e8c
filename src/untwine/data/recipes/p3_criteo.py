"""P3 — criteo-head8k: format and numeric-feature check (PROTOCOLS.md, P3).

Sources: ``criteo-kaggle-head8k/{train,dev,test}.tsv`` (7,200 / 409 / 391 rows; the repo's ``dev``
file is our ``valid``). The files have no header: 40 TAB-separated fields ``label, I1..I13, C1..C26``.

Written columns: ``label`` (int8), ``I1``..``I13`` (float64; empty -> null), ``C1``..``C26`` (string,
the 8-hex-digit hashed value; empty -> null). Row order = file order.

Schema: I1..I13 numeric with ``transform: log1p_standard`` (sign(x)·log1p(|x|) then standardised; I2
can be negative), C1..C26 categorical, all in group context; no user id, so no ``group_key``.
"""
from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pacsv

from untwine.core.schema import Feature, Label, Schema
from untwine.data.recipes._common import Built, Context, Recipe

DIR = "criteo-kaggle-head8k"
FILES = {"train": f"{DIR}/train.tsv", "valid": f"{DIR}/dev.tsv", "test": f"{DIR}/test.tsv"}
NUMERIC = tuple(f"I{i}" for i in range(1, 14))
CATEGORICAL = tuple(f"C{i}" for i in range(1, 27))
COLUMNS = ("label",) + NUMERIC + CATEGORICAL


def read_criteo_tsv(path: Path) -> pa.Table:
    """A Criteo-format TSV (no header) as a typed table; a row of the wrong width raises naming the line."""
    def bad_row(row) -> str:
        raise ValueError(f"{path}:{row.number}: expected {row.expected_columns} fields, found {row.actual_columns}")

    types = {"label": pa.int8(), **{c: pa.float64() for c in NUMERIC}, **{c: pa.string() for c in CATEGORICAL}}
    return pacsv.read_csv(
        path,
        read_options=pacsv.ReadOptions(column_names=list(COLUMNS)),
        parse_options=pacsv.ParseOptions(delimiter="\t", quote_char=False, invalid_row_handler=bad_row),
        convert_options=pacsv.ConvertOptions(column_types=types, strings_can_be_null=True, null_values=[""]),
    )


def schema() -> Schema:
    feats = [Feature(name=c, kind="numeric", transform="log1p_standard") for c in NUMERIC]
    feats += [Feature(name=c, kind="categorical") for c in CATEGORICAL]
    return Schema(features=feats, labels=[Label(name="label")])


def build(ctx: Context) -> Built:
    splits = {}
    for split, rel in FILES.items():
        table = read_criteo_tsv(ctx.source(rel))
        labels = table.column("label")
        if labels.null_count or not set(labels.unique().to_pylist()) <= {0, 1}:
            raise ValueError(f"{ctx.source(rel)}: label column must be 0/1 everywhere")
        splits[split] = table
    return Built(splits=splits, schema=schema(),
                 extra={"split_rule": "files as given: train.tsv / dev.tsv (valid) / test.tsv, file order",
                        "note": "format and numeric-encoding check only; too small for accuracy claims"})


RECIPE = Recipe(key="p3", protocol="P3", dataset_name="p3-criteo-head8k", module="p3_criteo",
                sources=tuple(FILES.values()), build=build,
                description="Criteo Kaggle head 8k: missing values and numeric encodings")
