"""``untwine recall``: fit the recall channels of one dataset, evaluate them on full ranking, save them.

A recall run directory holds everything the funnel's retrieval stage needs, in formats that load
without unpickling:

    config.yaml, feature_space.json, vocab/          the two-tower's data contract
    best.safetensors                                 two-tower weights (best valid recall@K epoch)
    item_vectors.safetensors                         item-tower vectors of the whole catalogue
    catalogue.parquet                                item ids and item-group features, in index order
    channels/<name>.safetensors + <name>.json        each item-based channel's state and config
    result.json                                      valid and test Recall/NDCG/HitRate@K per channel

Each channel is evaluated alone on the full catalogue (its own top-K list, the user's seen items
excluded), and so is the merged candidate list (quotas per channel, dedup), as PROTOCOLS.md's P7 asks.
"""
from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pyarrow.parquet as pq
import torch
import yaml
from pydantic import BaseModel, ConfigDict, Field
from safetensors.numpy import save_file as save_numpy
from safetensors.torch import load_file

from untwine.core.io import atomic_path, atomic_write_json, atomic_write_text
from untwine.data.encode import load_vocabs, prepare
from untwine.metrics.retrieval import topk_metrics
from untwine.models import build_model
from untwine.retrieval.channel import RetrievalChannel, topk_dense
from untwine.retrieval.coldstart import ColdStartChannel
from untwine.retrieval.data import RetrievalData, load_retrieval_data
from untwine.retrieval.itemcf import ItemCFChannel, SwingChannel
from untwine.retrieval.merge import merge_channels
from untwine.retrieval.popularity import PopularityChannel
from untwine.retrieval.tags import TagChannel
from untwine.retrieval.two_tower import TwoTowerTrainConfig, encode_vectors, fit_two_tower
from untwine.train.config import ModelSection
from untwine.train.run import resolve_dataset, seed_everything

CHANNEL_TYPES: dict[str, type[RetrievalChannel]] = {
    c.kind: c for c in (PopularityChannel, ItemCFChannel, SwingChannel, TagChannel, ColdStartChannel)}
# channels fitted on an item-side matrix built from a catalogue column (``feature``): the tag channel's
# item x tag incidence, the cold-start channel's content vectors
SIDE_ARGUMENT = {"tags": "item_tags", "coldstart": "item_attributes"}


class ChannelSpec(BaseModel):
    """One item-based channel: its ``type`` and that type's config (``name`` defaults to the key)."""

    model_config = ConfigDict(extra="allow", frozen=True)
    type: str

    def options(self) -> dict[str, Any]:
        return {k: v for k, v in (self.model_extra or {}).items() if k != "feature"}

    @property
    def feature(self) -> str | None:
        return (self.model_extra or {}).get("feature")


class MergeSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    quotas: dict[str, int] = Field(default_factory=dict)  # channel name -> candidates it contributes
    total: int = Field(500, ge=1)  # merged list length (leftovers fill it)


class RecallConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    dataset: str
    user_key: str | None = None
    item_key: str | None = None
    model: ModelSection | None = None  # the two-tower (name two_tower); None: item-based channels only
    train: TwoTowerTrainConfig = Field(default_factory=TwoTowerTrainConfig)
    channels: dict[str, ChannelSpec] = Field(default_factory=dict)
    merge: MergeSpec | None = None
    ks: tuple[int, ...] = (20, 50, 100)
    exclude: tuple[str, ...] = ("train",)  # splits whose positives are excluded from the ranking
    # also exclude (and feed the item-based channels) the items of those rows' history sequences:
    # "all earlier items" of leave-one-out protocols (P6), where a user's first item is never a target
    exclude_sequence_items: bool = False
    run_dir: str | None = None
    base_dir: str | None = None

    @classmethod
    def load(cls, path: str | Path, overrides: list[str] | None = None) -> "RecallConfig":
        from untwine.train.config import apply_overrides

        path = Path(path)
        raw = yaml.safe_load(path.read_text()) or {}
        raw.setdefault("base_dir", str(path.parent.resolve()))
        return cls.model_validate(apply_overrides(raw, overrides or []))


def build_channel(name: str, spec: ChannelSpec) -> RetrievalChannel:
    if spec.type not in CHANNEL_TYPES:
        raise ValueError(f"channel {name!r}: unknown type {spec.type!r}; known: {sorted(CHANNEL_TYPES)}")
    cls = CHANNEL_TYPES[spec.type]
    return cls(cls.config_class.model_validate({"name": name, **spec.options()}))


