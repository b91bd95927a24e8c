"""Shared fixtures: an isolated cache per test, the real-data folder, random FeatureSpace + Batch factories."""
import os

import pytest

from untwine.core.paths import data_root


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    """Every test encodes into its own cache folder."""
    monkeypatch.setenv("UNTWINE_CACHE", str(tmp_path / "cache"))


@pytest.fixture
def shared_data():
    root = data_root()
    if root is None:
        pytest.skip("real datasets not found: set UNTWINE_DATA or put ../shared/data beside the checkout")
    return root


# ---- random FeatureSpace + Batch factories for the nn and model tests

import pytest
import torch

from untwine.core.batch import Batch
import numpy as np

from untwine.core.features import FeatureSpace, NumericStats
from untwine.core.schema import Feature, Label, Schema


def _space(num_labels: int = 1, *, categorical: bool = True, multi: bool = True, seq: bool = True,
           side: bool = True, numeric: bool = True, vector: bool = True) -> FeatureSpace:
    feats: list[Feature] = []
    vocab: dict[str, int] = {}
    if categorical:
        feats += [Feature(name="user_id", kind="categorical", group="user"),
                  Feature(name="item_id", kind="categorical", group="item"),
                  Feature(name="item_cate", kind="categorical", group="item")]
        vocab.update(user_id=13, item_id=17, item_cate=7)
    if multi:
        feats.append(Feature(name="tags", kind="multi_categorical", max_len=4, pooling="mean"))
        feats.append(Feature(name="genres", kind="multi_categorical", max_len=3, pooling="sum"))
        vocab.update(tags=11, genres=6)
    if seq:
        assert categorical, "the sequence shares item_id's vocabulary"
        feats.append(Feature(name="hist", kind="sequence", group="user", max_len=5, vocab_from="item_id",
                             side_fields={"cate": "item_cate"} if side else {}))
        vocab["hist"] = vocab["item_id"]
    stats: dict[str, NumericStats] = {}
    if numeric:
        feats += [Feature(name="price", kind="numeric"), Feature(name="age", kind="numeric", group="user")]
        # raw values are 3 * N(0, 1) + 1 in _batch: the quantiles of that distribution
        q = tuple(float(v) for v in 1 + 3 * np.sort(np.random.default_rng(0).standard_normal(20_000))[
            np.linspace(0, 19_999, 1001).astype(int)])
        stats = {n: NumericStats(transform="standard", mean=1.0, std=3.0, min=q[0], max=q[-1], count=20_000,
                                 missing=0, quantiles=q) for n in ("price", "age")}
    if vector:
        feats.append(Feature(name="img", kind="vector", dim=5))
        feats.append(Feature(name="user_img", kind="vector", dim=5, group="user", pair="img"))
    labels = [Label(name="click"), Label(name="buy")][:num_labels]
    return FeatureSpace(schema=Schema(features=feats, labels=labels), vocab_sizes=vocab, numeric_stats=stats)


def _padded_ids(n: int, max_len: int, vocab: int, g: torch.Generator, lengths: torch.Tensor | None = None):
    """(n, max_len) ids in [2, vocab), right-padded with 0; row 0 is all padding when n > 1."""
    if lengths is None:
        lengths = torch.randint(0, max_len + 1, (n,), generator=g)
        if n > 1:
            lengths[0] = 0
            lengths[1] = max_len
    ids = torch.randint(2, vocab, (n, max_len), generator=g)
    pos = torch.arange(max_len).expand(n, max_len)
    return torch.where(pos < lengths.unsqueeze(1), ids, torch.zeros_like(ids)), lengths


def _batch(space: FeatureSpace, n: int, seed: int = 0) -> Batch:
    g = torch.Generator().manual_seed(seed)
    s = space.schema
    cols = {f.name: ("categorical", j) for j, f in enumerate(s.categorical)}
    cols.update({f.name: ("numeric", j) for j, f in enumerate(s.numeric)})
    b = Batch(columns=cols)
    if s.categorical:
        b.categorical = torch.stack([torch.randint(1, space.vocab_size(f), (n,), generator=g) for f in s.categorical],
                                    dim=1) if n else torch.zeros(0, len(s.categorical), dtype=torch.long)
    for f in s.multi_categorical:
        b.multi[f.name] = _padded_ids(n, f.max_len, space.vocab_size(f), g)[0]
    for f in s.sequences:
        ids, lengths = _padded_ids(n, f.max_len, space.vocab_size(f), g)
        b.seq[f.name] = ids
        for side, ref in f.side_fields.items():
            b.seq[f"{f.name}.{side}"] = _padded_ids(n, f.max_len, space.vocab_size(ref), g, lengths)[0]
    if s.numeric:
        b.numeric = torch.randn(n, len(s.numeric), generator=g)
        b.numeric_raw = b.numeric * 3 + 1
        if n > 2:  # one missing value (NaN raw, 0 normalised) so the missing path is exercised
            b.numeric_raw[2, 0] = float("nan")
            b.numeric[2, 0] = 0.0
    for f in s.vectors:
        b.vectors[f.name] = torch.randn(n, f.dim, generator=g)
    b.labels = torch.randint(0, 2, (n, len(s.labels)), generator=g).float()
    return b


@pytest.fixture
def make_space():
    return _space


@pytest.fixture
def make_batch():
    return _batch


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny tensors: intra-op threads only add contention (10x slower on a busy machine)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
