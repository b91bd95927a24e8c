"""One experiment end to end: resolve the dataset, encode it, build the model, fit, test, write the run dir.

Run directory::

    config.yaml           the resolved experiment config
    feature_space.json    schema + vocabulary sizes + numeric stats (what serving needs to size the model)
    vocab/                the vocabularies used to encode the data
    best.safetensors      weights of the best validation epoch
    last.pt               resumable state (weights, optimizers, epoch, early-stopping state)
    metrics.jsonl         one record per epoch and split
    calibration.json      per-task calibrators fitted on validation (train.calibration), plain JSON
    result.json           final valid and test metrics (and test_calibrated), throughput, timings
"""
from __future__ import annotations

import json
import random
import shutil
import time
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import yaml

from untwine.core.dataset_spec import DatasetSpec
from untwine.core.features import FeatureSpace
from untwine.core.allocator import retain_freed_memory
from untwine.core.io import atomic_write_json, atomic_write_text
from untwine.core.paths import cache_root
from untwine.data.encode import PreparedData, prepare
from untwine.data.exposure import split_exposure_counts
from untwine.data.loader import BatchLoader, SplitArrays
from untwine.metrics.calibrators import calibrator_from_dict, fit_calibrator
from untwine.models.base import build_model
from untwine.nn.embedding import SequenceField
from untwine.train.config import ExperimentConfig, TrainConfig
from untwine.train.precision import PrecisionChoice, resolve_precision
from untwine.train.trainer import DistInfo, Trainer, predict, task_metrics, to_true_rate


def seed_everything(seed: int, deterministic: bool = False) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True)


def resolve_dataset(name_or_path: str, base_dir: str | Path | None = None) -> DatasetSpec:
    """A recipe name (prepared into the cache on first use) or a path to a dataset.yaml."""
    path = Path(name_or_path)
    if not path.is_absolute() and base_dir is not None and (Path(base_dir) / path).exists():
        path = Path(base_dir) / path
    if path.is_dir():
        path = path / "dataset.yaml"
    if path.exists():
        return DatasetSpec.from_yaml(path)
    from untwine.data.recipes import RECIPES
    from untwine.data.recipes import prepare as prepare_recipe

    if name_or_path in RECIPES:
        return DatasetSpec.from_yaml(prepare_recipe(name_or_path, cache_root() / "datasets" / name_or_path))
    raise FileNotFoundError(f"dataset {name_or_path!r} is neither a dataset.yaml path nor a recipe "
                            f"({sorted(RECIPES)})")


def select_tasks(spec: DatasetSpec, tasks: list[str] | None) -> DatasetSpec:
    """The dataset with only the labels named in ``tasks`` (in the dataset's order)."""
    if not tasks:
        return spec
    have = spec.schema.task_names
    unknown = [t for t in tasks if t not in have]
    if unknown:
        raise ValueError(f"tasks {unknown} are not labels of dataset {spec.name!r}; its labels: {have}")
    schema = spec.schema.model_copy(update={"labels": [lab for lab in spec.schema.labels if lab.name in tasks]})
    return spec.model_copy(update={"schema_": schema})


def check_monitor(tc: TrainConfig, spec: DatasetSpec) -> None:
    """Fail before any work when early stopping watches something the dataset cannot give."""
    tasks = spec.schema.task_names
    if tc.monitor_task != "mean" and tc.monitor_task not in tasks:
        raise ValueError(f"train.monitor_task={tc.monitor_task!r} is not a task of {spec.name!r}; tasks: {tasks}")
    if tc.monitor == "gauc" and not spec.schema.group_key:
        raise ValueError(f"train.monitor=gauc needs a group_key in the schema of {spec.name!r}")


def attach_exposures(splits: dict[str, SplitArrays], spec: DatasetSpec, cfg: TrainConfig) -> None:
    """Put each row's earlier-exposure count of its (user, item) into the split arrays (for REW)."""
    r = cfg.repeat_exposure
    schema = spec.schema
    user = r.user or schema.group_key
    if user is None:
        raise ValueError(f"train.repeat_exposure needs a user feature: set repeat_exposure.user, or a group_key "
                         f"in the schema of {spec.name!r}")
    cats = [f.name for f in schema.categorical]
    for name in (user, r.item):
        if name not in cats:
            raise ValueError(f"train.repeat_exposure: {name!r} is not a categorical feature of {spec.name!r} "
                             f"(categorical features: {cats})")
    if not schema.timestamp:
        raise ValueError(f"train.repeat_exposure counts exposures in time: the schema of {spec.name!r} "
                         f"needs a timestamp column")
    ju, ji = cats.index(user), cats.index(r.item)
    counts = split_exposure_counts({s: (d.arrays["categorical"][:, ju], d.arrays["categorical"][:, ji],
                                        d.arrays["timestamp"]) for s, d in splits.items()}, r.window_seconds)
    for s, d in splits.items():
        d.arrays["exposures"] = counts[s]


