"""P4 — census-mtl: two-task (MMoE) benchmark on Census-Income KDD (PROTOCOLS.md, P4).

Source: ``census-income-kdd/census-income.test.gz`` (99,762 rows, 42 comma-separated columns, no
header; every value is stripped of surrounding spaces). Column names are those of the dataset README
(the DeepCTR/MMoE names, see :data:`COLUMNS`).

- ``instance_weight`` is dropped.
- Labels (int8): ``income`` = (income_50k == "50000+."), ``marital`` = (marital_stat == "Never married").
  The two source columns are not written (neither is a feature).
- Numeric (float64): age, wage_per_hour, capital_gains, capital_losses, stock_dividends, num_emp,
  weeks_worked. Every other column (32) is categorical, stored as the stripped string (codes such as
  det_ind_code or year stay strings; "?" is an ordinary value).
- Split: ``p = default_rng(2024).permutation(n)``; train = p[:int(0.8n)], valid = p[int(0.8n):int(0.9n)],
  test = p[int(0.9n):], each part sorted by original row index (our choice; PROTOCOLS leaves the order
  open): 79,809 / 9,976 / 9,977 rows.
- Schema: all features in group context (every field describes the person; there is no item and no
  user id), no ``group_key``.
"""
from __future__ import annotations

import gzip

import numpy as np
import pyarrow as pa

from untwine.core.schema import Feature, Label, Schema
from untwine.data.recipes._common import Built, Context, Recipe, label_array, permutation_split

SOURCE = "census-income-kdd/census-income.test.gz"
COLUMNS = (
    "age", "class_worker", "det_ind_code", "det_occ_code", "education", "wage_per_hour", "hs_college",
    "marital_stat", "major_ind_code", "major_occ_code", "race", "hisp_origin", "sex", "union_member",
    "unemp_reason", "full_or_part_emp", "capital_gains", "capital_losses", "stock_dividends", "tax_filer_stat",
    "region_prev_res", "state_prev_res", "det_hh_fam_stat", "det_hh_summ", "instance_weight", "mig_chg_msa",
    "mig_chg_reg", "mig_move_reg", "mig_same", "mig_prev_sunbelt", "num_emp", "fam_under_18", "country_father",
    "country_mother", "country_self", "citizenship", "own_or_self", "vet_question", "vet_benefits",
    "weeks_worked", "year", "income_50k",
)
NUMERIC = ("age", "wage_per_hour", "capital_gains", "capital_losses", "stock_dividends", "num_emp", "weeks_worked")
DROPPED = ("instance_weight", "income_50k", "marital_stat")
CATEGORICAL = tuple(c for c in COLUMNS if c not in NUMERIC and c not in DROPPED)


def read_census(path) -> dict[str, list[str]]:
    cols: dict[str, list[str]] = {c: [] for c in COLUMNS}
    lists = [cols[c] for c in COLUMNS]
    with gzip.open(path, "rt", encoding="latin-1") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            parts = line.rstrip("\r\n").split(",")
            if len(parts) != len(COLUMNS):
                raise ValueError(f"{path}:{lineno}: expected {len(COLUMNS)} comma-separated fields, found {len(parts)}")
            for lst, v in zip(lists, parts):
                lst.append(v.strip())
    return cols


def schema() -> Schema:
    feats = []
    for c in COLUMNS:
        if c in DROPPED:
            continue
        feats.append(Feature(name=c, kind="numeric") if c in NUMERIC else Feature(name=c, kind="categorical"))
    return Schema(features=feats, labels=[Label(name="income"), Label(name="marital")])


def build(ctx: Context) -> Built:
    path = ctx.source(SOURCE)
    raw = read_census(path)
    income_vals = set(raw["income_50k"])
    if not income_vals <= {"- 50000.", "50000+."}:
        raise ValueError(f"{path}: unexpected income_50k values {sorted(income_vals - {'- 50000.', '50000+.'})}")
    income = np.array([v == "50000+." for v in raw["income_50k"]])
    marital = np.array([v == "Never married" for v in raw["marital_stat"]])
    table = {}
    for c in COLUMNS:
        if c in DROPPED:
            continue
        if c in NUMERIC:
            try:
                table[c] = pa.array(np.asarray(raw[c], dtype=np.float64))
            except ValueError as e:
                raise ValueError(f"{path}: column {c!r} is not numeric: {e}") from None
        else:
            table[c] = pa.array(raw[c], type=pa.string())
    table["income"] = label_array(income)
    table["marital"] = label_array(marital)
    full = pa.table(table)
    parts = permutation_split(full.num_rows)
    return Built(splits={s: full.take(pa.array(rows)) for s, rows in parts.items()}, schema=schema(),
                 extra={"split_rule": "default_rng(2024).permutation(n); cut at int(0.8n), int(0.9n); each part "
                                      "sorted by original row index",
                        "dropped_columns": list(DROPPED)})


RECIPE = Recipe(key="p4", protocol="P4", dataset_name="p4-census-mtl", module="p4_census", sources=(SOURCE,),
                build=build, description="Census-Income KDD test split, tasks income and marital (MMoE)")
