"""Shared machinery of the dataset recipes: the Recipe record, source checks, hashing and writing.

A recipe module defines one :class:`Recipe` whose ``build`` turns the raw files of the data root into
a :class:`Built` (one ``pyarrow.Table`` per split, the schema, optional side tables and notes).
:func:`run` does everything around it: it resolves the data root, checks and hashes the source
files, skips the work when ``out_dir`` already holds a matching ``dataset.yaml``, and writes every
file atomically, ``dataset.yaml`` last (so an interrupted run never leaves a yaml that looks complete).
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import yaml

from untwine.core.dataset_spec import SPLITS, DatasetSpec
from untwine.core.io import atomic_path
from untwine.core.paths import data_root as default_data_root
from untwine.core.schema import Schema

SEED = 2024
YAML_NAME = "dataset.yaml"
# Bump when a recipe's output changes for the same inputs: cached outputs of older versions are rebuilt.
RECIPE_FORMAT_VERSION = 2  # 2: P5 declares its target time column as the schema's timestamp


@dataclass
class Built:
    """What a recipe's ``build`` returns."""

    splits: dict[str, pa.Table]  # train / valid / test, rows in protocol order
    schema: Schema
    side_tables: dict[str, pa.Table] = field(default_factory=dict)  # extra parquet files: name -> table
    extra: dict[str, Any] = field(default_factory=dict)  # merged into dataset.yaml ``extra``
    split_paths: dict[str, str] | None = None  # relative file per split; default "<split>.parquet"


@dataclass(frozen=True)
class Context:
    """What ``build`` gets: where the raw data is, where the output goes, the resolved options."""

    data_root: Path
    out_dir: Path
    options: Mapping[str, Any]

    def source(self, rel: str) -> Path:
        return self.data_root / rel


@dataclass(frozen=True)
class Recipe:
    """One benchmark protocol's dataset recipe."""

    key: str  # registry key, e.g. "p1"
    protocol: str  # "P1" ... "P7", "T1"
    dataset_name: str  # DatasetSpec.name, e.g. "p1-frappe"
    module: str  # module name inside untwine.data.recipes, e.g. "p1_frappe"
    sources: tuple[str, ...]  # files it reads, relative to the data root
    build: Callable[[Context], Built]
    description: str = ""
    defaults: Mapping[str, Any] = field(default_factory=dict)  # accepted options and their defaults

    @property
    def aliases(self) -> tuple[str, ...]:
        return (self.key, self.protocol.lower(), self.module, self.dataset_name)


# ------------------------------------------------------------------ helpers for recipe modules
def require(path: Path, recipe: str, protocol: str) -> Path:
    if not path.is_file():
        raise FileNotFoundError(
            f"{path}: source file of recipe {recipe!r} (protocol {protocol}) is missing; set UNTWINE_DATA to the "
            f"shared data folder that holds it (see MANIFEST.md there)")
    return path


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def split_sizes(n: int) -> tuple[int, int]:
    """Cut points of an 80/10/10 split: ``int(0.8 n)`` and ``int(0.9 n)`` (valid = the rows between)."""
    return int(0.8 * n), int(0.9 * n)


def permutation_split(n: int, seed: int = SEED) -> dict[str, np.ndarray]:
    """80/10/10 of ``default_rng(seed).permutation(n)``; each part sorted by original index."""
    perm = np.random.default_rng(seed).permutation(n)
    a, b = split_sizes(n)
    return {"train": np.sort(perm[:a]), "valid": np.sort(perm[a:b]), "test": np.sort(perm[b:])}


def str_array(values) -> pa.Array:
    """Integers or strings as a pyarrow string array (categorical ids are stored as strings)."""
    arr = np.asarray(values)
    if arr.dtype.kind in "iu":
        return pa.array(arr).cast(pa.string())
    return pa.array(arr.tolist() if arr.dtype.kind == "U" else values, type=pa.string())


def label_array(values) -> pa.Array:
    return pa.array(np.asarray(values).astype(np.int8), type=pa.int8())


