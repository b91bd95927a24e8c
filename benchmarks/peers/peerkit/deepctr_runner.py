"""DeepCTR-Torch 0.3.0 through its public API: feature columns, WDL / DeepFM / DCN, compile, fit, predict.

- DNN = ``WDL`` with an empty wide part (``linear_feature_columns=[]``).
- DeepFM = ``DeepFM`` (its FM includes the first-order linear part), same embeddings for FM and MLP.
- DCN-V2 = ``DCN(cross_parameterization="matrix")``: full-rank cross layers in parallel with the MLP,
  no wide part (``linear_feature_columns=[]``).
- Multi-valued fields: ``VarLenSparseFeat(combiner="mean")``, id 0 masked. Numerics: ``DenseFeat``
  (mode ``raw`` only; DeepCTR-Torch has no numeric embedding).
- All l2 regularisers 0, dropout 0, no batch norm; the library's own init (normal, std 1e-4).
- ``fit`` runs one call for all epochs; a ``Callback`` times each epoch (on_epoch_begin to on_epoch_end,
  which covers only training since no validation_data is given to fit), then validates, early-stops
  (``model.stop_training``) and keeps the best weights.
"""
from __future__ import annotations

import contextlib
import io
import time

import numpy as np
import torch

from . import common
from .data import Encoder, read_split
from .metrics import auc


def run(args, spec, log) -> dict:
    from deepctr_torch.callbacks import Callback
    from deepctr_torch.inputs import DenseFeat, SparseFeat, VarLenSparseFeat
    from deepctr_torch.models import DCN, WDL, DeepFM

    t0 = time.perf_counter()
    tables = {s: read_split(spec, s) for s in ("train", "valid", "test")}
    enc = Encoder(spec).fit(tables["train"])
    data = {s: enc.transform(t) for s, t in tables.items()}
    prep_s = time.perf_counter() - t0
    del tables

    cols = []
    for f in spec.features:
        if f.kind == "categorical":
            cols.append(SparseFeat(f.name, vocabulary_size=enc.vocab_size(f.name), embedding_dim=common.EMBEDDING_DIM))
        elif f.kind == "multi_categorical":
            cols.append(VarLenSparseFeat(SparseFeat(f.name, vocabulary_size=enc.vocab_size(f.name),
                                                    embedding_dim=common.EMBEDDING_DIM),
                                         maxlen=enc.max_lens[f.name], combiner="mean"))
        else:
            if args.numerics != "raw":
                raise SystemExit("DeepCTR-Torch has no numeric embedding; use --numerics raw")
            cols.append(DenseFeat(f.name, 1))

    mlp = tuple(common.HIDDEN_UNITS)
    no_reg = dict(l2_reg_embedding=0.0, l2_reg_dnn=0.0, dnn_dropout=0.0, dnn_activation="relu",
                  dnn_use_bn=False, seed=args.seed, task="binary", device="cpu")
    if args.model == "dnn":
        model = WDL([], cols, dnn_hidden_units=mlp, l2_reg_linear=0.0, **no_reg)
    elif args.model == "deepfm":
        model = DeepFM(cols, cols, use_fm=True, dnn_hidden_units=mlp, l2_reg_linear=0.0, **no_reg)
    elif args.model == "dcnv2":
        model = DCN([], cols, cross_num=common.CROSS_LAYERS, cross_parameterization="matrix",
                    dnn_hidden_units=mlp, l2_reg_linear=0.0, l2_reg_cross=0.0, **no_reg)
    else:
        raise SystemExit(f"unknown model {args.model}")
    model.compile("adam", "binary_crossentropy", metrics=[])  # "adam" = torch.optim.Adam, lr 1e-3
    assert abs(model.optim.param_groups[0]["lr"] - common.LEARNING_RATE) < 1e-12

    train, valid, test = data["train"], data["valid"], data["test"]
    stopper = common.EarlyStopping(args.patience)
    epochs: list[dict] = []
    eval_s = [0.0]
    fit_called = [0.0]
    first_epoch_begin: list[float] = []

    class Timer(Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.t = time.perf_counter()
            if not first_epoch_begin:
                first_epoch_begin.append(self.t)

        def on_epoch_end(self, epoch, logs=None):
            train_s = time.perf_counter() - self.t
            te = time.perf_counter()
            p = model.predict(dict(valid.x), batch_size=common.EVAL_BATCH_SIZE)
            v = auc(valid.y, p)
            stop = stopper.update(epoch + 1, v, model)
            eval_s[0] += time.perf_counter() - te
            epochs.append(common.epoch_record(epoch + 1, train_s, len(train.y), v,
                                              train_loss=logs.get("loss") if logs else None))
            log(f"epoch {epoch + 1}: train {train_s:.1f}s ({len(train.y) / train_s:,.0f}/s) valid AUC {v:.5f}")
            if stop:
                self.model.stop_training = True

    fit_called[0] = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):  # fit prints the device and a header
        model.fit(dict(train.x), train.y, batch_size=args.batch_size, epochs=common.n_epochs(args),
                  verbose=0, shuffle=True, callbacks=[Timer()])
    fit_setup_s = (first_epoch_begin[0] - fit_called[0]) if first_epoch_begin else None
    model.load_state_dict(stopper.best_state)

    p_test = model.predict(dict(test.x), batch_size=common.EVAL_BATCH_SIZE).ravel()
    return {"epochs": epochs, "best_epoch": stopper.best_epoch, "best_valid_auc": stopper.best,
            "y_test": test.y, "p_test": p_test, "g_test": test.groups,
            "timings": {"prepare_s": round(prep_s, 3), "fit_setup_s": round(fit_setup_s or 0.0, 3),
                        "eval_s": round(eval_s[0], 3)},
            "notes": {"numerics": "DenseFeat (raw value into MLP and cross net)" if enc.spec.of_kind("numeric") else None,
                      "params": sum(p.numel() for p in model.parameters())},
            "lib_version_key": "deepctr-torch"}
