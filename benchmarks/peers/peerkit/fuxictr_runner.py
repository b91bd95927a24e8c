"""FuxiCTR 2.3.10 through its public API.

Data: the split files are staged (needed columns only, numerics log1p'd, the group key copied to a
``meta`` column) and handed to FuxiCTR's own ``FeatureProcessor`` + ``build_dataset`` (polars read,
vocabulary fit, Ray Data transform, Parquet write), then read back by its ``RankDataLoader``
(Ray Data ``ParquetDataLoader``). Categorical -> ``categorical``; multi-valued -> ``sequence`` with
``MaskedAveragePooling`` (mean over non-padding ids); numeric -> ``numeric``: mode ``embedded`` is its
native numeric embedding (a 10-d vector scaled by the value), mode ``raw`` the same with
``embedding_dim: 1`` (w * value joins the concatenated input, like a raw dense value).

Models: the PyPI wheel ships no DNN / DeepFM / DCNv2 classes (they live in the GitHub model_zoo), so
they are assembled here on its ``BaseModel`` from its public layers ``FeatureEmbedding``, ``MLP_Block``,
``CrossNetV2`` and ``FactorizationMachine``. Training is ``BaseModel.fit`` itself (its defaults: grad-norm
clipping 10, reduce-LR-on-plateau x0.1, early stopping on valid AUC, best checkpoint reloaded); the
subclass only records when each epoch's training ends and evaluation begins, so pure training time is
``eval_step start - train_epoch start``.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from . import common
from .data import numeric_values, read_split

GROUP_COL = "__group__"


def _stage(spec, args, stage_dir: Path) -> dict:
    """Write train/valid/test parquet for FuxiCTR; return its feature_cols / label_col config."""
    stage_dir.mkdir(parents=True, exist_ok=True)
    feature_cols = []
    for f in spec.features:
        if f.kind == "categorical":
            feature_cols.append({"name": f.name, "active": True, "dtype": "str", "type": "categorical",
                                 "min_categr_count": f.min_count})
        elif f.kind == "multi_categorical":
            col = {"name": f.name, "active": True, "dtype": "str", "type": "sequence", "splitter": f.delimiter,
                   "padding": "post", "feature_encoder": "layers.MaskedAveragePooling()",
                   "min_categr_count": f.min_count}
            if f.max_len:
                col["max_len"] = f.max_len
            feature_cols.append(col)
        else:
            col = {"name": f.name, "active": True, "dtype": "float", "type": "numeric"}
            if args.numerics == "raw":
                col["embedding_dim"] = 1
            feature_cols.append(col)
    if spec.group_key:
        feature_cols.append({"name": GROUP_COL, "active": True, "dtype": "str", "type": "meta"})
    label_col = {"name": "label", "dtype": "float"}
    for split in ("train", "valid", "test"):
        t = read_split(spec, split)
        cols = {}
        for f in spec.features:
            c = t.column(f.source)
            if f.kind == "numeric":
                cols[f.name] = pa.array(numeric_values(c), type=pa.float64())
            else:
                cols[f.name] = c.fill_null("")
        y = t.column(spec.label).to_numpy(zero_copy_only=False)
        cols["label"] = pa.array((np.nan_to_num(y, nan=0.0) > 0).astype(np.float64))
        if spec.group_key:
            cols[GROUP_COL] = t.column(spec.group_key).fill_null("")
        pq.write_table(pa.table(cols), stage_dir / f"{split}.parquet")
    return {"feature_cols": feature_cols, "label_col": label_col, "group_id": GROUP_COL if spec.group_key else None}


def _data_key(spec, args) -> str:
    h = hashlib.sha256()
    h.update(str(spec.path).encode())
    for split in ("train", "valid", "test"):
        for p in spec.files[split]:
            st = p.stat()
            h.update(f"{p}:{st.st_size}:{st.st_mtime_ns}".encode())
    h.update(spec.path.read_bytes())
    h.update(args.numerics.encode())
    return h.hexdigest()[:16]


def build(spec, args, log) -> tuple[str, dict, dict]:
    """Build (or reuse) FuxiCTR's dataset under a file lock; return (data_dir, config, timings)."""
    import fcntl

    key = _data_key(spec, args)
    dataset_id = f"{spec.name}-{args.numerics}-{key}"
    root = Path(args.work_dir) / "fuxictr_data"
    root.mkdir(parents=True, exist_ok=True)
    with open(root / f"{dataset_id}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        return _build_locked(spec, args, log, root, dataset_id)


def _build_locked(spec, args, log, root: Path, dataset_id: str) -> tuple[str, dict, dict]:
    from fuxictr.preprocess import FeatureProcessor, build_dataset

    data_dir = root / dataset_id
    meta_file = data_dir / "peer_build.json"
    if args.rebuild and data_dir.exists():
        shutil.rmtree(data_dir)
    if meta_file.exists():
        meta = json.loads(meta_file.read_text())
        log(f"reusing FuxiCTR dataset {data_dir} (built in {meta['build_s']:.1f}s)")
        return str(data_dir), meta["config"], {"stage_s": meta["stage_s"], "build_s": meta["build_s"],
                                               "build_reused": True, "build_peak_tree_rss_mb": meta.get("peak_mb")}
    if data_dir.exists():
        shutil.rmtree(data_dir)  # an interrupted build
    stage_dir = Path(args.work_dir) / "fuxictr_stage" / dataset_id
    t0 = time.perf_counter()
    cfg = _stage(spec, args, stage_dir)
    stage_s = time.perf_counter() - t0
    from . import sysinfo
    t0 = time.perf_counter()
    with sysinfo.TreeRssSampler() as s:
        fp = FeatureProcessor(feature_cols=cfg["feature_cols"], label_col=cfg["label_col"], dataset_id=dataset_id,
                              data_root=str(root), group_id=cfg["group_id"])
        build_dataset(fp, train_data=str(stage_dir / "train.parquet"), valid_data=str(stage_dir / "valid.parquet"),
                      test_data=str(stage_dir / "test.parquet"), data_format="parquet")
    build_s = time.perf_counter() - t0
    peak_mb = round(s.peak / 2**20, 1)
    meta_file.write_text(json.dumps({"config": cfg, "stage_s": stage_s, "build_s": build_s, "peak_mb": peak_mb}))
    shutil.rmtree(stage_dir, ignore_errors=True)
    log(f"FuxiCTR dataset built in {build_s:.1f}s (staging {stage_s:.1f}s)")
    return str(data_dir), cfg, {"stage_s": round(stage_s, 3), "build_s": round(build_s, 3), "build_reused": False,
                                "build_peak_tree_rss_mb": peak_mb}


def _models():
    import torch
    from torch import nn
    from fuxictr.pytorch.layers import CrossNetV2, FactorizationMachine, FeatureEmbedding, MLP_Block
    from fuxictr.pytorch.models import BaseModel

    class Timed(BaseModel):
        """BaseModel that notes when each epoch's training starts and when its evaluation starts/ends."""

        def init_timing(self):
            self.epoch_log = []  # dicts: epoch, train_s, eval_s, valid logs
            self._t_epoch = None

        def train_epoch(self, data_generator):
            self._t_epoch = time.perf_counter()
            self._t_eval = None
            super().train_epoch(data_generator)
            if self._t_eval is None:  # no evaluation fell inside this epoch
                self.epoch_log.append({"epoch": self._epoch_index + 1,
                                       "train_s": time.perf_counter() - self._t_epoch, "eval_s": 0.0})

        def eval_step(self):
            self._t_eval = time.perf_counter()
            self._last_logs = None
            super().eval_step()
            rec = {"epoch": self._epoch_index + 1, "train_s": self._t_eval - self._t_epoch,
                   "eval_s": time.perf_counter() - self._t_eval, "valid": self._last_logs,
                   "improved": self._stopping_steps == 0,
                   "lr_after": self.optimizer.param_groups[0]["lr"]}
            self.epoch_log.append(rec)

        def checkpoint_and_earlystop(self, logs, min_delta=1e-6):
            self._last_logs = dict(logs)
            super().checkpoint_and_earlystop(logs, min_delta)

    class PeerDNN(Timed):
        def __init__(self, feature_map, model_id="PeerDNN", embedding_dim=10, hidden_units=(400, 400, 400),
                     learning_rate=1e-3, **kwargs):
            super().__init__(feature_map, model_id=model_id, **kwargs)
            self.embedding_layer = FeatureEmbedding(feature_map, embedding_dim)
            self.mlp = MLP_Block(input_dim=feature_map.sum_emb_out_dim(), output_dim=1,
                                 hidden_units=list(hidden_units), hidden_activations="ReLU",
                                 dropout_rates=0.0, batch_norm=False)
            self.compile(kwargs["optimizer"], kwargs["loss"], learning_rate)
            self.reset_parameters()
            self.model_to_device()

        def forward(self, inputs):
            X = self.get_inputs(inputs)
            emb = self.embedding_layer(X, flatten_emb=True)
            return {"y_pred": self.output_activation(self.mlp(emb))}

    class PeerDeepFM(Timed):
        """FM (first order + pairwise over the field embeddings) plus the MLP on the same embeddings."""

        def __init__(self, feature_map, model_id="PeerDeepFM", embedding_dim=10, hidden_units=(400, 400, 400),
                     learning_rate=1e-3, **kwargs):
            super().__init__(feature_map, model_id=model_id, **kwargs)
            self.embedding_layer = FeatureEmbedding(feature_map, embedding_dim)
            self.fm = FactorizationMachine(feature_map)
            # fields whose embedding has the common width take part in the pairwise term
            self.fm_types = ["categorical", "sequence"] + (
                ["numeric"] if all(s.get("embedding_dim", embedding_dim) == embedding_dim
                                   for s in feature_map.features.values() if s["type"] == "numeric") else [])
            self.mlp = MLP_Block(input_dim=feature_map.sum_emb_out_dim(), output_dim=1,
                                 hidden_units=list(hidden_units), hidden_activations="ReLU",
                                 dropout_rates=0.0, batch_norm=False)
            self.compile(kwargs["optimizer"], kwargs["loss"], learning_rate)
            self.reset_parameters()
            self.model_to_device()

        def forward(self, inputs):
            X = self.get_inputs(inputs)
            emb_dict = self.embedding_layer.embedding_layer(X)
            flat = self.embedding_layer.embedding_layer.dict2tensor(emb_dict, flatten_emb=True)
            stacked = self.embedding_layer.embedding_layer.dict2tensor(emb_dict, feature_type=self.fm_types)
            y = self.fm(X, stacked) + self.mlp(flat)
            return {"y_pred": self.output_activation(y)}

    class PeerDCNv2(Timed):
        """CrossNetV2 (full rank) in parallel with the MLP, concatenated into one logit layer."""

        def __init__(self, feature_map, model_id="PeerDCNv2", embedding_dim=10, hidden_units=(400, 400, 400),
                     num_cross_layers=3, learning_rate=1e-3, **kwargs):
            super().__init__(feature_map, model_id=model_id, **kwargs)
            self.embedding_layer = FeatureEmbedding(feature_map, embedding_dim)
            d = feature_map.sum_emb_out_dim()
            self.crossnet = CrossNetV2(d, num_cross_layers)
            self.mlp = MLP_Block(input_dim=d, output_dim=None, hidden_units=list(hidden_units),
                                 hidden_activations="ReLU", dropout_rates=0.0, batch_norm=False)
            self.fc = nn.Linear(d + hidden_units[-1], 1)
            self.compile(kwargs["optimizer"], kwargs["loss"], learning_rate)
            self.reset_parameters()
            self.model_to_device()

        def forward(self, inputs):
            X = self.get_inputs(inputs)
            emb = self.embedding_layer(X, flatten_emb=True)
            y = self.fc(torch.cat([self.crossnet(emb), self.mlp(emb)], dim=-1))
            return {"y_pred": self.output_activation(y)}

    return {"dnn": PeerDNN, "deepfm": PeerDeepFM, "dcnv2": PeerDCNv2}


def run(args, spec, log) -> dict:
    import logging

    import torch
    from fuxictr.features import FeatureMap
    from fuxictr.pytorch.dataloaders import RankDataLoader
    from fuxictr.pytorch.torch_utils import seed_everything

    logging.getLogger().setLevel(logging.WARNING)
    import ray.data  # noqa: F401  (configures its loggers on import; quiet them after)
    for name in ("ray", "ray.data"):
        logging.getLogger(name).setLevel(logging.WARNING)
    data_dir, cfg, timings = build(spec, args, log)
    dataset_id = Path(data_dir).name
    params = {"embedding_dim": common.EMBEDDING_DIM, "group_id": cfg["group_id"]}
    feature_map = FeatureMap(dataset_id, data_dir)
    feature_map.load(os.path.join(data_dir, "feature_map.json"), params)

    seed_everything(args.seed)
    torch.set_num_threads(args.threads)  # seed_everything leaves threads alone; be explicit anyway
    model_root = Path(args.work_dir) / "fuxictr_ckpt" / f"{os.getpid()}"
    Model = _models()[args.model]
    model = Model(feature_map, gpu=-1, embedding_dim=common.EMBEDDING_DIM, hidden_units=common.HIDDEN_UNITS,
                  learning_rate=common.LEARNING_RATE, optimizer="adam", loss="binary_crossentropy",
                  task="binary_classification", monitor="AUC", monitor_mode="max",
                  early_stop_patience=args.patience, reduce_lr_on_plateau=args.fuxictr_lr_decay == "on",
                  embedding_regularizer=None, net_regularizer=None, verbose=0,
                  model_root=str(model_root), metrics=["AUC", "logloss"])
    os.makedirs(model.model_dir, exist_ok=True)
    model.init_timing()

    t0 = time.perf_counter()
    train_gen, valid_gen, test_gen = RankDataLoader(
        feature_map, stage="both", train_data=os.path.join(data_dir, "train.parquet"),
        valid_data=os.path.join(data_dir, "valid.parquet"), test_data=os.path.join(data_dir, "test.parquet"),
        batch_size=args.batch_size, shuffle=True, data_format="parquet")
    loader_s = time.perf_counter() - t0

    model.fit(train_gen, epochs=common.n_epochs(args), validation_data=valid_gen, max_gradient_norm=10.0)

    # test predictions with labels and groups read from the same batches (Ray may reorder blocks)
    model.eval()
    ys, ps, gs = [], [], []
    t0 = time.perf_counter()
    with torch.no_grad():
        for batch in test_gen:
            ps.append(model.forward(batch)["y_pred"].cpu().numpy().reshape(-1))
            ys.append(model.get_labels(batch).cpu().numpy().reshape(-1))
            if cfg["group_id"]:
                gs.append(batch[cfg["group_id"]].numpy().reshape(-1))
    test_s = time.perf_counter() - t0

    n_train = train_gen.num_samples
    epochs, best_epoch, best = [], None, -np.inf
    for rec in model.epoch_log:
        v = (rec.get("valid") or {}).get("AUC")
        epochs.append(common.epoch_record(rec["epoch"], rec["train_s"], n_train, v,
                                          eval_s=round(rec["eval_s"], 3), lr_after=rec.get("lr_after")))
        if v is not None and rec.get("improved"):
            best_epoch, best = rec["epoch"], v
        log(f"epoch {rec['epoch']}: train {rec['train_s']:.1f}s ({n_train / rec['train_s']:,.0f}/s) "
            f"eval {rec['eval_s']:.1f}s valid AUC {v}")
    import ray
    ray.shutdown()
    shutil.rmtree(model_root, ignore_errors=True)
    timings.update({"loader_setup_s": round(loader_s, 3), "test_predict_s": round(test_s, 3),
                    "eval_s": round(sum(r["eval_s"] for r in model.epoch_log), 3)})
    return {"epochs": epochs, "best_epoch": best_epoch, "best_valid_auc": best,
            "y_test": np.concatenate(ys), "p_test": np.concatenate(ps),
            "g_test": np.concatenate(gs) if gs else None,
            "timings": timings,
            "notes": {"numerics": {"embedded": "numeric embedding: 10-d vector x value",
                                   "raw": "numeric embedding_dim 1: w x value"}[args.numerics]
                      if spec.of_kind("numeric") else None,
                      "params": sum(p.numel() for p in model.parameters()),
                      "models": "assembled on fuxictr BaseModel from FeatureEmbedding, MLP_Block, CrossNetV2, "
                                "FactorizationMachine (the wheel ships no DNN/DeepFM/DCNv2)",
                      "fit": "BaseModel.fit: grad-norm clip 10, reduce_lr_on_plateau "
                             f"{args.fuxictr_lr_decay}, train shuffle by Ray (not seeded)"}}