def plain(obj: Any) -> Any:
    """Numpy scalars and tuples -> plain Python (yaml.safe_dump accepts only plain types)."""
    if isinstance(obj, dict):
        return {str(k): plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [plain(v) for v in obj]
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    return obj


def write_parquet(table: pa.Table, path: Path) -> None:
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, compression="zstd")


# ------------------------------------------------------------------ the driver
def resolve_data_root(data_root: str | Path | None) -> Path:
    if data_root is not None:
        root = Path(data_root)
        if not root.is_dir():
            raise FileNotFoundError(f"data root {root} does not exist; pass an existing folder or set UNTWINE_DATA")
        return root.resolve()
    root = default_data_root()
    if root is None:
        raise FileNotFoundError("no dataset folder found; set UNTWINE_DATA to the shared data folder "
                                "(the one holding MANIFEST.md) or pass data_root=")
    return root


def resolve_options(recipe: Recipe, options: Mapping[str, Any]) -> dict[str, Any]:
    unknown = sorted(set(options) - set(recipe.defaults))
    if unknown:
        accepted = sorted(recipe.defaults) or "none"
        raise TypeError(f"recipe {recipe.key!r}: unknown option(s) {unknown}; accepted: {accepted}")
    resolved = dict(recipe.defaults)
    resolved.update(options)
    return resolved


def _cached(yaml_path: Path, recipe: Recipe, sources: dict[str, str], options: dict[str, Any]) -> bool:
    try:
        with open(yaml_path) as fh:
            raw = yaml.safe_load(fh) or {}
        extra = raw.get("extra") or {}
        if extra.get("source") != sources or extra.get("options", {}) != plain(options):
            return False
        if extra.get("recipe") != recipe.key or extra.get("recipe_version") != RECIPE_FORMAT_VERSION:
            return False
        spec = DatasetSpec.from_yaml(yaml_path)
        files = [p for s in SPLITS for p in spec.files(s)]
        files += [yaml_path.parent / rel for rel in (extra.get("side_files") or {}).values()]
        return all(p.is_file() for p in files)
    except Exception:  # unreadable or foreign yaml: rebuild
        return False


def run(recipe: Recipe, out_dir: str | Path, data_root: str | Path | None, force: bool,
        options: Mapping[str, Any]) -> Path:
    root = resolve_data_root(data_root)
    opts = resolve_options(recipe, options)
    out = Path(out_dir)
    yaml_path = out / YAML_NAME
    srcs = {rel: require(root / rel, recipe.key, recipe.protocol) for rel in recipe.sources}
    hashes = {rel: sha256_file(p) for rel, p in srcs.items()}
    if not force and yaml_path.exists() and _cached(yaml_path, recipe, hashes, opts):
        return yaml_path
    out.mkdir(parents=True, exist_ok=True)
    if yaml_path.exists():  # never let an old yaml describe half-rewritten files
        yaml_path.unlink()
    built = recipe.build(Context(data_root=root, out_dir=out, options=opts))
    split_paths = built.split_paths or {s: f"{s}.parquet" for s in SPLITS}
    for split in SPLITS:
        write_parquet(built.splits[split], out / split_paths[split])
    side_files = {}
    for name, table in built.side_tables.items():
        rel = f"{name}.parquet"
        write_parquet(table, out / rel)
        side_files[name] = rel
    rows = {s: built.splits[s].num_rows for s in SPLITS}
    label_rate = {}
    for lab in built.schema.labels:
        label_rate[lab.name] = {s: round(float(np.mean(built.splits[s].column(lab.source).to_numpy()))
                                         if rows[s] else float("nan"), 6) for s in SPLITS}
    extra = {
        "protocol": recipe.protocol,
        "recipe": recipe.key,
        "recipe_module": f"untwine.data.recipes.{recipe.module}",
        "recipe_version": RECIPE_FORMAT_VERSION,
        "seed": SEED,
        "options": opts,
        "rows": rows,
        "label_rate": label_rate,
        "source": hashes,
        "side_files": side_files,
        **built.extra,
    }
    spec = DatasetSpec(name=recipe.dataset_name, format="parquet",
                       train=[split_paths["train"]], valid=[split_paths["valid"]], test=[split_paths["test"]],
                       schema=built.schema, extra=plain(extra))
    spec.to_yaml(yaml_path)
    return yaml_path
