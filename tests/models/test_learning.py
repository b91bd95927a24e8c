"""A tiny learning check: models with an MLP fit a parity rule over two id fields."""
from __future__ import annotations

import pytest
import torch

from untwine.core.batch import Batch
from untwine.core.features import FeatureSpace
from untwine.core.schema import Feature, Label, Schema
from untwine.models import build_model


STEPS = 150


def auc(scores: torch.Tensor, labels: torch.Tensor) -> float:
    """Mann-Whitney AUC by explicit pair counting (ties count one half)."""
    pos, neg = scores[labels == 1], scores[labels == 0]
    diff = pos.unsqueeze(1) - neg.unsqueeze(0)
    return ((diff > 0).double().sum() + 0.5 * (diff == 0).double().sum()).item() / (len(pos) * len(neg))


def test_auc_helper():
    assert auc(torch.tensor([0.1, 0.9, 0.4, 0.3]), torch.tensor([0, 1, 1, 0])) == pytest.approx(1.0)
    assert auc(torch.tensor([0.9, 0.1]), torch.tensor([0, 1])) == pytest.approx(0.0)
    assert auc(torch.tensor([0.5, 0.5]), torch.tensor([0, 1])) == pytest.approx(0.5)


@pytest.mark.parametrize("name,cfg", [
    ("dnn", {"hidden": [32, 32]}),
    ("dcnv2", {"hidden": [32, 32], "cross_layers": 2}),
    ("dcnv2", {"hidden": [32], "cross_layers": 2, "structure": "stacked"}),
])
def test_fits_parity_rule(name, cfg):
    space = FeatureSpace(
        schema=Schema(features=[Feature(name="user_id", kind="categorical"), Feature(name="item_id", kind="categorical"),
                                Feature(name="noise", kind="numeric")],
                      labels=[Label(name="click")]),
        vocab_sizes={"user_id": 22, "item_id": 22})
    g = torch.Generator().manual_seed(0)
    n = 3000
    u, i = torch.randint(0, 20, (n,), generator=g), torch.randint(0, 20, (n,), generator=g)
    y = ((u + i) % 2 == 0).float()
    batch = Batch(categorical=torch.stack([u + 2, i + 2], dim=1), numeric=torch.randn(n, 1, generator=g),
                  labels=y.unsqueeze(1))

    torch.manual_seed(0)
    model = build_model(name, space, {"embedding_dim": 8, **cfg})
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    loss_fn = torch.nn.BCEWithLogitsLoss()
    model.train()
    for step in range(STEPS):
        idx = torch.randint(0, n, (512,), generator=g)
        sub = Batch(categorical=batch.categorical[idx], numeric=batch.numeric[idx])
        loss = loss_fn(model(sub)["click"], y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        scores = model(batch)["click"]
    assert auc(scores, y) > 0.95
