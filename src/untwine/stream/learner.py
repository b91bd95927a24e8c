"""Online learning from an event stream: join labels, score each sample before training on it
(progressive validation), update the model incrementally, checkpoint atomically with the stream position.

    learner = StreamLearner(run_dir, out_dir, StreamConfig(...))
    learner.consume(source, drain=True)

``out_dir`` holds ``ckpt-<n>/`` (the last ``keep_checkpoints``) (``model.safetensors``, ``optimizers.pt`` of tensors only,
``state.json``: source position, joiner state, counters), ``LATEST`` naming the newest complete
checkpoint, and ``progressive.jsonl`` (one record per ``eval_every`` samples: per-task AUC, log loss,
calibration of predictions made before the update) and, with ``log_predictions``, ``predictions.csv``
(every primary sample's id, task, impression time, prediction before the update and joined label:
to measure the stream against true labels later). A checkpoint is taken after every
``checkpoint_every`` events, once the samples emitted so far are trained on, so its weights, joiner
state and position agree: after a crash the learner restarts from ``LATEST`` and re-reads the events
after its position, neither losing nor double-counting any.
"""
from __future__ import annotations

import json
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from untwine.core.io import atomic_write_text
from untwine.data.encode import encode_features, load_vocabs, table_from_records
from untwine.data.loader import SplitArrays, column_index, make_batch
from untwine.metrics import binary_report
from untwine.stream.joiner import Joiner, JoinerConfig, Sample
from untwine.train.losses import multitask_bce
from untwine.train.run import load_run
from untwine.train.trainer import build_optimizers

STATE_VERSION = 1


@dataclass
class StreamConfig:
    joiner: JoinerConfig
    batch_size: int = 512
    lr: float | None = None  # default: the run's train.lr
    checkpoint_every: int = 50_000  # events
    eval_every: int = 10_000  # primary samples per progressive-validation record
    keep_checkpoints: int = 2
    log_predictions: bool = False  # also append (id, task, ts, prediction, joined label) per sample to predictions.csv


@dataclass
class _Window:
    probs: dict[str, list] = field(default_factory=dict)
    labels: dict[str, list] = field(default_factory=dict)
    n: int = 0


