"""Two-tower retrieval training: in-batch sampled softmax with log-Q correction, early stopping on
valid Recall@K over the full catalogue.

Each training row is a positive (user, item) pair. The other rows' items are the row's negatives, so
an item appears as a negative in proportion to its frequency: popular items are pushed down more than
they deserve. Subtracting log q_j, the log of item j's share of the training positives, from its
logit makes the softmax estimate unbiased (Yi et al., RecSys 2019; ``untwine.train.losses.sampled_softmax``).
``extra_negatives`` adds M uniformly drawn catalogue items per batch. Each negative's correction is
the log of its expected count in its own sample: log(B q_j) for the B in-batch items, log(M / N) for
the uniform ones, so the two sources stay on one scale.

Every epoch ends with a full-ranking evaluation on the valid split: item vectors of the whole
catalogue, one user vector per query user, scores <u, v>, the user's train items excluded.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field
from safetensors.torch import save_file
from torch import Tensor

from untwine.core.batch import Batch
from untwine.core.io import atomic_path
from untwine.data.encode import PreparedData
from untwine.data.loader import BatchLoader, SplitArrays
from untwine.data.vocab import NUM_RESERVED, Vocab
from untwine.metrics.retrieval import full_ranking_metrics
from untwine.models.two_tower import TwoTower
from untwine.retrieval.data import RetrievalData, encode_rows
from untwine.train.losses import sampled_softmax


class TwoTowerTrainConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    batch_size: int = Field(1024, ge=2)
    eval_batch_size: int = Field(4096, ge=1)
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    epochs: int = Field(20, ge=1)
    patience: int = Field(2, ge=1)
    log_q: bool = True  # subtract log item frequency from in-batch logits
    extra_negatives: int = Field(0, ge=0)  # uniform random catalogue items added to every batch
    monitor_k: int = Field(50, ge=1)  # early stopping on valid recall@monitor_k
    seed: int = 2024
    threads: int | None = Field(None, ge=1)
    progress: bool = True
    max_steps_per_epoch: int | None = Field(None, ge=1)


@dataclass
class TwoTowerFit:
    best_epoch: int
    epochs_run: int
    valid: dict
    train_samples_per_s: float
    history: list[dict]


def item_log_q(train_items: np.ndarray, n_items: int) -> np.ndarray:
    """log of each item id's share of the training positives (ids never seen get the share of one
    occurrence, so the correction stays finite)."""
    counts = np.bincount(train_items, minlength=n_items).astype(np.float64)
    return np.log(np.maximum(counts, 1.0) / max(counts.sum(), 1.0)).astype(np.float32)


@torch.no_grad()
def encode_vectors(model: TwoTower, rows, space, vocabs, side: str, batch_size: int = 4096) -> np.ndarray:
    """User (``side="user"``) or item vectors of raw feature rows, in batches -> (n, d) float32."""
    model.eval()
    out = []
    for lo in range(0, rows.num_rows, batch_size):
        batch = encode_rows(rows.slice(lo, batch_size), space, vocabs, where=f"{side} rows")
        vec = model.user_vectors(batch) if side == "user" else model.item_vectors(batch)
        out.append(vec.float().numpy())
    d = model.config.output_dim
    return np.concatenate(out) if out else np.zeros((0, d), np.float32)


def evaluate_two_tower(model: TwoTower, data: RetrievalData, space, vocabs, split: str, ks=(20, 50, 100),
                       exclude: tuple[str, ...] = ("train",), item_vectors: np.ndarray | None = None,
                       with_sequences: bool = False) -> dict:
    """Full-ranking Recall/HitRate/NDCG@K of the model on ``split``'s query users."""
    items = encode_vectors(model, data.items, space, vocabs, "item") if item_vectors is None else item_vectors
    users = encode_vectors(model, data.queries[split], space, vocabs, "user")
    seen = data.histories(data.query_users[split], exclude, with_sequences)
    return full_ranking_metrics(lambda rows: users[rows] @ items.T, seen, data.targets(split), ks).as_dict()


def _positive_split(prepared: PreparedData, split: str) -> SplitArrays:
    """The split's rows with a positive first label, in memory (retrieval trains on positives only)."""
    data = SplitArrays.open(prepared, split)
    labels = np.asarray(data.arrays["labels"])
    rows = np.flatnonzero(labels[:, 0] > 0.5)
    if len(rows) == data.rows:
        return data
    return SplitArrays(arrays={k: np.asarray(v)[rows] for k, v in data.arrays.items()}, rows=len(rows))


