"""P1 — frappe-partial: CTR on 10 categorical fields (PROTOCOLS.md, P1).

Sources: ``frappe-nfm-partial/frappe.validation.libfm`` (57,722 rows) and ``frappe.test.libfm`` (28,860).

Parsing: each libFM row is ``label idx:1 ... idx:1`` with exactly 10 tokens, one per field in the
order user, item, daytime, weekday, isweekend, homework, cost, weather, country, city; the token's
``idx`` (a global index, kept as a string, e.g. ``"266"``) is the field's categorical value. Label
``-1``/``1`` -> 0/1 (int8 column ``label``).

Split: ``p = numpy.random.default_rng(2024).permutation(57722)``; train = ``p[:int(0.8 n)]`` and
valid = ``p[int(0.8 n):]``, **both sorted by original index** (PROTOCOLS says so for train; we chose
the same for valid so that every split keeps file order). Test = the test file in file order.
Rows: 46,177 / 11,545 / 28,860.

Schema: the 10 fields are categorical; ``user`` in group user, ``item`` in group item, the other 8 in
group context; ``group_key: user`` (for GAUC).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa

from untwine.core.schema import Feature, Label, Schema
from untwine.data.recipes._common import SEED, Built, Context, Recipe, label_array

FIELDS = ("user", "item", "daytime", "weekday", "isweekend", "homework", "cost", "weather", "country", "city")
VALID_FILE = "frappe-nfm-partial/frappe.validation.libfm"
TEST_FILE = "frappe-nfm-partial/frappe.test.libfm"


def read_libfm(path: Path, n_fields: int = len(FIELDS)) -> tuple[np.ndarray, list[list[str]]]:
    """Labels (int8 0/1) and per-field value lists of a one-hot libFM file; errors name file and line."""
    labels: list[int] = []
    cols: list[list[str]] = [[] for _ in range(n_fields)]
    with open(path) as fh:
        for lineno, line in enumerate(fh, 1):
            parts = line.split()
            if not parts:
                continue
            if len(parts) != n_fields + 1:
                raise ValueError(f"{path}:{lineno}: expected a label and {n_fields} tokens, found {len(parts)} fields")
            lab = parts[0]
            if lab in ("1", "+1"):
                labels.append(1)
            elif lab in ("-1", "0"):
                labels.append(0)
            else:
                raise ValueError(f"{path}:{lineno}: label {lab!r} is not -1/1")
            for i, tok in enumerate(parts[1:]):
                idx, _, val = tok.partition(":")
                if val not in ("1", "1.0", "1.") or not idx.isdigit():
                    raise ValueError(f"{path}:{lineno}: token {tok!r} of field {FIELDS[i]!r} is not 'idx:1'")
                cols[i].append(idx)
    return np.asarray(labels, dtype=np.int8), cols


def _table(labels: np.ndarray, cols: list[list[str]], rows: np.ndarray | None = None) -> pa.Table:
    data = {}
    for name, values in zip(FIELDS, cols):
        arr = pa.array(values, type=pa.string())
        data[name] = arr if rows is None else arr.take(pa.array(rows))
    data["label"] = label_array(labels if rows is None else labels[rows])
    return pa.table(data)


def split_indices(n: int, seed: int = SEED) -> tuple[np.ndarray, np.ndarray]:
    """(train rows, valid rows) of the validation file, each sorted by original index."""
    perm = np.random.default_rng(seed).permutation(n)
    cut = int(0.8 * n)
    return np.sort(perm[:cut]), np.sort(perm[cut:])


def schema() -> Schema:
    group = {"user": "user", "item": "item"}
    return Schema(features=[Feature(name=f, kind="categorical", group=group.get(f, "context")) for f in FIELDS],
                  labels=[Label(name="label")], group_key="user")


def build(ctx: Context) -> Built:
    v_labels, v_cols = read_libfm(ctx.source(VALID_FILE))
    t_labels, t_cols = read_libfm(ctx.source(TEST_FILE))
    train_rows, valid_rows = split_indices(len(v_labels))
    return Built(
        splits={"train": _table(v_labels, v_cols, train_rows), "valid": _table(v_labels, v_cols, valid_rows),
                "test": _table(t_labels, t_cols)},
        schema=schema(),
        extra={"split_rule": "validation file permuted with default_rng(2024); first int(0.8n) = train, "
                             "rest = valid, both sorted by original index; test = test file in file order",
               "note": "training data is 20% of BARS Frappe_x1's; AUC not comparable with BARS"})


RECIPE = Recipe(key="p1", protocol="P1", dataset_name="p1-frappe", module="p1_frappe",
                sources=(VALID_FILE, TEST_FILE), build=build,
                description="frappe-partial CTR, 10 categorical fields")
