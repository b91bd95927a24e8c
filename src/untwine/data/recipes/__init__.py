"""Dataset recipes: turn the shared raw files into the splits of the benchmark protocols.

Each protocol of ``PROTOCOLS.md`` (P1..P7, T1) has a module here and a :class:`Recipe` in
:data:`RECIPES`. :func:`prepare` reads the raw files from the data root
(:func:`untwine.core.paths.data_root`: ``$UNTWINE_DATA`` or ``../shared/data``) and writes into
``out_dir``:

- ``train.parquet``, ``valid.parquet``, ``test.parquet`` (T1: under ``raw/``): raw feature values as
  columns, rows in the order the protocol defines. Categorical values are strings; multi-valued
  categoricals are one string joined with ``|``; numerics are float (T1 keeps the generator's int64
  counts); labels are int8 0/1; histories are ``|``-joined ids oldest first, their timestamps a
  ``|``-joined column;
- side files some protocols need (P6 retrieval form, P6/P7 item catalogues), named in
  ``extra.side_files``;
- ``dataset.yaml`` (:class:`untwine.core.dataset_spec.DatasetSpec`): format parquet, relative file
  names, schema, and ``extra`` = protocol, recipe, seed, options, rows per split, label rate per split,
  ``source`` (sha256 of every raw file read, keyed by path relative to the data root) and notes.

Every file is written atomically, ``dataset.yaml`` last. A second call with the same sources,
options and recipe version returns at once (the existing ``dataset.yaml`` is reused) unless
``force=True``.

Example::

    from untwine.data.recipes import prepare
    spec_path = prepare("p1", "runs/data/p1")                      # -> runs/data/p1/dataset.yaml
    prepare("t1", "/tmp/t1-small", train=20_000, eval=1_000)       # options as keywords
    prepare("t1", "/tmp/t1-small", options={"train": 20_000, "eval": 1_000})  # or as a dict

Names accepted: the key (``p1`` .. ``p7``, ``t1``), the protocol id (``P1``), the module name
(``p1_frappe``) or the dataset name (``p1-frappe``).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from untwine.data.recipes import (
    p1_frappe,
    p2_ml100k,
    p2v_ml100k_vectors,
    p3_criteo,
    p4_census,
    p5_seq_ml100k,
    p5v_seq_ml100k_vectors,
    p6_seq_beauty,
    p7_recall_ml1m,
    t1_synthetic,
)
from untwine.data.recipes._common import SEED, YAML_NAME, Built, Context, Recipe, run, sha256_file

RECIPES: dict[str, Recipe] = {
    m.RECIPE.key: m.RECIPE
    for m in (p1_frappe, p2_ml100k, p3_criteo, p4_census, p5_seq_ml100k, p6_seq_beauty, p7_recall_ml1m,
              t1_synthetic, p2v_ml100k_vectors, p5v_seq_ml100k_vectors)
}

__all__ = ["RECIPES", "Recipe", "Built", "Context", "SEED", "YAML_NAME", "get_recipe", "prepare", "sha256_file"]


def get_recipe(name: str) -> Recipe:
    """The recipe called ``name`` (key, protocol id, module name or dataset name; case-insensitive)."""
    wanted = name.strip().lower().replace("-", "_")
    for r in RECIPES.values():
        if wanted in {a.lower().replace("-", "_") for a in r.aliases}:
            return r
    raise KeyError(f"unknown dataset recipe {name!r}; known: " +
                   ", ".join(f"{r.key} ({r.dataset_name})" for r in RECIPES.values()))


def prepare(name: str, out_dir: str | Path, data_root: str | Path | None = None, force: bool = False,
            options: Mapping[str, Any] | None = None, **kwargs: Any) -> Path:
    """Build the dataset of recipe ``name`` into ``out_dir``; return the path of its ``dataset.yaml``.

    ``data_root`` defaults to :func:`untwine.core.paths.data_root`. Recipe options (only T1 has any:
    ``train``, ``eval``) are given as keywords or as an ``options`` dict (not both for the same key).
    Raises ``FileNotFoundError`` naming the missing raw file (set ``UNTWINE_DATA``), ``KeyError`` for an
    unknown recipe and ``TypeError`` for an unknown option.
    """
    recipe = get_recipe(name)
    opts = dict(options or {})
    clash = sorted(set(opts) & set(kwargs))
    if clash:
        raise TypeError(f"option(s) {clash} given both as keyword and in options=")
    opts.update(kwargs)
    return run(recipe, out_dir, data_root, force, opts)
