"""Exported bundles: everything the online funnel needs, in one folder, hashed, loadable without pickle.

``untwine export RECALL_RUN [RANK_RUN] -o BUNDLE`` writes::

    manifest.json            format, version, bundle id, sha256 and size of every other file
    pipeline.json            the funnel's settings (quotas, pre-rank cut, re-rank, index)
    recall/                  the recall run: two-tower (config.yaml, feature_space.json, vocab/,
                             best.safetensors), catalogue.parquet, item_vectors.safetensors,
                             channels/<name>.safetensors|.json, index.faiss (serialised faiss bytes)
    rank/                    the ranking run (config.yaml, feature_space.json, vocab/, best.safetensors,
                             calibration.json when fitted); absent: the two-tower score ranks

The bundle is assembled in a temporary sibling folder and renamed into place, so a reader never sees a
half-written bundle. ``verify_bundle`` recomputes every hash and refuses missing, changed or unlisted
files; the loaders then read only safetensors, JSON, YAML (safe_load), parquet and faiss's own format.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field
from safetensors.numpy import load_file as load_numpy

from untwine.data.recipes import sha256_file
from untwine.rerank.pipeline import RerankConfig
from untwine.retrieval.index import IndexConfig, VectorIndex

FORMAT = "untwine-bundle"
VERSION = 1
MANIFEST = "manifest.json"


class BundleError(ValueError):
    """A bundle that is incomplete, altered or of an unknown format."""


class PipelineConfig(BaseModel):
    """How a request flows through the funnel (``pipeline.json``; override at export with --set key=value)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    quotas: dict[str, int] = Field(default_factory=dict)  # channel -> candidates; default: 2/3 two-tower, rest split
    recall_total: int = Field(1000, ge=1)  # merged candidates (leftovers fill the quotas' gaps)
    prerank_size: int = Field(500, ge=1)  # candidates the ranking model scores, cut by the two-tower score
    rank_task: str | None = None  # the ranking model's task whose probability orders items (default: first)
    category_feature: str | None = None  # item column for the re-rank rules and coverage (default: first
    # item categorical after the item key)
    promoted_feature: str | None = None  # item column, truthy = promoted (the one-per-window rule)
    rerank: RerankConfig = RerankConfig(k=20, depth=50)
    rerank_pool: int = Field(100, ge=1)  # the ranked head re-rank chooses from (at least 2 k)
    # the ranking forward's number format (nn/quantize.py): bf16 about 2x faster than fp32 on CPUs with
    # avx512_bf16, scores within bf16 rounding; int8 (FBGEMM, VNNI) faster again, scores within int8
    # rounding and slightly dependent on the other candidates of the request (benchmarks/results/serving);
    # fp32 by default so bundle scores equal the run's
    rank_precision: Literal["fp32", "bf16", "int8"] = "fp32"
    index: IndexConfig = IndexConfig(kind="ivf_flat", nprobe=32, threads=1)  # benchmarks/results/retrieval/ann.md
    history_feature: str | None = None  # the user-side sequence fed from the request's history (auto)


def _is_recall_run(d: Path) -> bool:
    return (d / "recall.yaml").exists() and (d / "catalogue.parquet").exists()


def _is_rank_run(d: Path) -> bool:
    return (d / "config.yaml").exists() and (d / "best.safetensors").exists() and not _is_recall_run(d)


def _copy_run(src: Path, dst: Path, names: list[str]) -> None:
    dst.mkdir(parents=True, exist_ok=True)
    for name in names:
        p = src / name
        if p.is_dir():
            shutil.copytree(p, dst / name)
        elif p.exists():
            shutil.copy2(p, dst / name)


