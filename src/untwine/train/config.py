"""Experiment configuration: dataset, model and training options, strict and typed.

YAML layout::

    dataset: p1                      # a recipe name, or a path to a dataset.yaml (relative to this file)
    tasks: [income]                  # optional: a subset of the dataset's labels
    model: {name: dcnv2, embedding_dim: 10, cross_layers: 3}
    train: {batch_size: 1024, lr: 1.0e-3, patience: 2, seed: 2024}
    run_dir: runs/p1-dcnv2

Command-line overrides use dotted keys: ``train.lr=0.01 model.hidden=[256,128]``; values are
parsed as YAML and unknown keys are errors.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field


class RepeatExposureConfig(BaseModel):
    """Repeated-exposure weighting: negatives of the n-th earlier exposure of a (user, item) inside the
    window weigh w(n) = min(cap, 1 + alpha * f(n)), f = ln(1 + n) (log) or n (linear)."""

    model_config = ConfigDict(extra="forbid")
    item: str  # the categorical feature naming the ad / item
    user: str | None = None  # default: the schema's group_key
    window_seconds: int | None = Field(86400, ge=0)  # None: the whole log
    alpha: float = Field(0.5, ge=0)
    form: Literal["log", "linear"] = "log"
    cap: float = Field(4.0, ge=1)
    tasks: list[str] | None = None  # the tasks whose negatives are weighted (default: the first task)


class TrainConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    batch_size: int = Field(1024, ge=1)
    eval_batch_size: int = Field(4096, ge=1)  # larger batches score slower on CPU (cache): eval_speed.md
    epochs: int = Field(30, ge=1)
    patience: int = Field(2, ge=1)
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    embedding_optimizer: Literal["adam", "sparse_adam", "adagrad"] = "adam"
    embedding_lr: float | None = Field(None, gt=0)  # defaults to lr
    fused_optimizer: bool = True  # Adam's fused kernel: one pass over parameter, gradient and moments
    # bf16: autocast training and scoring forwards (fp32 weights, optimizer, loss); auto: bf16 where this
    # machine measures it faster (train/precision.py), recorded as fp32 or bf16 in the run's config
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    lr_decay_on_plateau: float = Field(1.0, gt=0, le=1)  # multiply every lr by this after an epoch without improvement
    monitor: Literal["auc", "gauc", "logloss"] = "auc"
    monitor_task: str = "mean"  # a task name, or the mean over tasks
    task_weights: dict[str, float] = Field(default_factory=dict)  # loss weight per task (else the label's weight)
    seed: int = 2024
    deterministic: bool = False
    threads: int | None = Field(None, ge=1)
    # retain: glibc keeps freed blocks for the next step instead of unmapping them (core/allocator.py);
    # system: malloc as the process started
    allocator: Literal["retain", "system"] = "retain"
    on_bad_rows: Literal["error", "skip"] = "error"
    progress: bool = True
    tensorboard: bool = False
    max_steps_per_epoch: int | None = Field(None, ge=1)  # for smoke runs and throughput probes
    # losses (SPEC 5): BCE + ranking_weight * pairwise logistic loss, pairs in the batch or in a group key
    ranking_weight: float = Field(0.0, ge=0)
    ranking_pairs: int | None = Field(16, ge=1)  # negatives drawn per positive; None: every pair
    ranking_scope: Literal["batch", "group"] = "batch"
    repeat_exposure: RepeatExposureConfig | None = None
    # keep this fraction of the training rows with no positive label (resampled every epoch); predictions
    # are corrected back to the true rate, q = p / (p + (1 - p) / rate)
    negative_keep_rate: float = Field(1.0, gt=0, le=1)
    # fitted per task on the validation predictions after training; test metrics reported both ways
    calibration: Literal["none", "mean", "platt", "isotonic"] = "none"


class ModelSection(BaseModel):
    model_config = ConfigDict(extra="allow")  # model-specific keys are validated by the model's own config
    name: str

    def options(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class ExperimentConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    dataset: str
    model: ModelSection
    train: TrainConfig = Field(default_factory=TrainConfig)
    tasks: list[str] | None = None  # train on these labels of the dataset only (default: every label)
    run_dir: str | None = None
    base_dir: str | None = None  # folder of the config file; relative dataset paths resolve against it

    @classmethod
    def load(cls, path: str | Path, overrides: list[str] | None = None) -> "ExperimentConfig":
        path = Path(path)
        raw = yaml.safe_load(path.read_text()) or {}
        raw.setdefault("base_dir", str(path.parent.resolve()))
        return cls.from_dict(raw, overrides)

    @classmethod
    def from_dict(cls, raw: dict, overrides: list[str] | None = None) -> "ExperimentConfig":
        raw = apply_overrides(raw, overrides or [])
        cfg = cls.model_validate(raw)
        from untwine.models.base import MODELS

        MODELS.get(cfg.model.name).config.model_validate(cfg.model.options())  # fail early on a bad key
        return cfg

    def to_dict(self) -> dict:
        d = self.model_dump(mode="json", exclude={"base_dir"})
        if self.base_dir and (Path(self.base_dir) / self.dataset).exists():  # a saved config must not depend on cwd
            d["dataset"] = str((Path(self.base_dir) / self.dataset).resolve())
        d["model"] = {"name": self.model.name, **self.resolved_model_options()}
        return d

    def resolved_model_options(self) -> dict[str, Any]:
        """The model's options with every default filled in, so a saved run rebuilds the same model
        after a library default changes."""
        from untwine.models.base import MODELS

        return MODELS.get(self.model.name).config.model_validate(self.model.options()).model_dump(mode="json")


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    raw = yaml.safe_load(yaml.safe_dump(raw))  # deep copy
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"override {item!r} is not of the form key.path=value")
        key, value = item.split("=", 1)
        node = raw
        parts = key.split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ValueError(f"override {item!r}: {p!r} is not a section")
        node[parts[-1]] = yaml.safe_load(value)
    return raw
