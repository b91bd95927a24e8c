"""Pieces shared by the three peer runners: training defaults, early stopping, epoch records."""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field

# PROTOCOLS.md "Training defaults".
EMBEDDING_DIM = 10
HIDDEN_UNITS = [400, 400, 400]
CROSS_LAYERS = 3
LEARNING_RATE = 1e-3
EVAL_BATCH_SIZE = 4096  # prediction only; does not change results


def hyperparams(args, batch_size: int) -> dict:
    return {"embedding_dim": EMBEDDING_DIM, "mlp": HIDDEN_UNITS, "activation": "relu", "dropout": 0.0,
            "regularization": 0.0, "cross_layers": CROSS_LAYERS if args.model == "dcnv2" else None,
            "cross_rank": "full" if args.model == "dcnv2" else None,
            "optimizer": "adam", "lr": LEARNING_RATE, "batch_size": batch_size,
            "epochs_max": args.epochs_max, "max_train_epochs": args.max_train_epochs,
            "early_stopping": {"metric": "valid AUC", "patience": args.patience, "restore_best": True}}


@dataclass
class EarlyStopping:
    """Stop after ``patience`` evaluations without a new best validation AUC; keep the best weights."""
    patience: int
    best: float = -math.inf
    best_epoch: int | None = None
    wait: int = 0
    best_state: dict | None = field(default=None, repr=False)

    def update(self, epoch: int, value: float, model=None) -> bool:
        """Record epoch ``epoch`` (1-based); return True when training should stop."""
        if value > self.best:
            self.best, self.best_epoch, self.wait = value, epoch, 0
            if model is not None:
                self.best_state = copy.deepcopy(model.state_dict())
        else:
            self.wait += 1
        return self.wait >= self.patience


def epoch_record(epoch: int, train_s: float, samples: int, valid_auc: float | None, **extra) -> dict:
    rec = {"epoch": epoch, "train_s": round(train_s, 4), "samples": samples,
           "samples_per_s": round(samples / train_s, 1) if train_s > 0 else None,
           "valid_auc": valid_auc}
    rec.update(extra)
    return rec


def n_epochs(args) -> int:
    return min(args.epochs_max, args.max_train_epochs) if args.max_train_epochs else args.epochs_max