def make_loaders(prepared: PreparedData, spec: DatasetSpec, cfg: TrainConfig, info: DistInfo):
    schema = spec.schema
    splits = {s: SplitArrays.open(prepared, s) for s in ("train", "valid", "test") if s in prepared.arrays}
    if cfg.repeat_exposure is not None:
        attach_exposures(splits, spec, cfg)
    loaders = {}
    for split in ("train", "valid", "test"):
        if split not in splits:
            loaders[split] = None
            continue
        train = split == "train"
        loaders[split] = BatchLoader(splits[split], schema, cfg.batch_size if train else cfg.eval_batch_size,
                                     shuffle=train, seed=cfg.seed, rank=info.rank, world_size=info.world_size,
                                     drop_last=False, negative_keep_rate=cfg.negative_keep_rate if train else 1.0)
    return loaders


def fit_calibration(pred: dict[str, np.ndarray], tasks: list[str], method: str) -> dict[str, dict]:
    """One calibrator per task, fitted on the rows its mask counts; tasks with one class only are skipped."""
    out = {}
    for t, name in enumerate(tasks):
        keep = pred["masks"][:, t] > 0 if "masks" in pred else slice(None)
        y = pred["labels"][keep, t]
        if len(y) and 0 < y.mean() < 1:
            out[name] = fit_calibrator(method, pred["probs"][keep, t], y).to_dict()
    return out


def apply_calibration(pred: dict[str, np.ndarray], tasks: list[str], calibration: dict[str, dict]) -> dict:
    probs = pred["probs"].copy()
    for t, name in enumerate(tasks):
        if name in calibration:
            probs[:, t] = calibrator_from_dict(calibration[name])(probs[:, t])
    return {**pred, "probs": probs}


@dataclass
class RunResult:
    run_dir: str
    model: str
    dataset: str
    seed: int
    best_epoch: int
    epochs_run: int
    train_samples_per_s: float
    prepare_seconds: float
    fit_seconds: float
    num_parameters: int
    valid: dict
    test: dict
    test_calibrated: dict | None = None
    precision: dict = field(default_factory=dict)  # train.precision as asked and as resolved (PrecisionChoice)
    model_object: object = field(default=None, repr=False, compare=False)  # the trained nn.Module

    def to_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "model_object"}


def load_vector_tables(model: torch.nn.Module, prepared: PreparedData) -> None:
    """Fill the pre-trained vector tables the model's sequence encoders read (schema.vector_tables)."""
    for m in model.modules():
        if isinstance(m, SequenceField):
            for name in m.similarity_tables:
                m.set_vector_table(name, torch.from_numpy(prepared.vector_table(name)))


def resolve_run_precision(tc: TrainConfig, run_dir: Path, resume: bool, info: DistInfo) -> PrecisionChoice:
    """train.precision for this run: a resumed run keeps the format it started in, whatever the probe says now,
    and every rank trains in rank 0's format."""
    saved = run_dir / "config.yaml"
    if tc.precision == "auto" and resume and (run_dir / "last.pt").exists() and saved.exists():
        before = (yaml.safe_load(saved.read_text()).get("train") or {}).get("precision")
        if before in ("fp32", "bf16"):
            return PrecisionChoice(before, "auto", f"resumed run, trained in {before} so far")
    precision = resolve_precision(tc.precision, info.device, tc.deterministic)
    if info.world_size > 1:
        shared = [precision]
        torch.distributed.broadcast_object_list(shared, src=0)
        precision = shared[0]
    return precision


