"""The online funnel of a bundle: recall -> pre-rank -> rank -> re-rank for one request.

Per request the expensive work is done once, not per candidate:

- the request's user and context features (its history included) are encoded into ONE row per model;
- the catalogue's item features were encoded once at load for each model (vocabulary ids, normalised
  numbers, padded lists), so a candidate batch is assembled by gathering catalogue rows and
  broadcasting the user row, then scored in one forward pass;
- the two-tower's user vector is computed once: it queries the ANN index (two-tower channel) and
  pre-ranks the merged candidates by <u, v_i> (item vectors precomputed).

Items the catalogue does not know (in ``/score``) are encoded from their id alone: the OOV embedding.
History ids the catalogue does not know are kept in the model's history feature (OOV) but cannot seed
the item-based channels. ``BundleFunnel`` is immutable after load and safe to share between threads;
the only mutable state is in channels that count impressions (cold start), which lock.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
import yaml
from safetensors.numpy import load_file as load_numpy

from untwine.core.batch import Batch
from untwine.core.features import FeatureSpace
from untwine.core.schema import FeatureKind, FieldGroup, Schema
from untwine.data.encode import encode_features, load_vocabs
from untwine.data.record import encode_record
from untwine.data.loader import SplitArrays, column_index, make_batch
from untwine.data.vocab import MISSING
from untwine.nn.quantize import scoring_copy
from untwine.train.run import load_run
from untwine.rerank.pipeline import rerank
from untwine.retrieval.data import fill_missing_columns
from untwine.retrieval.merge import merge_channels
from untwine.retrieval.run import load_channel
from untwine.serving.bundle import load_index, load_pipeline, verify_bundle
from untwine.serving.contract import RecommendedItem, RecommendRequest, RecommendResponse, ScoreRequest, ScoreResponse

TWO_TOWER = "two_tower"


def _load_model(run: Path):
    """A run's model (best weights, eval mode), feature space and vocabularies."""
    _, space, model = load_run(run)
    return model, space, load_vocabs(space, run / "vocab")


def _item_side(schema: Schema) -> dict[str, bool]:
    """Array key of ``encode_features`` -> True when it comes from the item (catalogue) side."""
    side = {}
    for f in schema.features:
        item = f.group == FieldGroup.ITEM
        if f.kind == FeatureKind.MULTI_CATEGORICAL:
            side[f"multi.{f.name}"] = item
        elif f.kind == FeatureKind.SEQUENCE:
            side[f"seq.{f.name}"] = item
            side[f"seq.{f.name}.ts"] = item
            for s in f.side_fields:
                side[f"seq.{f.name}.{s}"] = item
        elif f.kind == FeatureKind.VECTOR:
            side[f"vec.{f.name}"] = item
    return side


def _features_view(space: FeatureSpace) -> dict:
    """What encoding a request row depends on: the space without its labels."""
    d = space.to_dict()
    d["schema"] = {k: v for k, v in d["schema"].items() if k not in ("labels",)}
    return d


def shared_user_keys(model: torch.nn.Module) -> set[str]:
    """Array keys of user-side blocks the model may receive as ONE row for a whole candidate batch: pooled
    sequences without similarity fields, projected vectors and multi-valued features, which
    ``FieldEmbedding`` computes once and broadcasts. Target-aware sequences need one row per candidate."""
    from untwine.nn.embedding import FieldEmbedding, SequenceField

    keys: set[str] = set()
    embeddings = [m for m in model.modules() if isinstance(m, FieldEmbedding)]
    for emb in embeddings:
        keys |= {f"multi.{name}" for name, _ in emb.multi} | {f"vec.{name}" for name in emb.vector_proj}
    pooled = {}
    for m in model.modules():
        if isinstance(m, SequenceField):
            ok = m.encoder is None and not m.similarity_tables
            pooled[m.name] = pooled.get(m.name, True) and ok
    for emb in embeddings:
        for seq in emb.sequences:
            if pooled.get(seq.name):
                keys |= {f"seq.{seq.name}", f"seq.{seq.name}.ts", *(f"seq.{key}" for key, _, _ in seq.sides)}
    paired = {n for emb in embeddings for pair in emb.pairs for n in pair}
    return {k for k in keys if k.split(".", 1)[1] not in paired}


