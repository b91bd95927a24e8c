"""The training loop: optimizers, early stopping, atomic checkpoints, resume, metrics, data parallelism.

The model is any RankingModel; the trainer only knows its contract (Batch -> {task: logits}).
"""
from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.distributed as dist
from safetensors.torch import load_file, save_file
from torch import nn

from untwine.core.io import atomic_path
from untwine.data.loader import BatchLoader
from untwine.metrics import binary_report
from untwine.metrics.calibrators import downsampling_correction
from untwine.nn.embedding import FieldEmbedding
from untwine.train.config import TrainConfig
from untwine.train.losses import RankingLoss, RepeatExposureWeight, multitask_bce
from untwine.train.precision import resolve_precision

CHECKPOINT_VERSION = 1


# ------------------------------------------------------------------ distributed helpers
@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    device: str = "cpu"  # cuda:<local rank> when CUDA is available

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_env(cls) -> "DistInfo":
        """Join the process group torchrun describes in the environment (gloo on CPU, nccl on GPU)."""
        world = int(os.environ.get("WORLD_SIZE", "1"))
        cuda = torch.cuda.is_available()
        device = f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}" if cuda else "cpu"
        if world <= 1:
            return cls(device=device)
        if not dist.is_initialized():
            if cuda:
                torch.cuda.set_device(device)
            dist.init_process_group(backend="nccl" if cuda else "gloo")
        return cls(rank=dist.get_rank(), world_size=dist.get_world_size(), device=device)


def gather_arrays(arrays: dict[str, np.ndarray], info: DistInfo) -> dict[str, np.ndarray]:
    """Concatenate each rank's arrays (in rank order) on every rank."""
    if info.world_size == 1:
        return arrays
    parts: list[dict[str, np.ndarray]] = [None] * info.world_size  # type: ignore[list-item]
    dist.all_gather_object(parts, arrays)
    return {k: np.concatenate([p[k] for p in parts if k in p and len(p[k])]) for k in arrays}


# ------------------------------------------------------------------ optimizers
def embedding_modules(model: nn.Module) -> list[FieldEmbedding]:
    return [m for m in model.modules() if isinstance(m, FieldEmbedding)]


def build_optimizers(model: nn.Module, cfg: TrainConfig) -> list[torch.optim.Optimizer]:
    """Adam for dense parameters; the configured optimizer for embedding tables (own parameter group)."""
    tables = [p for m in embedding_modules(model) for p in m.embedding_parameters()]
    table_ids = {id(p) for p in tables}
    dense = [p for p in model.parameters() if id(p) not in table_ids and p.requires_grad]
    emb_lr = cfg.embedding_lr or cfg.lr
    sparse = cfg.embedding_optimizer in ("sparse_adam", "adagrad")
    for m in embedding_modules(model):
        m.table.sparse = sparse
    opts: list[torch.optim.Optimizer] = []
    # the fused kernel reads and writes each parameter, gradient and moment once per step; the default
    # (foreach) kernel makes several passes: on T1's 1M x 10 table 4.4 ms against 23.7 ms a step
    fused = {"fused": True} if cfg.fused_optimizer else {}
    if cfg.embedding_optimizer == "adam":
        opts.append(torch.optim.Adam([{"params": dense, "weight_decay": cfg.weight_decay},
                                      {"params": tables, "lr": emb_lr, "weight_decay": 0.0}], lr=cfg.lr, **fused))
        return opts
    if dense:
        opts.append(torch.optim.Adam(dense, lr=cfg.lr, weight_decay=cfg.weight_decay, **fused))
    if cfg.embedding_optimizer == "sparse_adam":
        opts.append(torch.optim.SparseAdam(tables, lr=emb_lr))
    else:
        opts.append(torch.optim.Adagrad(tables, lr=emb_lr))
    return opts