def run_experiment(cfg: ExperimentConfig, run_dir: str | Path | None = None, resume: bool = True,
                   log: Callable[[str], None] = print) -> RunResult:
    info = DistInfo.from_env()
    tc = cfg.train
    if tc.threads:
        torch.set_num_threads(tc.threads)
    if tc.allocator == "retain":
        log(retain_freed_memory())
    run_dir = Path(run_dir or cfg.run_dir or f"runs/{Path(cfg.dataset).stem}-{cfg.model.name}-s{tc.seed}")
    spec = select_tasks(resolve_dataset(cfg.dataset, cfg.base_dir), cfg.tasks)
    check_monitor(tc, spec)
    t0 = time.perf_counter()
    prepared = prepare(spec, on_bad_rows=tc.on_bad_rows, progress=tc.progress and info.is_main, log=log)
    prepare_seconds = time.perf_counter() - t0
    log(f"data {spec.name}: {prepared.rows} rows ({'cache' if prepared.from_cache else 'encoded'} "
        f"in {prepare_seconds:.1f}s at {prepared.root})")
    precision = resolve_run_precision(tc, run_dir, resume, info)
    if precision.requested == "auto":
        log(f"train.precision auto -> {precision.precision}: {precision.reason}")
    cfg = cfg.model_copy(update={"train": tc.model_copy(update={"precision": precision.precision})})
    tc = cfg.train
    seed_everything(tc.seed, tc.deterministic)
    model = build_model(cfg.model.name, prepared.space, cfg.model.options())
    load_vector_tables(model, prepared)
    n_params = sum(p.numel() for p in model.parameters())
    if info.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(run_dir / "config.yaml", yaml.safe_dump(cfg.to_dict(), sort_keys=False))
        atomic_write_json(run_dir / "feature_space.json", prepared.space.to_dict())
        if not (run_dir / "vocab").exists():
            shutil.copytree(prepared.root / "vocab", run_dir / "vocab")
    loaders = make_loaders(prepared, spec, tc, info)
    unknown = sorted(set(tc.task_weights) - set(spec.schema.task_names))
    if unknown:
        raise ValueError(f"train.task_weights names {unknown}, which are not tasks {spec.schema.task_names}")
    weights = [tc.task_weights.get(lab.name, lab.weight) for lab in spec.schema.labels]
    trainer = Trainer(model, spec.schema.task_names, weights, tc, run_dir, info, log=log)
    t1 = time.perf_counter()
    fit = trainer.fit(loaders["train"], loaders["valid"], resume=resume)
    fit_seconds = time.perf_counter() - t1
    tasks = spec.schema.task_names
    valid_pred = trainer.predict(loaders["valid"]) if loaders["valid"] is not None else None
    test_pred = trainer.predict(loaders["test"]) if loaders["test"] is not None else None
    valid = task_metrics(valid_pred, tasks) if valid_pred is not None else {}
    test = task_metrics(test_pred, tasks) if test_pred is not None else {}
    test_calibrated = None
    if tc.calibration != "none":
        if valid_pred is None:
            raise ValueError(f"train.calibration={tc.calibration} is fitted on the validation split; "
                             f"{spec.name!r} has none")
        calibration = fit_calibration(valid_pred, tasks, tc.calibration)
        if info.is_main:
            atomic_write_json(run_dir / "calibration.json", calibration)
        if test_pred is not None:
            test_calibrated = task_metrics(apply_calibration(test_pred, tasks, calibration), tasks)
    result = RunResult(run_dir=str(run_dir), model=cfg.model.name, dataset=spec.name, seed=tc.seed,
                       best_epoch=fit.best_epoch, epochs_run=fit.epochs_run,
                       train_samples_per_s=fit.train_samples_per_s, prepare_seconds=prepare_seconds,
                       fit_seconds=fit_seconds, num_parameters=n_params, valid=valid, test=test,
                       test_calibrated=test_calibrated, precision=precision.to_dict(), model_object=model)
    if info.is_main:
        trainer._log_jsonl({"split": "test", "epoch": fit.best_epoch, "metrics": test})
        atomic_write_json(run_dir / "result.json", result.to_dict())
    return result


def load_feature_space(run_dir: str | Path) -> FeatureSpace:
    """A run's schema, vocabulary sizes and numeric statistics, without building its model."""
    return FeatureSpace.from_dict(json.loads((Path(run_dir) / "feature_space.json").read_text()))


def load_run(run_dir: str | Path) -> tuple[ExperimentConfig, FeatureSpace, torch.nn.Module]:
    """A finished run's config, feature space and model with its best weights (safetensors, never pickle)."""
    from safetensors.torch import load_file

    run_dir = Path(run_dir)
    cfg = ExperimentConfig.from_dict(yaml.safe_load((run_dir / "config.yaml").read_text()))
    space = load_feature_space(run_dir)
    model = build_model(cfg.model.name, space, cfg.model.options())
    model.load_state_dict(load_file(str(run_dir / "best.safetensors")))
    return cfg, space, model.eval()


def run_split_loader(run_dir: str | Path, cfg: ExperimentConfig, space: FeatureSpace, split: str = "test",
                     dataset: str | None = None, batch_size: int = 4096) -> BatchLoader:
    """Batches of a split encoded with the run's own vocabularies (unseen values -> OOV)."""
    from untwine.data.encode import encode_with_vocab

    spec = select_tasks(resolve_dataset(dataset or cfg.dataset, cfg.base_dir), cfg.tasks)
    prepared = encode_with_vocab(spec, space, Path(run_dir) / "vocab", split)
    return BatchLoader(SplitArrays.open(prepared, split), space.schema, batch_size, shuffle=False)


def evaluate_run(run_dir: str | Path, dataset: str | None = None, split: str = "test",
                 batch_size: int = 4096) -> dict:
    """Score a split with a finished run's best weights, encoding with the run's own vocabularies."""
    cfg, space, model = load_run(run_dir)
    loader = run_split_loader(run_dir, cfg, space, split, dataset, batch_size)
    tasks = space.schema.task_names
    return task_metrics(run_predictions(run_dir, cfg, tasks, predict(model, loader, precision=cfg.train.precision)), tasks)


def run_predictions(run_dir: str | Path, cfg: ExperimentConfig, tasks: list[str], pred: dict[str, np.ndarray],
                    calibrated: bool = True) -> dict:
    """A model's predictions as its run reports them: down-sampling corrected, then (``calibrated``) mapped
    through the run's calibration.json when it has one."""
    pred = to_true_rate(pred, cfg.train.negative_keep_rate)
    path = Path(run_dir) / "calibration.json"
    if calibrated and path.exists():
        pred = apply_calibration(pred, tasks, json.loads(path.read_text()))
    return pred