def item_side_matrix(data: RetrievalData, schema, column: str):
    """(N, T) multi-hot CSR of a categorical or multi-valued catalogue column, or the (N, d) float32
    array of a vector column."""
    import scipy.sparse as sp

    if column not in data.items.column_names:
        raise ValueError(f"channel feature {column!r} is not an item column of the catalogue "
                         f"{data.items.column_names}")
    feature = next((f for f in schema.features if f.source == column), None)
    values = data.items.column(column).to_pylist()
    if feature is not None and feature.kind.value == "vector":
        return np.asarray(values, dtype=np.float32)
    delimiter = feature.delimiter if feature is not None and feature.kind.value == "multi_categorical" else None
    tokens = [[] if v is None else (str(v).split(delimiter) if delimiter else [str(v)]) for v in values]
    vocab = {t: j for j, t in enumerate(sorted({t for ts in tokens for t in ts if t}))}
    rows = np.repeat(np.arange(len(tokens)), [len([t for t in ts if t]) for ts in tokens])
    cols = np.array([vocab[t] for ts in tokens for t in ts if t], dtype=np.int64)
    return sp.csr_matrix((np.ones(len(cols), np.float32), (rows, cols)), shape=(len(tokens), len(vocab)))


def load_channel(directory: Path, name: str) -> RetrievalChannel:
    from safetensors.numpy import load_file as load_numpy

    meta = json.loads((directory / f"{name}.json").read_text())
    return CHANNEL_TYPES[meta["type"]].from_state(load_numpy(str(directory / f"{name}.safetensors")), meta["config"])


def save_channel(directory: Path, channel: RetrievalChannel) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    with atomic_path(directory / f"{channel.name}.safetensors") as tmp:
        save_numpy({k: np.ascontiguousarray(v) for k, v in channel.state().items()}, str(tmp))
    atomic_write_json(directory / f"{channel.name}.json", {"type": channel.kind, "config": channel.config_dict()})


def _channel_lists(channel: RetrievalChannel, data: RetrievalData, split: str, k: int,
                   exclude: tuple[str, ...], with_sequences: bool) -> tuple[np.ndarray, np.ndarray]:
    """A channel's top-k per query user: its history is everything excluded (the user's earlier items)."""
    seen = data.histories(data.query_users[split], excluded_splits(exclude, split), with_sequences)
    return channel.retrieve(seen, k, exclude=seen)


def excluded_splits(exclude: tuple[str, ...], split: str) -> tuple[str, ...]:
    """The splits whose items are excluded when ranking for ``split``: never the split's own targets
    (``exclude: [train, valid]`` means train for the valid ranking, train and valid for the test one)."""
    return tuple(s for s in exclude if s != split)


