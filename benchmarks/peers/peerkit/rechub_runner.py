"""torch-rechub 0.9.0 (optional peer) through its public API: feature classes, ranking models,
``DataGenerator`` (one dict per row, default collate) and ``CTRTrainer``.

- DNN: rechub has no plain DNN and its ``WideDeep`` rejects an empty wide part, so DNN is its
  ``EmbeddingLayer`` + ``MLP`` (output layer) + sigmoid.
- DeepFM = ``DeepFM(deep_features=F, fm_features=sparse F)``; DCN-V2 = ``DCNv2(model_structure="parallel",
  use_low_rank_mixture=False)``.
- Its ``MLP`` always puts BatchNorm after every linear layer (no switch): kept, as PROTOCOLS notes.
- Multi-valued fields: ``SequenceFeature(pooling="mean", padding_idx=0)``. Numerics: ``DenseFeature`` (raw).
- ``CTRTrainer(optimizer_params={"lr": 1e-3, "weight_decay": 0})``; epochs are driven here with its
  ``train_one_epoch`` (timed) and ``evaluate`` (valid AUC), so early stopping / best-weight restore are the
  same as for the other peers (its own ``fit`` restores the best weights only when it stops early).
"""
from __future__ import annotations

import contextlib
import io
import os
import shutil
import time
from pathlib import Path

import numpy as np

from . import common
from .data import Encoder, read_split


def run(args, spec, log) -> dict:
    import torch
    from torch_rechub.basic.features import DenseFeature, SequenceFeature, SparseFeature
    from torch_rechub.basic.layers import MLP, EmbeddingLayer
    from torch_rechub.models.ranking import DCNv2, DeepFM
    from torch_rechub.trainers import CTRTrainer
    from torch_rechub.utils.data import DataGenerator

    t0 = time.perf_counter()
    tables = {s: read_split(spec, s) for s in ("train", "valid", "test")}
    enc = Encoder(spec).fit(tables["train"])
    data = {s: enc.transform(t) for s, t in tables.items()}
    prep_s = time.perf_counter() - t0
    del tables

    torch.manual_seed(args.seed)
    feats, sparse = [], []
    for f in spec.features:
        if f.kind == "categorical":
            feats.append(SparseFeature(f.name, vocab_size=enc.vocab_size(f.name), embed_dim=common.EMBEDDING_DIM))
            sparse.append(feats[-1])
        elif f.kind == "multi_categorical":
            feats.append(SequenceFeature(f.name, vocab_size=enc.vocab_size(f.name), embed_dim=common.EMBEDDING_DIM,
                                         pooling="mean", padding_idx=0))
            sparse.append(feats[-1])
        else:
            if args.numerics != "raw":
                raise SystemExit("torch-rechub has no numeric embedding; use --numerics raw")
            feats.append(DenseFeature(f.name))
    mlp_params = {"dims": list(common.HIDDEN_UNITS), "activation": "relu", "dropout": 0.0}

    class RechubDNN(torch.nn.Module):
        def __init__(self, features):
            super().__init__()
            self.features = features
            self.embedding = EmbeddingLayer(features)
            self.mlp = MLP(sum(f.embed_dim for f in features), output_layer=True, **mlp_params)

        def forward(self, x):
            return torch.sigmoid(self.mlp(self.embedding(x, self.features, squeeze_dim=True)).squeeze(1))

    if args.model == "dnn":
        model = RechubDNN(feats)
    elif args.model == "deepfm":
        model = DeepFM(deep_features=feats, fm_features=sparse, mlp_params=mlp_params)
    else:
        model = DCNv2(feats, n_cross_layers=common.CROSS_LAYERS, mlp_params=mlp_params, model_structure="parallel",
                      use_low_rank_mixture=False)

    tr, va, te = data["train"], data["valid"], data["test"]
    dg = DataGenerator(tr.x, tr.y)
    train_dl, valid_dl, test_dl = dg.generate_dataloader(x_val=va.x, y_val=va.y, x_test=te.x, y_test=te.y,
                                                         batch_size=args.batch_size)
    model_path = Path(args.work_dir) / "rechub_ckpt" / str(os.getpid())
    model_path.mkdir(parents=True, exist_ok=True)
    trainer = CTRTrainer(model, optimizer_params={"lr": common.LEARNING_RATE, "weight_decay": 0.0},
                         n_epoch=common.n_epochs(args), earlystop_patience=args.patience, device="cpu",
                         model_path=str(model_path))
    stopper = common.EarlyStopping(args.patience)
    epochs, eval_s = [], 0.0
    for epoch in range(1, common.n_epochs(args) + 1):
        t = time.perf_counter()
        with contextlib.redirect_stderr(io.StringIO()):  # its tqdm bars
            loss = trainer.train_one_epoch(train_dl)
        train_s = time.perf_counter() - t
        t = time.perf_counter()
        with contextlib.redirect_stderr(io.StringIO()):
            v = float(trainer.evaluate(trainer.model, valid_dl))
        eval_s += time.perf_counter() - t
        stop = stopper.update(epoch, v, model)
        epochs.append(common.epoch_record(epoch, train_s, len(tr.y), v, train_loss=loss))
        log(f"epoch {epoch}: train {train_s:.1f}s ({len(tr.y) / train_s:,.0f}/s) valid AUC {v:.5f}")
        if stop:
            break
    model.load_state_dict(stopper.best_state)
    with contextlib.redirect_stderr(io.StringIO()):
        p = np.asarray(trainer.predict(model, test_dl), dtype=np.float64).ravel()
    shutil.rmtree(model_path, ignore_errors=True)
    return {"epochs": epochs, "best_epoch": stopper.best_epoch, "best_valid_auc": stopper.best,
            "y_test": te.y, "p_test": p, "g_test": te.groups,
            "timings": {"prepare_s": round(prep_s, 3), "eval_s": round(eval_s, 3)},
            "notes": {"params": sum(p.numel() for p in model.parameters()),
                      "batch_norm": "torch-rechub MLP always has BatchNorm1d after each linear layer",
                      "numerics": "DenseFeature (raw)" if spec.of_kind("numeric") else None}}