def export_bundle(run_dirs: list[str | Path], out: str | Path, pipeline: PipelineConfig | dict | None = None,
                  log=print) -> Path:
    """Assemble a bundle from one recall run and at most one ranking run (see the module doc)."""
    runs = [Path(d) for d in run_dirs]
    missing = [str(d) for d in runs if not d.is_dir()]
    if missing:
        raise BundleError(f"not a run directory: {missing}")
    recall = [d for d in runs if _is_recall_run(d)]
    rank = [d for d in runs if _is_rank_run(d)]
    other = [str(d) for d in runs if d not in recall and d not in rank]
    if len(recall) != 1 or len(rank) > 1 or other:
        raise BundleError(f"export needs exactly one recall run (untwine recall: recall.yaml, catalogue.parquet) "
                          f"and at most one ranking run (untwine train: config.yaml, best.safetensors); got "
                          f"recall {[str(d) for d in recall]}, ranking {[str(d) for d in rank]}, unrecognised {other}")
    cfg = pipeline if isinstance(pipeline, PipelineConfig) else PipelineConfig.model_validate(pipeline or {})
    out = Path(out).resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        t0 = time.perf_counter()
        _copy_run(recall[0], tmp / "recall", ["recall.yaml", "config.yaml", "feature_space.json", "vocab",
                                              "best.safetensors", "catalogue.parquet", "item_vectors.safetensors",
                                              "channels", "result.json"])
        if (tmp / "recall" / "item_vectors.safetensors").exists():
            vectors = load_numpy(str(tmp / "recall" / "item_vectors.safetensors"))["vectors"]
            index = VectorIndex(cfg.index).build(vectors)
            (tmp / "recall" / "index.faiss").write_bytes(index.to_bytes().tobytes())
            log(f"index {cfg.index.kind} over {len(vectors)} item vectors ({time.perf_counter() - t0:.1f}s)")
        if rank:
            _copy_run(rank[0], tmp / "rank", ["config.yaml", "feature_space.json", "vocab", "best.safetensors",
                                              "calibration.json", "result.json"])
        (tmp / "pipeline.json").write_text(json.dumps(cfg.model_dump(mode="json"), indent=2))
        files = {str(p.relative_to(tmp)): {"sha256": sha256_file(p), "bytes": p.stat().st_size}
                 for p in sorted(tmp.rglob("*")) if p.is_file()}
        bundle_id = hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()[:16]
        manifest = {"format": FORMAT, "version": VERSION, "bundle_id": bundle_id,
                    "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                    "sources": {"recall": str(recall[0].resolve()), "rank": str(rank[0].resolve()) if rank else None},
                    "files": files}
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2))
        if out.exists():  # swap: the old bundle stays whole until the new one is in place
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old.", dir=out.parent))
            os.replace(out, old / "bundle")
            os.replace(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log(f"bundle {bundle_id} at {out}: {len(files)} files, "
        f"{sum(f['bytes'] for f in files.values()) / 1e6:.1f} MB")
    return out


def verify_bundle(path: str | Path) -> dict[str, Any]:
    """The manifest, after checking format, version and every file's size and sha256."""
    root = Path(path)
    mpath = root / MANIFEST
    if not mpath.exists():
        raise BundleError(f"{root}: no {MANIFEST}; not an untwine bundle")
    try:
        manifest = json.loads(mpath.read_text())
    except json.JSONDecodeError as e:
        raise BundleError(f"{mpath}: not valid JSON ({e})") from None
    if manifest.get("format") != FORMAT or manifest.get("version") != VERSION:
        raise BundleError(f"{mpath}: format {manifest.get('format')!r} version {manifest.get('version')!r}; "
                          f"expected {FORMAT!r} version {VERSION}")
    listed = manifest.get("files") or {}
    present = {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()} - {MANIFEST}
    unlisted = sorted(present - set(listed))
    absent = sorted(set(listed) - present)
    if unlisted or absent:
        raise BundleError(f"{root}: files not in the manifest {unlisted[:5]}, files missing {absent[:5]}")
    for rel, info in listed.items():
        p = root / rel
        if p.stat().st_size != info["bytes"] or sha256_file(p) != info["sha256"]:
            raise BundleError(f"{p}: sha256 differs from the manifest (the bundle was altered); refusing to load")
    return manifest


def load_pipeline(root: Path) -> PipelineConfig:
    return PipelineConfig.model_validate(json.loads((root / "pipeline.json").read_text()))


def load_index(root: Path, config: IndexConfig) -> VectorIndex | None:
    path = root / "recall" / "index.faiss"
    if not path.exists():
        return None
    return VectorIndex.from_bytes(np.frombuffer(path.read_bytes(), dtype=np.uint8), config)


def load_funnel(path: str | Path):
    """The serving funnel of a bundle (hashes verified first); the ``untwine serve`` loader."""
    from untwine.serving.funnel import BundleFunnel

    return BundleFunnel.load(path)