class RowEncoder:
    """Candidate batches for one model: catalogue item rows (encoded once) beside one user row."""

    def __init__(self, space: FeatureSpace, vocabs, catalogue: pa.Table, shared: set[str] = frozenset()) -> None:
        self.space, self.vocabs = space, vocabs
        self.shared = shared  # user-side keys passed as one row (see shared_user_keys)
        schema = space.schema
        self.columns = column_index(schema)
        self.side = _item_side(schema)
        self.cat_item = np.array([f.group == FieldGroup.ITEM for f in schema.categorical], bool)
        self.num_item = np.array([f.group == FieldGroup.ITEM for f in schema.numeric], bool)
        self.items = self._encode(catalogue, "catalogue")

    def _encode(self, table: pa.Table, where: str) -> dict[str, np.ndarray]:
        arrays = encode_features(fill_missing_columns(table, self.space.schema), self.space, self.vocabs, where=where)
        if "categorical" in arrays:
            arrays["categorical"] = arrays["categorical"].astype(np.int64)
        return arrays

    def user_row(self, record: dict) -> dict[str, np.ndarray]:
        """Encode one request record (``BundleFunnel._record``): the arrays ``encode_features`` would give."""
        arrays = encode_record(record, self.space, self.vocabs)
        if "categorical" in arrays:
            arrays["categorical"] = arrays["categorical"].astype(np.int64)
        return arrays

    def unknown_items(self, item_key: str, ids: list[str]) -> dict[str, np.ndarray]:
        return self._encode(pa.table({item_key: pa.array(ids, pa.string())}), "request items")

    def batch(self, user: dict[str, np.ndarray], rows: np.ndarray, extra: dict[str, np.ndarray] | None = None) -> Batch:
        """Catalogue rows ``rows`` (and ``extra`` encoded items appended after them) with the user row."""
        n = len(rows) + (0 if extra is None else len(next(iter(extra.values()))))
        out: dict[str, np.ndarray] = {}

        def items(key: str) -> np.ndarray:
            a = self.items[key][rows]
            return a if extra is None else np.concatenate([a, extra[key].astype(a.dtype)])

        for key, mask in (("categorical", self.cat_item), ("numeric", self.num_item), ("numeric_raw", self.num_item)):
            if key in self.items:
                block = np.repeat(user[key], n, axis=0)
                if mask.any():
                    block[:, mask] = items(key)[:, mask]
                out[key] = block
        for key, is_item in self.side.items():
            if key in self.items:
                if is_item:
                    out[key] = items(key)
                else:
                    out[key] = user[key] if key in self.shared and n > 1 else np.repeat(user[key], n, axis=0)
        for key in ("groups", "timestamp"):
            if key in user:
                out[key] = np.repeat(user[key], n, axis=0)
        out["labels"] = np.zeros((n, len(self.space.schema.labels)), np.float32)
        return make_batch(SplitArrays(arrays=out, rows=n), slice(None), self.columns)