# ------------------------------------------------------------------ evaluation
@torch.inference_mode()
def predict(model: nn.Module, loader: BatchLoader, device: str = "cpu", precision: str = "fp32") -> dict[str, np.ndarray]:
    """Probabilities, labels, masks and groups of every row the loader yields (this rank's share).
    ``precision="bf16"`` scores under bf16 autocast, as a bf16-trained run was trained."""
    precision = resolve_precision(precision, device).precision
    was_training = model.training
    model.eval()
    probs, labels, masks, groups = [], [], [], []
    for batch in loader:
        with torch.autocast(device.split(":")[0], dtype=torch.bfloat16, enabled=precision == "bf16"):
            out = model(batch.to(device, non_blocking=True) if device != "cpu" else batch)
        probs.append(torch.sigmoid(torch.stack([v.float() for v in out.values()], dim=1)).cpu().numpy())
        labels.append(batch.labels.numpy())
        if batch.label_mask is not None:
            masks.append(batch.label_mask.numpy())
        if batch.groups is not None:
            groups.append(batch.groups.numpy())
    model.train(was_training)
    res = {"probs": np.concatenate(probs) if probs else np.zeros((0, 0), np.float32),
           "labels": np.concatenate(labels) if labels else np.zeros((0, 0), np.float32)}
    if masks:
        res["masks"] = np.concatenate(masks)
    if groups:
        res["groups"] = np.concatenate(groups)
    return res


def to_true_rate(pred: dict[str, np.ndarray], negative_keep_rate: float) -> dict[str, np.ndarray]:
    """Predictions of a model trained with negatives kept at ``negative_keep_rate``, on the true rate."""
    if negative_keep_rate >= 1:
        return pred
    return {**pred, "probs": downsampling_correction(pred["probs"], negative_keep_rate).astype(np.float32)}


def task_metrics(pred: dict[str, np.ndarray], tasks: list[str]) -> dict[str, dict[str, float]]:
    """binary_report per task (on the rows its mask counts), plus the mean over tasks."""
    out: dict[str, dict[str, float]] = {}
    for t, name in enumerate(tasks):
        keep = pred["masks"][:, t] > 0 if "masks" in pred else slice(None)
        groups = pred["groups"][keep] if "groups" in pred else None
        rows = int(pred["labels"][keep, t].shape[0])
        # a masked task can have no rows in a split (e.g. no click, so no conversion to score): say so
        out[name] = {**binary_report(pred["probs"][keep, t], pred["labels"][keep, t], groups), "rows": rows} \
            if rows else {"rows": 0}
    scored = [t for t in tasks if out[t]["rows"]]
    if len(tasks) > 1 and scored:
        keys = set.intersection(*(set(out[t]) for t in scored))
        out["mean"] = {k: float(np.mean([out[t][k] for t in scored])) for k in sorted(keys)}
    return out


# ------------------------------------------------------------------ trainer
@dataclass
class FitResult:
    best_epoch: int
    best_score: float
    epochs_run: int
    history: list[dict] = field(default_factory=list)
    train_samples_per_s: float = float("nan")
    stopped_early: bool = False


