"""T1 — synthetic Criteo-shaped throughput set (PROTOCOLS.md, T1).

Source: the generator ``tools/make_t1.py`` beside the data root (``data_root().parent / "tools"``).
It is imported with importlib (never copied) and its own functions and constants
(``SEED``, ``POSITIVE_RATE``, ``NUM_CAP``, ``NUM_ZIPF``, ``CAT_CAPS``, ``CAT_ZIPF``, ``power_law_ids``,
``hex_tokens``) produce the data, drawing from one ``default_rng(SEED)`` in exactly the order of its
``main()`` (label, I1..I13, C1..C26) — so the rows are identical to ``make_t1.py OUT --parquet``.
We do not call ``main()`` itself: it needs pandas (not an untwine dependency) and also writes CSV.
The sha256 of make_t1.py is recorded in ``extra.source``; if the script changes, the output is rebuilt.

Output: ``raw/train.parquet``, ``raw/valid.parquet``, ``raw/test.parquet`` under ``out_dir`` with the
generator's dtypes (``label`` int8, ``I1..I13`` int64 counts, ``C1..C26`` 8-hex-digit strings) and the
generator's row split (first ``train`` rows, next ``eval``, last ``eval``), plus ``dataset.yaml``.

Options (keyword arguments of :func:`untwine.data.recipes.prepare`):

- ``train`` (default 1,000,000): training rows;
- ``eval`` (default 50,000): rows of valid and of test each.

Small sizes are for tests only: the rng draws each column for all ``train + 2 eval`` rows at once, so
a smaller set is NOT a prefix of the full one.

Schema: I1..I13 numeric (``transform: log1p_standard``), C1..C26 categorical, label; all context.
"""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pyarrow as pa

from untwine.core.schema import Feature, Label, Schema
from untwine.data.recipes._common import Built, Context, Recipe

SCRIPT = "../tools/make_t1.py"  # relative to the data root
NUMERIC = tuple(f"I{i}" for i in range(1, 14))
CATEGORICAL = tuple(f"C{i}" for i in range(1, 27))
_NEEDED = ("SEED", "POSITIVE_RATE", "NUM_CAP", "NUM_ZIPF", "CAT_CAPS", "CAT_ZIPF", "power_law_ids", "hex_tokens")


def load_generator(path: Path) -> ModuleType:
    """Import make_t1.py from ``path`` under a private module name."""
    spec = importlib.util.spec_from_file_location("_untwine_make_t1", path)
    if spec is None or spec.loader is None:
        raise ImportError(f"{path}: cannot import the T1 generator")
    mod = importlib.util.module_from_spec(spec)
    sys.modules.pop(spec.name, None)
    spec.loader.exec_module(mod)
    missing = [n for n in _NEEDED if not hasattr(mod, n)]
    if missing:
        raise ImportError(f"{path}: the T1 generator no longer defines {missing}; update untwine.data.recipes."
                          "t1_synthetic to follow it")
    if len(mod.CAT_CAPS) != len(CATEGORICAL):
        raise ValueError(f"{path}: expected {len(CATEGORICAL)} categorical caps, found {len(mod.CAT_CAPS)}")
    return mod


def generate(gen: ModuleType, n_train: int, n_eval: int) -> dict[str, pa.Table]:
    """The three splits, drawn exactly like make_t1.main()."""
    n = n_train + 2 * n_eval
    rng = np.random.default_rng(gen.SEED)
    cols: dict[str, pa.Array] = {"label": pa.array((rng.random(n) < gen.POSITIVE_RATE).astype(np.int8))}
    for j in range(13):
        cols[f"I{j + 1}"] = pa.array(np.asarray(gen.power_law_ids(rng, n, gen.NUM_CAP, gen.NUM_ZIPF), dtype=np.int64))
    for j, cap in enumerate(gen.CAT_CAPS):
        toks = gen.hex_tokens(gen.power_law_ids(rng, n, cap, gen.CAT_ZIPF), j)
        cols[f"C{j + 1}"] = pa.array(toks, type=pa.string())
        del toks
    table = pa.table(cols)
    bounds = {"train": (0, n_train), "valid": (n_train, n_train + n_eval), "test": (n_train + n_eval, n)}
    return {s: table.slice(lo, hi - lo) for s, (lo, hi) in bounds.items()}


def schema() -> Schema:
    feats = [Feature(name=c, kind="numeric", transform="log1p_standard") for c in NUMERIC]
    feats += [Feature(name=c, kind="categorical") for c in CATEGORICAL]
    return Schema(features=feats, labels=[Label(name="label")])


def build(ctx: Context) -> Built:
    n_train, n_eval = int(ctx.options["train"]), int(ctx.options["eval"])
    if n_train < 1 or n_eval < 1:
        raise ValueError(f"T1 needs train >= 1 and eval >= 1 rows, got train={n_train}, eval={n_eval}")
    gen = load_generator(ctx.source(SCRIPT))
    return Built(splits=generate(gen, n_train, n_eval), schema=schema(),
                 split_paths={s: f"raw/{s}.parquet" for s in ("train", "valid", "test")},
                 extra={"split_rule": "generator order: first `train` rows, next `eval`, last `eval`",
                        "generator": "tools/make_t1.py (imported; same draws as its main())",
                        "note": "labels are random (positive rate 0.25): measures speed only"})


RECIPE = Recipe(key="t1", protocol="T1", dataset_name="t1-synthetic", module="t1_synthetic",
                sources=(SCRIPT,), build=build, defaults={"train": 1_000_000, "eval": 50_000},
                description="synthetic Criteo-shaped throughput set (make_t1.py)")