class BundleFunnel:
    """A loaded bundle serving ``recommend`` and ``score`` (see the module doc)."""

    def __init__(self, root: Path, manifest: dict) -> None:
        self.root, self.manifest = root, manifest
        self.bundle_id = manifest["bundle_id"]
        self.config = cfg = load_pipeline(root)
        recall = root / "recall"
        self.catalogue = pq.read_table(recall / "catalogue.parquet")
        recall_meta = yaml.safe_load((recall / "recall.yaml").read_text())
        self.tower, self.tower_space, tower_vocabs = _load_model(recall)
        schema = self.tower_space.schema
        from untwine.retrieval.data import default_keys

        _, default_item = default_keys(schema)
        self.item_key = recall_meta.get("item_key") or default_item
        self.item_ids = np.asarray(self.catalogue.column(self.item_key).to_pylist(), dtype=object).astype(str)
        self.index_of = {k: i for i, k in enumerate(self.item_ids)}
        self._column_strings: dict[str, list[str]] = {}  # catalogue column -> its values as request strings
        self.item_vectors = load_numpy(str(recall / "item_vectors.safetensors"))["vectors"]
        self.index = load_index(root, cfg.index)
        self.channels = {p.stem: load_channel(recall / "channels", p.stem)
                         for p in sorted((recall / "channels").glob("*.json"))} if (recall / "channels").exists() else {}
        self.tower_rows = RowEncoder(self.tower_space, tower_vocabs, self.catalogue)
        if (root / "rank").exists():
            self.ranker, self.rank_space, rank_vocabs = _load_model(root / "rank")
            self.rank_rows = RowEncoder(self.rank_space, rank_vocabs, self.catalogue, shared_user_keys(self.ranker))
            self.scorer = scoring_copy(self.ranker, cfg.rank_precision)  # the ranker in the pipeline's format
            tasks = self.rank_space.schema.task_names
            self.rank_task = cfg.rank_task or tasks[0]
            if self.rank_task not in tasks:
                raise ValueError(f"pipeline rank_task {self.rank_task!r} is not a task of the ranking model {tasks}")
        else:
            self.ranker, self.rank_space, self.rank_rows, self.rank_task, self.scorer = None, None, None, None, None
        # the same features (labels may differ: the ranker may train on fewer tasks) and byte-identical
        # vocabularies, as when both runs encoded one dataset: one encoded request row serves both models
        self.shared_schema = self.rank_space is not None and _features_view(self.rank_space) == _features_view(self.tower_space)
        self.shared_rows = self.shared_schema and self._vocab_hashes("recall") == self._vocab_hashes("rank")
        self.quotas = cfg.quotas or self._default_quotas()
        unknown = sorted(set(self.quotas) - set(self.channels) - {TWO_TOWER})
        if unknown:
            raise ValueError(f"pipeline quotas name unknown channels {unknown}; the bundle has "
                             f"{sorted(self.channels) + [TWO_TOWER]}")
        cat_col = cfg.category_feature or next(
            (f.source for f in schema.categorical if f.group == FieldGroup.ITEM and f.name != self.item_key), None)
        self.category = self._codes(cat_col)
        self.promoted = (np.asarray(self.catalogue.column(cfg.promoted_feature).to_pylist(), dtype=bool)
                         if cfg.promoted_feature else None)
        self.rerank_config = self._effective_rerank()
        self.history_feature = cfg.history_feature or next(
            (f.name for f in self.all_sequences() if f.vocab_from == self.item_key and f.group != FieldGroup.ITEM), None)

    @classmethod
    def load(cls, path: str | Path, warm_up: bool = True) -> "BundleFunnel":
        root = Path(path)
        funnel = cls(root, verify_bundle(root))
        if warm_up:
            funnel.warm_up()
        return funnel

    def warm_up(self) -> None:
        """One request before serving: builds the vocabularies' lookup dicts and the index's and torch's
        first-call state, so the first real request is not 10x slower (and a reload swaps in a warm funnel).
        Impression counters of cold-start channels are not touched."""
        self._recommend(RecommendRequest(user={}, history=list(self.item_ids[:3]), k=5), count_impressions=False)

    # ---- load-time helpers

    def _vocab_hashes(self, run: str) -> dict[str, str]:
        prefix = f"{run}/vocab/"
        return {k[len(prefix):]: v["sha256"] for k, v in self.manifest["files"].items() if k.startswith(prefix)}

    def _default_quotas(self) -> dict[str, int]:
        total = self.config.recall_total
        if not self.channels:
            return {TWO_TOWER: total}
        rest = total // 3
        share = max(1, rest // len(self.channels))
        return {TWO_TOWER: total - share * len(self.channels), **{n: share for n in self.channels}}

    def _effective_rerank(self):
        """The pipeline's re-rank config without the rules whose item column the catalogue lacks."""
        rr = self.config.rerank
        if rr.rules is None:
            return rr
        off = {}
        if self.category is None:
            off["max_consecutive_same_category"] = None
        if self.promoted is None:
            off["max_promoted_per_window"] = None
        return rr.model_copy(update={"rules": rr.rules.model_copy(update=off)}) if off else rr

    def _codes(self, column: str | None) -> np.ndarray | None:
        if column is None or column not in self.catalogue.column_names:
            return None
        values = np.asarray(self.catalogue.column(column).to_pylist(), dtype=object).astype(str)
        return np.unique(values, return_inverse=True)[1].astype(np.int64)

    def all_sequences(self):
        spaces = [self.tower_space] + ([self.rank_space] if self.rank_space is not None else [])
        return [f for s in spaces for f in s.schema.sequences]

    def describe(self) -> dict[str, Any]:
        return {"items": len(self.item_ids), "channels": [TWO_TOWER, *self.channels], "quotas": self.quotas,
                "models": {"recall": TWO_TOWER,
                           "rank": None if self.ranker is None else type(self.ranker).__name__},
                "rank_precision": None if self.ranker is None else self.config.rank_precision,
                "index": self.config.index.kind, "bundle": self.bundle_id}

    # ---- request encoding

    def _record(self, user: dict, history: list[str], space: FeatureSpace) -> dict:
        """The request as one feature record: the user dict, the history as the user-side sequence (side
        fields from the catalogue, timestamps from the request time unless given), absent vectors zeros."""
        schema = space.schema
        rec = dict(user)
        for f in schema.vectors:  # absent vectors (the item side, or a user vector not sent) are zeros
            rec.setdefault(f.source, [0.0] * f.dim)
        if schema.timestamp and rec.get(schema.timestamp) is None:
            rec[schema.timestamp] = int(time.time())
        for f in schema.sequences:
            if f.group == FieldGroup.ITEM or f.vocab_from != self.item_key or f.source in user:
                continue
            rec[f.source] = history
            if f.timestamps and f.timestamps not in user:
                rec[f.timestamps] = [rec.get(schema.timestamp, 0)] * len(history)
            for side, ref in f.side_fields.items():
                if side not in user:
                    col = schema.feature(ref).source
                    rec[side] = [self._catalogue_value(col, h) for h in history]
        return rec

    def _records(self, user: dict, history: list[str]) -> tuple[dict, dict | None]:
        """The request row for the two-tower and for the ranker (one table when their schemas agree)."""
        tower = self._record(user, history, self.tower_space)
        if self.rank_space is None:
            return tower, None
        return tower, tower if self.shared_schema else self._record(user, history, self.rank_space)

    def _catalogue_value(self, column: str, item_id: str) -> str:
        i = self.index_of.get(item_id)
        if i is None or column not in self.catalogue.column_names:
            return MISSING  # an empty string would vanish from the joined list and misalign the sequence
        values = self._column_strings.get(column)
        if values is None:  # once per column (a pyarrow scalar per history item cost ~20 us each); two threads
            # racing here build the same list
            values = self._column_strings[column] = [MISSING if v is None else str(v)
                                                     for v in self.catalogue.column(column).to_pylist()]
        return values[i]

    def _known(self, ids: list[str]) -> np.ndarray:
        return np.array([self.index_of[i] for i in ids if i in self.index_of], dtype=np.int64)

    @torch.inference_mode()
    def _user_vector(self, table: dict) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """The request's user vector and its encoded row (reused by the ranker when ``shared_rows``)."""
        row = self.tower_rows.user_row(table)
        one = self.tower_rows.batch(row, np.zeros(1, np.int64))  # any item row: the user tower ignores it
        return self.tower.user_vectors(one)[0].numpy(), row

    # ---- the two endpoints

    def recommend(self, req: RecommendRequest) -> RecommendResponse:
        return self._recommend(req, count_impressions=True)

    def _recommend(self, req: RecommendRequest, count_impressions: bool) -> RecommendResponse:
        cfg = self.config
        timings: dict[str, float] = {}
        t0 = time.perf_counter()
        history = self._known(req.history)
        exclude = np.union1d(history, self._known(req.exclude))
        tower_table, rank_table = self._records(req.user, req.history)
        u, tower_row = self._user_vector(tower_table)
        results: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        for name, quota in self.quotas.items():
            if quota <= 0:
                continue
            if name == TWO_TOWER:
                if self.index is not None:
                    scores, ids = self.index.search(u[None, :], quota, exclude=[exclude])
                else:
                    s = self.item_vectors @ u
                    s[exclude] = -np.inf
                    ids = np.argsort(-s, kind="stable")[None, :quota]
                    scores = s[ids]
                results[name] = (ids[0], scores[0])
            else:
                ids, scores = self.channels[name].retrieve([history], quota, exclude=[exclude])
                results[name] = (ids[0], scores[0])
        merged = merge_channels(results, self.quotas, cfg.recall_total)
        cands, origin = merged.items, [merged.channel_names[c] for c in merged.channels]
        t1 = time.perf_counter()
        timings["recall"] = (t1 - t0) * 1e3
        pre = self.item_vectors[cands] @ u
        keep = np.argsort(-pre, kind="stable")[:cfg.prerank_size]
        cands, pre = cands[keep], pre[keep]
        origin = [origin[i] for i in keep]
        t2 = time.perf_counter()
        timings["prerank"] = (t2 - t1) * 1e3
        rel = (self._rank(rank_table, cands, row=tower_row if self.shared_rows else None)
               if self.ranker is not None else pre)
        t3 = time.perf_counter()
        timings["rank"] = (t3 - t2) * 1e3
        rr_cfg = self.rerank_config.model_copy(update={"k": req.k})
        pool = np.argsort(-rel, kind="stable")[:max(cfg.rerank_pool, 2 * req.k)]  # re-rank the head only
        top = cands[pool]
        order = pool[rerank(rel[pool], rr_cfg, embeddings=self.item_vectors[top],
                            category=None if self.category is None else self.category[top],
                            promoted=None if self.promoted is None else self.promoted[top]).items]
        t4 = time.perf_counter()
        timings["rerank"] = (t4 - t3) * 1e3
        timings["total"] = (t4 - t0) * 1e3
        chosen = cands[order]
        for ch in self.channels.values() if count_impressions else ():
            if hasattr(ch, "record_impressions"):  # guaranteed-exposure channels count what is shown
                ch.record_impressions(chosen)
        items = [RecommendedItem(item_id=self.item_ids[c], score=float(rel[i]), channel=origin[i])
                 for i, c in zip(order, chosen)]
        debug = None
        if req.debug:
            debug = {"recall": {n: len(r[0]) for n, r in results.items()}, "merged": int(len(merged.items)),
                     "prerank": int(len(cands))}
        return RecommendResponse(items=items, timings_ms=timings, bundle=self.bundle_id, debug=debug)

    @torch.inference_mode()
    def _rank(self, table: dict, rows: np.ndarray, extra: dict | None = None,
              row: dict[str, np.ndarray] | None = None) -> np.ndarray:
        user_row = self.rank_rows.user_row(table) if row is None else row
        batch = self.rank_rows.batch(user_row, rows, extra)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.config.rank_precision == "bf16"):
            logits = self.scorer(batch)[self.rank_task]
        return torch.sigmoid(logits.float()).numpy()

    def score(self, req: ScoreRequest) -> ScoreResponse:
        t0 = time.perf_counter()
        known = [i for i in req.items if i in self.index_of]
        unknown = [i for i in req.items if i not in self.index_of]
        rows = np.array([self.index_of[i] for i in known], dtype=np.int64)
        encoder = self.rank_rows or self.tower_rows
        extra = encoder.unknown_items(self.item_key, unknown) if unknown else None
        tower_table, rank_table = self._records(req.user, req.history)
        if self.ranker is not None:
            scores = self._rank(rank_table, rows, extra)
        else:
            u, user_row = self._user_vector(tower_table)
            vec = self.item_vectors[rows]
            if extra is not None:
                with torch.inference_mode():
                    batch = self.tower_rows.batch(user_row, np.zeros(0, np.int64), extra)
                    vec = np.concatenate([vec, self.tower.item_vectors(batch).numpy()])
            scores = vec @ u
        by_id = dict(zip(known + unknown, scores.tolist()))
        return ScoreResponse(scores=[by_id[i] for i in req.items], unknown_items=unknown, bundle=self.bundle_id,
                             timings_ms={"rank": (time.perf_counter() - t0) * 1e3})
