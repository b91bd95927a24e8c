"""Batches from encoded arrays: shuffled row slices gathered in numpy, no per-row Python.

Each epoch draws a permutation from (seed, epoch); batch i takes rows perm[i*B:(i+1)*B] from every
memory-mapped array with one fancy-index per array. Under data parallelism rank r of W takes
batches r, r+W, ...; the tail is dropped so every rank runs the same number of steps. A background
thread assembles the next batch while the model computes on the current one.
"""
from __future__ import annotations

import queue
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from untwine.core.batch import Batch
from untwine.core.schema import Schema
from untwine.data.encode import PreparedData


@dataclass
class SplitArrays:
    """The memory-mapped arrays of one split."""

    arrays: dict[str, np.ndarray]
    rows: int

    @classmethod
    def open(cls, prepared: PreparedData, split: str, in_memory: bool = False) -> "SplitArrays":
        if split not in prepared.arrays:
            raise KeyError(f"prepared data at {prepared.root} has no split {split!r}; it has {list(prepared.arrays)}")
        arrays = {}
        for name, info in prepared.arrays[split].items():
            path = Path(prepared.root) / split / f"{name}.bin"
            shape = tuple(info["shape"])
            if shape[0] == 0:
                arrays[name] = np.zeros(shape, dtype=info["dtype"])
                continue
            arr = np.memmap(path, dtype=np.dtype(info["dtype"]), mode="r", shape=shape)
            arrays[name] = np.array(arr) if in_memory else arr
        return cls(arrays=arrays, rows=prepared.rows[split])


def column_index(schema: Schema) -> dict[str, tuple[str, int]]:
    cols = {f.name: ("categorical", j) for j, f in enumerate(schema.categorical)}
    cols.update({f.name: ("numeric", j) for j, f in enumerate(schema.numeric)})
    return cols


def make_batch(data: SplitArrays, rows: np.ndarray | slice, columns: dict[str, tuple[str, int]]) -> Batch:
    """Gather ``rows`` from every array into a Batch of tensors."""
    def take(a: np.ndarray) -> np.ndarray:
        x = a[rows]  # fancy indexing copies; a slice of a memmap is a read-only view
        return x if x.flags.writeable else np.array(x)

    def ids(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(take(a).astype(np.int64))

    def floats(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(take(a)))

    arr = data.arrays
    b = Batch(columns=columns)
    if "categorical" in arr:
        b.categorical = ids(arr["categorical"])
    if "numeric" in arr:
        b.numeric = floats(arr["numeric"])
        b.numeric_raw = floats(arr["numeric_raw"])
    for name, a in arr.items():
        if name.startswith("multi."):
            b.multi[name[6:]] = ids(a)
        elif name.startswith("seq."):
            b.seq[name[4:]] = ids(a)
        elif name.startswith("vec."):
            b.vectors[name[4:]] = floats(a)
    b.labels = floats(arr["labels"])
    if "label_mask" in arr:
        b.label_mask = floats(arr["label_mask"])
    if "weights" in arr:
        b.weights = floats(arr["weights"])
    if "groups" in arr:
        b.groups = torch.from_numpy(np.ascontiguousarray(take(arr["groups"])))
    if "timestamp" in arr:
        b.timestamp = torch.from_numpy(np.ascontiguousarray(take(arr["timestamp"])))
    if "exposures" in arr:
        b.exposures = torch.from_numpy(take(arr["exposures"]).astype(np.int64))
    return b


class BatchLoader:
    """Iterates a split in batches; ``shuffle`` for training, sequential for evaluation."""

    def __init__(self, data: SplitArrays, schema: Schema, batch_size: int, shuffle: bool, seed: int = 0,
                 rank: int = 0, world_size: int = 1, prefetch: int = 2, drop_last: bool = False,
                 negative_keep_rate: float = 1.0) -> None:
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        if not 0 < negative_keep_rate <= 1:
            raise ValueError(f"negative_keep_rate must be in (0, 1], got {negative_keep_rate}")
        if negative_keep_rate < 1 and not shuffle:
            raise ValueError("negative down-sampling is for training (shuffle=True) only")
        self.negative_keep_rate = negative_keep_rate
        self._negatives: np.ndarray | None = None
        self.data, self.batch_size, self.shuffle, self.seed = data, batch_size, shuffle, seed
        self.rank, self.world_size, self.prefetch = rank, world_size, prefetch
        self.drop_last = drop_last
        self.columns = column_index(schema)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _epoch_rows(self) -> np.ndarray | None:
        """The rows of this epoch under negative down-sampling: every row with a positive label, and
        each row without one with probability negative_keep_rate, drawn from (seed, epoch)."""
        if self.negative_keep_rate >= 1:
            return None
        if self._negatives is None:
            self._negatives = ~(np.asarray(self.data.arrays["labels"]) > 0.5).any(axis=1)
        keep = ~self._negatives | (np.random.default_rng([self.seed, self.epoch, 1]).random(self.data.rows)
                                   < self.negative_keep_rate)
        return np.flatnonzero(keep)

    def _batch_rows(self) -> list[np.ndarray | slice]:
        n, bs = self.data.rows, self.batch_size
        if self.shuffle:
            subset = self._epoch_rows()
            if subset is None:
                perm = np.random.default_rng([self.seed, self.epoch]).permutation(n)
            else:
                perm = subset[np.random.default_rng([self.seed, self.epoch]).permutation(len(subset))]
                n = len(subset)
            # sorted indices inside a batch read memory-mapped pages in order; the set is what matters
            starts = range(0, n - bs + 1 if self.drop_last else n, bs)
            parts = [np.sort(perm[s:s + bs]) for s in starts]
            if self.world_size > 1:
                usable = len(parts) - len(parts) % self.world_size
                parts = parts[self.rank:usable:self.world_size]
            return parts
        # evaluation: each rank scores a contiguous share of the rows, in file order
        lo, hi = n * self.rank // self.world_size, n * (self.rank + 1) // self.world_size
        stop = hi - bs + 1 if self.drop_last else hi
        return [slice(s, min(s + bs, hi)) for s in range(lo, max(stop, lo), bs)]

    def __len__(self) -> int:
        return len(self._batch_rows())

    def __iter__(self) -> Iterator[Batch]:
        parts = self._batch_rows()
        if self.prefetch <= 0:
            for rows in parts:
                yield make_batch(self.data, rows, self.columns)
            return
        q: queue.Queue = queue.Queue(maxsize=self.prefetch)
        stop = threading.Event()

        def work() -> None:
            try:
                for rows in parts:
                    if stop.is_set():
                        return
                    q.put(make_batch(self.data, rows, self.columns))
                q.put(None)
            except BaseException as e:  # surfaced in the consumer
                q.put(e)

        t = threading.Thread(target=work, daemon=True)
        t.start()
        try:
            while True:
                item = q.get()
                if item is None:
                    break
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            stop.set()
            while t.is_alive():
                try:
                    q.get_nowait()
                except queue.Empty:
                    t.join(timeout=0.05)