class Trainer:
    """Fits a model with early stopping; writes ``best.safetensors``, ``last.pt`` and ``metrics.jsonl``."""

    def __init__(self, model: nn.Module, tasks: list[str], task_weights: list[float], cfg: TrainConfig,
                 run_dir: Path, info: DistInfo = DistInfo(), log: Callable[[str], None] = print) -> None:
        self.raw_model = model
        self.tasks, self.task_weights, self.cfg = tasks, task_weights, cfg
        self.run_dir, self.info, self.log = Path(run_dir), info, log
        model.to(info.device)
        self.optimizers = build_optimizers(model, cfg)  # before DDP: decides sparse gradients
        self.model = model
        if info.world_size > 1:
            # buffers here are constants (field offsets): no need to broadcast them every step
            self.model = nn.parallel.DistributedDataParallel(
                model, device_ids=[info.device] if info.device != "cpu" else None, forward_sync_buffers=False)
        self._tb = None
        self.ranking = RankingLoss(cfg.ranking_weight, cfg.ranking_pairs, cfg.ranking_scope) \
            if cfg.ranking_weight > 0 else None
        self.rew = None
        if cfg.repeat_exposure is not None:
            names = cfg.repeat_exposure.tasks or tasks[:1]
            unknown = sorted(set(names) - set(tasks))
            if unknown:
                raise ValueError(f"train.repeat_exposure.tasks names {unknown}, which are not tasks {tasks}")
            r = cfg.repeat_exposure
            self.rew = RepeatExposureWeight(tuple(tasks.index(t) for t in names), r.alpha, r.form, r.cap)
        self._pairs_rng = torch.Generator(device=info.device).manual_seed(cfg.seed + 7919 * info.rank)
        # bf16 autocast of the training forward: matmuls in bf16, weights / optimizer / loss in fp32;
        # "auto" measures whether it pays on this machine (train/precision.py). Evaluation scores the same way.
        self.precision = resolve_precision(cfg.precision, info.device, cfg.deterministic)
        self.bf16 = self.precision.precision == "bf16"

    # ---- monitoring
    def score(self, metrics: dict[str, dict[str, float]]) -> float:
        key = self.cfg.monitor_task if self.cfg.monitor_task in metrics else (
            "mean" if "mean" in metrics else self.tasks[0])
        value = metrics[key][self.cfg.monitor]
        return -value if self.cfg.monitor == "logloss" else value

    def predict(self, loader: BatchLoader) -> dict[str, np.ndarray]:
        """Every rank's predictions, back on the true rate when training down-sampled negatives."""
        # the unwrapped model: ranks may score different numbers of batches, so no collective per forward
        pred = gather_arrays(predict(self.raw_model, loader, self.info.device, self.precision.precision), self.info)
        return to_true_rate(pred, self.cfg.negative_keep_rate)

    def evaluate(self, loader: BatchLoader) -> dict[str, dict[str, float]]:
        return task_metrics(self.predict(loader), self.tasks)

    # ---- logging
    def _log_jsonl(self, record: dict) -> None:
        if not self.info.is_main:
            return
        with open(self.run_dir / "metrics.jsonl", "a") as fh:
            fh.write(json.dumps(record) + "\n")
        if self.cfg.tensorboard:
            if self._tb is None:
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(str(self.run_dir / "tensorboard"))
            for task, ms in record.get("metrics", {}).items():
                for k, v in ms.items():
                    if isinstance(v, (int, float)) and math.isfinite(v):
                        self._tb.add_scalar(f"{record['split']}/{task}/{k}", v, record.get("epoch", 0))

    # ---- checkpoints
    def save_weights(self, path: Path) -> None:
        state = {k: v.detach().contiguous() for k, v in self.raw_model.state_dict().items()}
        with atomic_path(path) as tmp:
            save_file(state, str(tmp))

    def load_weights(self, path: Path) -> None:
        self.raw_model.load_state_dict(load_file(str(path)))

    def _save_last(self, epoch: int, state: dict) -> None:
        payload = {"version": CHECKPOINT_VERSION, "epoch": epoch, "model": self.raw_model.state_dict(),
                   "optimizers": [o.state_dict() for o in self.optimizers], "torch_rng": torch.get_rng_state(),
                   "trainer": json.dumps(state)}
        with atomic_path(self.run_dir / "last.pt") as tmp:
            torch.save(payload, tmp)

    def _load_last(self) -> tuple[int, dict] | None:
        path = self.run_dir / "last.pt"
        if not path.exists():
            return None
        payload = torch.load(path, weights_only=True)  # never unpickle arbitrary objects
        self.raw_model.load_state_dict(payload["model"])
        for o, s in zip(self.optimizers, payload["optimizers"]):
            o.load_state_dict(s)
        torch.set_rng_state(payload["torch_rng"])
        return int(payload["epoch"]), json.loads(payload["trainer"])

    # ---- the loop
    def fit(self, train: BatchLoader, valid: BatchLoader | None, resume: bool = True) -> FitResult:
        cfg = self.cfg
        self.run_dir.mkdir(parents=True, exist_ok=True)
        state = {"best_score": -math.inf, "best_epoch": -1, "bad_epochs": 0, "history": [], "train_seconds": 0.0,
                 "train_samples": 0}
        start = 0
        if not (resume and (self.run_dir / "last.pt").exists()) and self.info.is_main:
            (self.run_dir / "metrics.jsonl").unlink(missing_ok=True)  # a fresh run starts a fresh log
        if resume and (loaded := self._load_last()) is not None:
            last_epoch, state = loaded
            start = last_epoch + 1
            self.log(f"resumed from {self.run_dir / 'last.pt'} after epoch {last_epoch}")
        if state["bad_epochs"] >= cfg.patience:
            start = cfg.epochs  # an earlier run already stopped early
        epoch = start - 1
        for epoch in range(start, cfg.epochs):
            train.set_epoch(epoch)
            loss_sum, seen, seconds = self._train_epoch(train, epoch)
            if self.info.world_size > 1:  # ranks may see slightly different row counts (last batch)
                total = torch.tensor([seen], dtype=torch.long, device=self.info.device)
                dist.all_reduce(total)
                seen_all = int(total.item())
            else:
                seen_all = seen
            state["train_seconds"] += seconds
            state["train_samples"] += seen_all
            record = {"epoch": epoch, "split": "train", "loss": loss_sum, "samples": seen_all,
                      "seconds": seconds, "samples_per_s": seen_all / max(seconds, 1e-9)}
            self._log_jsonl(record)
            if valid is not None:
                t0 = time.perf_counter()
                pred = self.predict(valid)
                metrics = task_metrics(pred, self.tasks)
                score = self.score(metrics)
                self._log_jsonl({"epoch": epoch, "split": "valid", "metrics": metrics,
                                 "seconds": time.perf_counter() - t0, "rows": len(pred["labels"])})
                improved = score > state["best_score"] or state["best_epoch"] < 0  # NaN never blocks a first save
                if improved:
                    state.update(best_score=score, best_epoch=epoch, bad_epochs=0)
                    if self.info.is_main:
                        self.save_weights(self.run_dir / "best.safetensors")
                else:
                    state["bad_epochs"] += 1
                    if cfg.lr_decay_on_plateau < 1:
                        for o in self.optimizers:
                            for group in o.param_groups:
                                group["lr"] *= cfg.lr_decay_on_plateau
                summary = " ".join(f"{k}={v:.4f}" for k, v in metrics[self.tasks[0]].items()
                                   if k in ("auc", "gauc", "logloss"))
                self.log(f"epoch {epoch}: train loss {loss_sum:.4f} ({record['samples_per_s']:.0f} samples/s), "
                         f"valid {summary}{' *' if improved else ''}")
            else:
                state.update(best_epoch=epoch)
                if self.info.is_main:
                    self.save_weights(self.run_dir / "best.safetensors")
            state["history"].append({"epoch": epoch, "loss": loss_sum})
            if self.info.is_main:
                self._save_last(epoch, state)
            if state["bad_epochs"] >= cfg.patience:
                self.log(f"early stop: no improvement of valid {cfg.monitor} for {cfg.patience} epochs")
                break
        if self.info.world_size > 1:
            dist.barrier()
        best = self.run_dir / "best.safetensors"
        if best.exists():
            self.load_weights(best)
        return FitResult(best_epoch=state["best_epoch"], best_score=state["best_score"], epochs_run=epoch + 1,
                         history=state["history"],
                         train_samples_per_s=state["train_samples"] / max(state["train_seconds"], 1e-9),
                         stopped_early=state["bad_epochs"] >= cfg.patience)

    def _train_epoch(self, loader: BatchLoader, epoch: int) -> tuple[float, int, float]:
        self.model.train()
        bar = None
        if self.cfg.progress and self.info.is_main:
            from tqdm import tqdm

            bar = tqdm(total=len(loader), desc=f"epoch {epoch}", leave=False, unit="batch", disable=None)
        loss_total, seen, steps = 0.0, 0, 0
        t0 = time.perf_counter()
        for batch in loader:
            if self.info.device != "cpu":
                batch = batch.to(self.info.device, non_blocking=True)
            with torch.autocast(self.info.device.split(":")[0], dtype=torch.bfloat16, enabled=self.bf16):
                out = self.model(batch)
            if self.bf16:  # the loss, its gradient's scale and the optimizer stay in fp32
                out = {k: v.float() for k, v in out.items()}
            loss, _ = multitask_bce(out, batch, self.task_weights, self.ranking, self.rew, self._pairs_rng)
            for o in self.optimizers:
                o.zero_grad(set_to_none=True)
            loss.backward()
            for o in self.optimizers:
                o.step()
            n = len(batch)
            steps += 1
            seen += n
            loss_total += loss.item() * n
            if bar is not None:
                bar.update(1)
                if steps % 20 == 0:
                    bar.set_postfix(loss=f"{loss_total / seen:.4f}")
            if self.cfg.max_steps_per_epoch and steps >= self.cfg.max_steps_per_epoch:
                break
        seconds = time.perf_counter() - t0
        if bar is not None:
            bar.close()
        if not math.isfinite(loss_total):
            raise FloatingPointError(f"epoch {epoch}: training loss is {loss_total}; lower train.lr")
        return loss_total / max(seen, 1), seen, seconds