def fit_two_tower(model: TwoTower, prepared: PreparedData, data: RetrievalData, vocabs: dict[str, Vocab],
                  cfg: TwoTowerTrainConfig, run_dir: Path, log: Callable[[str], None] = print,
                  exclude: tuple[str, ...] = ("train",), with_sequences: bool = False) -> TwoTowerFit:
    """Train with in-batch sampled softmax; keep the weights of the best valid recall@monitor_k epoch
    in ``run_dir/best.safetensors``."""
    space = prepared.space
    train = _positive_split(prepared, "train")
    loader = BatchLoader(train, space.schema, cfg.batch_size, shuffle=True, seed=cfg.seed, drop_last=True)
    item_col = space.schema.categorical.index(space.schema.feature(data.item_key))
    row_items = np.asarray(train.arrays["categorical"][:, item_col]).astype(np.int64)  # vocabulary ids
    # q over the known items of the positives; OOV rows (rare items under min_count) stay uncorrected
    vocab_log_q = torch.from_numpy(item_log_q(row_items[row_items >= NUM_RESERVED], space.vocab_size(data.item_key)))
    vocab_log_q[:NUM_RESERVED] = 0.0
    extra_batch = encode_rows(data.items, space, vocabs, where="catalogue") if cfg.extra_negatives else None
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    gen = torch.Generator().manual_seed(cfg.seed)
    tau = model.config.temperature
    best, best_epoch, bad, history = -math.inf, 0, 0, []
    seen_rows, train_seconds = 0, 0.0
    for epoch in range(1, cfg.epochs + 1):
        model.train()
        loader.set_epoch(epoch)
        t0, total, steps = time.perf_counter(), 0.0, 0
        for batch in loader:
            loss = _step_loss(model, batch, item_col, vocab_log_q if cfg.log_q else None, tau, extra_batch,
                              cfg.extra_negatives, data.n_items, gen)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.item()
            steps += 1
            seen_rows += len(batch)
            if cfg.max_steps_per_epoch and steps >= cfg.max_steps_per_epoch:
                break
        train_seconds += time.perf_counter() - t0
        valid = evaluate_two_tower(model, data, space, vocabs, "valid", ks=(cfg.monitor_k,), exclude=exclude,
                                   with_sequences=with_sequences)
        score = valid[f"recall@{cfg.monitor_k}"]
        history.append({"epoch": epoch, "loss": total / max(steps, 1), "valid": valid})
        log(f"epoch {epoch}: loss {total / max(steps, 1):.4f}  valid recall@{cfg.monitor_k} {score:.4f}")
        if score > best:
            best, best_epoch, bad = score, epoch, 0
            with atomic_path(run_dir / "best.safetensors") as tmp:
                save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp))
        else:
            bad += 1
            if bad >= cfg.patience:
                break
    return TwoTowerFit(best_epoch=best_epoch, epochs_run=len(history), valid=history[best_epoch - 1]["valid"],
                       train_samples_per_s=seen_rows / max(train_seconds, 1e-9), history=history)


def _step_loss(model: TwoTower, batch: Batch, item_col: int, vocab_log_q: Tensor | None, tau: float,
               extra_batch: Batch | None, n_extra: int, n_items: int, gen: torch.Generator) -> Tensor:
    user, item = model.towers(batch)
    item_ids = batch.categorical[:, item_col]
    lq = vocab_log_q[item_ids] + math.log(len(item_ids)) if vocab_log_q is not None else None
    extra_items = extra_lq = None
    if extra_batch is not None:
        pick = torch.randint(0, n_items, (n_extra,), generator=gen)
        extra_items = model.item_vectors(_take(extra_batch, pick))
        extra_lq = torch.full((n_extra,), math.log(n_extra / n_items)) if vocab_log_q is not None else None
    return sampled_softmax(user, item, log_q=lq, temperature=tau, extra_items=extra_items,
                           extra_log_q=extra_lq, same_item=item_ids)


def _take(batch: Batch, rows: Tensor) -> Batch:
    return batch._map(lambda t: t.index_select(0, rows))
