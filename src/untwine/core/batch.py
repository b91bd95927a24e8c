"""``Batch``: the one input type every model consumes.

Features of one kind are stored as one block so a model does one lookup per table, not one per
field; names resolve to columns through the schema::

    batch.categorical        (B, F_cat) int64 ids, columns in schema order
    batch.numeric            (B, F_num) float32, normalised, missing -> 0
    batch.numeric_raw        (B, F_num) float32, as read (missing -> NaN)
    batch.multi[name]        (B, L) int64 ids, 0 = padding
    batch.seq[name]          (B, L) int64 ids, oldest first, 0 = padding; side arrays under
                             ``seq["<name>.ts"]`` (int64 seconds) and ``seq["<name>.<side>"]``
    batch.vectors[name]      (B, d) float32
    batch.labels             (B, T) float32; ``label_mask`` (B, T) or None; ``weights`` (B,) or None
    batch.groups             (B,) int64 group key hash, or None
    batch.timestamp          (B,) int64 event time of the sample (the target time of sequences), or None
    batch.exposures          (B,) int64 earlier exposures of the row's (user, item) in a window, or None
    batch["user_id"]         the (B,) column of a categorical or numeric feature by name
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields, replace

import torch
from torch import Tensor


@dataclass
class Batch:
    categorical: Tensor | None = None
    numeric: Tensor | None = None
    numeric_raw: Tensor | None = None
    multi: dict[str, Tensor] = field(default_factory=dict)
    seq: dict[str, Tensor] = field(default_factory=dict)
    vectors: dict[str, Tensor] = field(default_factory=dict)
    labels: Tensor | None = None
    label_mask: Tensor | None = None
    weights: Tensor | None = None
    groups: Tensor | None = None
    timestamp: Tensor | None = None
    exposures: Tensor | None = None
    columns: dict[str, tuple[str, int]] = field(default_factory=dict, repr=False)  # name -> (block, column)

    def __len__(self) -> int:
        for f in fields(self):
            v = getattr(self, f.name)
            if isinstance(v, Tensor):
                return v.shape[0]
            if isinstance(v, dict) and v and f.name != "columns":
                return next(iter(v.values())).shape[0]
        return 0

    def __getitem__(self, name: str) -> Tensor:
        if name in self.columns:
            block, j = self.columns[name]
            return getattr(self, block)[:, j]
        for d in (self.multi, self.seq, self.vectors):
            if name in d:
                return d[name]
        raise KeyError(f"batch has no feature {name!r}")

    def _map(self, fn) -> "Batch":
        kw = {}
        for f in fields(self):
            v = getattr(self, f.name)
            if isinstance(v, Tensor):
                kw[f.name] = fn(v)
            elif isinstance(v, dict) and f.name != "columns":
                kw[f.name] = {k: fn(t) for k, t in v.items()}
        return replace(self, **kw)

    def to(self, device: torch.device | str, non_blocking: bool = False) -> "Batch":
        return self._map(lambda t: t.to(device, non_blocking=non_blocking))

    def pin_memory(self) -> "Batch":
        return self._map(lambda t: t.pin_memory())