class StreamLearner:
    def __init__(self, run_dir: str | Path, out_dir: str | Path, cfg: StreamConfig,
                 log: Callable[[str], None] = print) -> None:
        self.run_dir, self.out, self.cfg, self.log = Path(run_dir), Path(out_dir), cfg, log
        run_cfg, self.space, self.model = load_run(self.run_dir)
        self.tasks = self.space.schema.task_names
        unknown = sorted(set(cfg.joiner.tasks) - set(self.tasks))
        if unknown:
            raise ValueError(f"stream tasks {unknown} are not tasks of the run {self.run_dir} ({self.tasks})")
        self.vocabs = load_vocabs(self.space, self.run_dir / "vocab")
        self.columns = column_index(self.space.schema)
        train_cfg = run_cfg.train.model_copy(update={"lr": cfg.lr or run_cfg.train.lr})
        self.optimizers = build_optimizers(self.model, train_cfg)
        self.task_weights = [1.0] * len(self.tasks)
        self.joiner = Joiner(cfg.joiner)
        self.position: int | str | None = None
        self.events = 0
        self.trained = {"samples": 0, "corrections": 0, "steps": 0}
        self.log_sizes = {"progressive.jsonl": 0, "predictions.csv": 0}  # bytes the last checkpoint accounts for
        self.checkpoints = 0
        self.window = _Window()
        self.buffer: list[Sample] = []
        self.out.mkdir(parents=True, exist_ok=True)
        self._restore()

    # ---- the loop
    def consume(self, source, drain: bool = False, max_events: int | None = None) -> dict:
        """Read events after the saved position; returns the counters. ``max_events`` stops early (tests,
        bounded runs); ``drain`` closes every open window at the end of the source."""
        if self.position is not None and not getattr(source, "resumable", True):
            raise ValueError(f"{self.out} holds a checkpoint at position {self.position}, but the source cannot "
                             "seek: stream from a file or Redis, or use a fresh --out")
        t0, n0 = time.perf_counter(), self.events
        for position, event in source.read(self.position):
            self.buffer += self.joiner.push(event)
            self.position = position
            self.events += 1
            while len(self.buffer) >= self.cfg.batch_size:
                self._train(self.buffer[: self.cfg.batch_size])
                del self.buffer[: self.cfg.batch_size]
            if self.events % self.cfg.checkpoint_every == 0:
                self.checkpoint()
            if max_events is not None and self.events - n0 >= max_events:
                break
        else:
            if drain:
                self.buffer += self.joiner.drain()
        self.checkpoint()
        rate = (self.events - n0) / max(time.perf_counter() - t0, 1e-9)
        self.log(f"{self.events - n0} events ({rate:,.0f}/s), trained on {self.trained['samples']} samples; "
                 f"joiner {self.joiner.counts}")
        return self.summary()

    def summary(self) -> dict:
        return {"events": self.events, "position": self.position, "trained": dict(self.trained),
                "joiner": dict(self.joiner.counts), "windows": dict(self.joiner.window),
                "pending": len(self.joiner.pending)}

    # ---- training
    def _batch(self, samples: list[Sample]):
        table = table_from_records([s.features for s in samples], self.space.schema, where="stream samples")
        arrays = encode_features(table, self.space, self.vocabs, where="stream samples")
        n, t_idx = len(samples), np.array([self.tasks.index(s.task) for s in samples])
        labels = np.zeros((n, len(self.tasks)), np.float32)
        labels[np.arange(n), t_idx] = [s.label for s in samples]
        mask = np.zeros_like(labels)
        mask[np.arange(n), t_idx] = 1.0
        arrays.update(labels=labels, label_mask=mask)
        return make_batch(SplitArrays(arrays=arrays, rows=n), slice(None), self.columns), t_idx

    def _train(self, samples: list[Sample]) -> None:
        if not samples:
            return
        batch, t_idx = self._batch(samples)
        rows = np.arange(len(samples))
        # progressive validation: the model's prediction before it learns from the sample
        self.model.eval()
        with torch.no_grad():
            out = self.model(batch)
            probs = torch.sigmoid(torch.stack(list(out.values()), dim=1)).numpy()[rows, t_idx]
        self.model.train()
        if self.cfg.log_predictions:
            path = self.out / "predictions.csv"
            new = not path.exists() or path.stat().st_size == 0
            with open(path, "a") as fh:
                if new:
                    fh.write("id,task,ts,prediction,label\n")
                fh.writelines(f"{s.id},{s.task},{s.ts:.0f},{p:.6g},{s.label:.0f}\n"
                              for s, p in zip(samples, probs) if not s.correction)
        for s, p in zip(samples, probs):
            if not s.correction:
                self.window.probs.setdefault(s.task, []).append(float(p))
                self.window.labels.setdefault(s.task, []).append(s.label)
                self.window.n += 1
                if self.window.n >= self.cfg.eval_every:
                    self._log_window()
        if self.cfg.joiner.late == "fake_negative":
            # FNW: p(y=1) under fake negatives is f/(1+f); weights (1+f) on positives, (1-f)(1+f) on negatives
            f = torch.from_numpy(probs.astype(np.float32))
            y = torch.tensor([s.label for s in samples])
            batch.weights = torch.where(y > 0.5, 1 + f, (1 - f) * (1 + f))
        out = self.model(batch)
        loss, _ = multitask_bce(out, batch, self.task_weights, per_row=True)
        for o in self.optimizers:
            o.zero_grad(set_to_none=True)
        loss.backward()
        for o in self.optimizers:
            o.step()
        self.trained["samples"] += len(samples)
        self.trained["corrections"] += sum(s.correction for s in samples)
        self.trained["steps"] += 1

    def _log_window(self) -> None:
        rec = {"samples": self.trained["samples"], "events": self.events,
               "clock": self.joiner.clock if np.isfinite(self.joiner.clock) else None, "tasks": {}}
        for t, ps in self.window.probs.items():
            ys = np.asarray(self.window.labels[t])
            rec["tasks"][t] = {"rows": len(ps), "positives": int(ys.sum()), "mean_prediction": float(np.mean(ps)),
                               **(binary_report(np.asarray(ps), ys) if 0 < ys.sum() < len(ys) else {})}
        with open(self.out / "progressive.jsonl", "a") as fh:
            fh.write(json.dumps(rec) + "\n")
        self.window = _Window()

    # ---- checkpoints
    def checkpoint(self) -> Path:
        """Train on what is buffered, then write ckpt-<events>/ and point LATEST at it (atomically)."""
        self._train(self.buffer)
        self.buffer = []
        self.checkpoints += 1
        name = f"ckpt-{self.checkpoints:08d}"
        self.log_sizes = {k: (self.out / k).stat().st_size if (self.out / k).exists() else 0 for k in self.log_sizes}
        final = self.out / name
        tmp = self.out / f".{name}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        save_file({k: v.detach().contiguous() for k, v in self.model.state_dict().items()}, str(tmp / "model.safetensors"))
        torch.save([o.state_dict() for o in self.optimizers], tmp / "optimizers.pt")
        state = {"version": STATE_VERSION, "run_dir": str(self.run_dir), "position": self.position,
                 "events": self.events, "checkpoints": self.checkpoints, "trained": self.trained, "log_sizes": self.log_sizes,
                 "window": asdict(self.window), "joiner_config": asdict(self.cfg.joiner),
                 "joiner": self.joiner.state()}
        # compact JSON: the C encoder (an indented dump falls back to the pure-Python one, ~20x slower)
        atomic_write_text(tmp / "state.json", json.dumps(state, separators=(",", ":")))
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
        atomic_write_text(self.out / "LATEST", name + "\n")
        for old in sorted(self.out.glob("ckpt-*"))[: -self.cfg.keep_checkpoints]:
            shutil.rmtree(old, ignore_errors=True)
        return final

    def _restore(self) -> None:
        latest = self.out / "LATEST"
        if not latest.exists():
            for k in self.log_sizes:
                (self.out / k).unlink(missing_ok=True)
            return
        ckpt = self.out / latest.read_text().strip()
        state = json.loads((ckpt / "state.json").read_text())
        if state.get("version") != STATE_VERSION:
            raise ValueError(f"{ckpt}: stream state version {state.get('version')}, this untwine reads {STATE_VERSION}")
        saved = JoinerConfig(**state["joiner_config"])
        if saved.tasks != self.cfg.joiner.tasks:
            raise ValueError(f"{ckpt} was written for tasks {saved.tasks}, not {self.cfg.joiner.tasks}")
        self.model.load_state_dict(load_file(str(ckpt / "model.safetensors")))
        for o, s in zip(self.optimizers, torch.load(ckpt / "optimizers.pt", weights_only=True)):
            o.load_state_dict(s)
        self.joiner = Joiner.from_state(self.cfg.joiner, state["joiner"])
        self.position, self.events = state["position"], int(state["events"])
        self.checkpoints = int(state["checkpoints"])
        self.trained = state["trained"]
        self.window = _Window(**state["window"])
        # log lines written after this checkpoint belong to events that will be replayed: cut them
        self.log_sizes = {k: int(v) for k, v in state["log_sizes"].items()}
        for k, size in self.log_sizes.items():
            path = self.out / k
            if path.exists() and path.stat().st_size > size:
                with open(path, "r+b") as fh:
                    fh.truncate(size)
        self.log(f"resumed {self.out} from {ckpt.name}: {self.events} events, position {self.position}")

    def model_weights(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().clone() for k, v in self.model.state_dict().items()}