def run_recall(cfg: RecallConfig, run_dir: str | Path | None = None, log: Callable[[str], None] = print) -> dict:
    tc = cfg.train
    if tc.threads:
        torch.set_num_threads(tc.threads)
    spec = resolve_dataset(cfg.dataset, cfg.base_dir)
    run_dir = Path(run_dir or cfg.run_dir or f"runs/{spec.name}-recall-s{tc.seed}")
    run_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    data = load_retrieval_data(spec, cfg.user_key, cfg.item_key)
    log(f"retrieval data {spec.name}: {data.n_users} users, {data.n_items} items, "
        f"{ {s: len(p[0]) for s, p in data.positives.items()} } positives ({time.perf_counter() - t0:.1f}s)")
    with atomic_path(run_dir / "catalogue.parquet") as tmp:
        pq.write_table(data.items, tmp)
    kmax = max(cfg.ks)
    result: dict[str, Any] = {"dataset": spec.name, "seed": tc.seed, "n_items": data.n_items,
                              "n_users": data.n_users, "valid": {}, "test": {}, "fit_seconds": {}}
    lists: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]] = {s: {} for s in ("valid", "test")}
    train_matrix = data.matrix(("train",), cfg.exclude_sequence_items)
    for name, ch_spec in cfg.channels.items():
        channel = build_channel(name, ch_spec)
        side = {}
        if ch_spec.type in SIDE_ARGUMENT:
            if ch_spec.feature is None:
                raise ValueError(f"channel {name!r} ({ch_spec.type}) needs `feature`: the catalogue column "
                                 f"it reads (e.g. genres, category)")
            side[SIDE_ARGUMENT[ch_spec.type]] = item_side_matrix(data, spec.schema, ch_spec.feature)
        t = time.perf_counter()
        channel.fit(train_matrix, **side)
        result["fit_seconds"][name] = time.perf_counter() - t
        save_channel(run_dir / "channels", channel)
        for split in lists:
            lists[split][name] = _channel_lists(channel, data, split, kmax, cfg.exclude, cfg.exclude_sequence_items)
            result[split][name] = topk_metrics(lists[split][name][0], data.targets(split), cfg.ks).as_dict()
        log(f"{name}: fit {result['fit_seconds'][name]:.1f}s, test {_brief(result['test'][name], cfg.ks)}")
    if cfg.model is not None:
        _two_tower(cfg, spec, data, run_dir, result, lists, log)
    if cfg.merge is not None:
        for split in lists:
            merged = [merge_channels({n: (ids[u], sc[u]) for n, (ids, sc) in lists[split].items()},
                                     cfg.merge.quotas, cfg.merge.total).items
                      for u in range(len(data.query_users[split]))]
            result[split]["merged"] = topk_metrics(merged, data.targets(split), (cfg.merge.total,)).as_dict()
        log(f"merged ({cfg.merge.total} candidates): test recall@{cfg.merge.total} "
            f"{result['test']['merged'][f'recall@{cfg.merge.total}']:.4f}")
    atomic_write_text(run_dir / "recall.yaml", yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
    atomic_write_json(run_dir / "result.json", result)
    return result


def _two_tower(cfg: RecallConfig, spec, data: RetrievalData, run_dir: Path, result: dict, lists: dict, log) -> None:
    tc = cfg.train
    prepared = prepare(spec, progress=tc.progress, log=log)
    vocabs = load_vocabs(prepared.space, prepared.root / "vocab")
    seed_everything(tc.seed)
    name = cfg.model.name
    model = build_model(name, prepared.space, cfg.model.options())
    atomic_write_text(run_dir / "config.yaml", yaml.safe_dump(
        {"dataset": cfg.dataset, "base_dir": cfg.base_dir, "model": cfg.model.model_dump(mode="json"),
         "train": {"seed": tc.seed}}, sort_keys=False))
    atomic_write_json(run_dir / "feature_space.json", prepared.space.to_dict())
    if not (run_dir / "vocab").exists():
        shutil.copytree(prepared.root / "vocab", run_dir / "vocab")
    t = time.perf_counter()
    fit = fit_two_tower(model, prepared, data, vocabs, tc, run_dir, log=log,
                        exclude=excluded_splits(cfg.exclude, "valid"), with_sequences=cfg.exclude_sequence_items)
    result["fit_seconds"][name] = time.perf_counter() - t
    result["two_tower_fit"] = {"best_epoch": fit.best_epoch, "epochs_run": fit.epochs_run,
                               "train_samples_per_s": fit.train_samples_per_s, "history": fit.history}
    model.load_state_dict(load_file(str(run_dir / "best.safetensors")))
    items = encode_vectors(model, data.items, prepared.space, vocabs, "item")
    with atomic_path(run_dir / "item_vectors.safetensors") as tmp:
        save_numpy({"vectors": items}, str(tmp))
    kmax = max(cfg.ks)
    for split in lists:
        # one exact top-kmax list per user serves both the metrics and the merge
        users = encode_vectors(model, data.queries[split], prepared.space, vocabs, "user")
        seen = data.histories(data.query_users[split], excluded_splits(cfg.exclude, split), cfg.exclude_sequence_items)
        lists[split][name] = _exact_topk(users, items, seen, kmax)
        result[split][name] = topk_metrics(lists[split][name][0], data.targets(split), cfg.ks).as_dict()
    log(f"{name}: fit {result['fit_seconds'][name]:.1f}s (best epoch {fit.best_epoch}), "
        f"test {_brief(result['test'][name], cfg.ks)}")


def _exact_topk(users: np.ndarray, items: np.ndarray, seen: list[np.ndarray], k: int,
                block: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """Top-k items by <u, v> per user, the seen items excluded, in blocks of users (bounded memory)."""
    parts = [topk_dense(users[lo:lo + block] @ items.T, k, seen[lo:lo + block]) for lo in range(0, len(users), block)]
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def _brief(metrics: dict, ks) -> str:
    return "  ".join(f"R@{k} {metrics[f'recall@{k}']:.4f} N@{k} {metrics[f'ndcg@{k}']:.4f}" for k in ks)
