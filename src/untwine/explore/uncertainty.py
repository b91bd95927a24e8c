"""Predictive distributions of a ranking model's probability: K draws per row.

* ``ensemble`` -- K independently initialised copies of a model, each updated on an online bootstrap of
  the data (every row weighted by a Poisson(1) draw per member, Oza & Russell 2001): the spread of the K
  predictions approximates the posterior's; Thompson sampling picks one member per request
  (ensemble sampling, Lu & Van Roy 2017).
* ``mc_dropout`` -- one model with dropout, K stochastic forward passes at prediction time (Gal &
  Ghahramani 2016); the model must have dropout > 0.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import nn

from untwine.core.batch import Batch
from untwine.core.features import FeatureSpace
from untwine.models.base import build_model
from untwine.train.losses import RepeatExposureWeight, multitask_bce


@dataclass
class UncertaintyConfig:
    method: str = "ensemble"  # ensemble | mc_dropout
    members: int = 5  # ensemble members, or dropout samples
    lr: float = 3e-3
    bootstrap: bool = True  # Poisson(1) row weights per member (ensemble only)
    seed: int = 0


class PredictiveModel:
    """K probability draws per row from an ensemble or an MC-dropout model, and its online update."""

    def __init__(self, space: FeatureSpace, model_name: str, model_options: dict, cfg: UncertaintyConfig) -> None:
        if cfg.method not in ("ensemble", "mc_dropout"):
            raise ValueError(f"uncertainty method must be ensemble or mc_dropout, got {cfg.method!r}")
        if cfg.members < 1:
            raise ValueError("members must be >= 1")
        self.cfg = cfg
        n = cfg.members if cfg.method == "ensemble" else 1
        self.models: list[nn.Module] = []
        for k in range(n):
            torch.manual_seed(cfg.seed * 1000 + k)
            self.models.append(build_model(model_name, space, model_options))
        if cfg.method == "mc_dropout" and not any(isinstance(m, nn.Dropout) and m.p > 0
                                                  for m in self.models[0].modules()):
            raise ValueError("mc_dropout needs a model with dropout > 0 (e.g. model option dropout: 0.2)")
        self.optimizers = [torch.optim.Adam(m.parameters(), lr=cfg.lr) for m in self.models]
        self.gen = torch.Generator().manual_seed(cfg.seed)

    @torch.no_grad()
    def sample(self, batch: Batch, task: int = 0) -> torch.Tensor:
        """(K, B) probabilities: one row per member (ensemble) or dropout sample (mc_dropout)."""
        if self.cfg.method == "ensemble":
            outs = []
            for m in self.models:
                m.eval()
                outs.append(torch.sigmoid(list(m(batch).values())[task]))
            return torch.stack(outs)
        m = self.models[0]
        m.train()  # dropout on
        draws = torch.stack([torch.sigmoid(list(m(batch).values())[task]) for _ in range(self.cfg.members)])
        m.eval()
        return draws

    def update(self, batch: Batch, rew: RepeatExposureWeight | None = None) -> float:
        """One gradient step per model on ``batch``; ensemble members see Poisson(1)-weighted rows."""
        total = 0.0
        for m, opt in zip(self.models, self.optimizers):
            m.train()
            b = batch
            if self.cfg.method == "ensemble" and self.cfg.bootstrap and len(self.models) > 1:
                w = torch.poisson(torch.ones(len(batch)), generator=self.gen)
                b = replace(batch, weights=w if batch.weights is None else batch.weights * w)
            loss, _ = multitask_bce(m(b), b, [1.0] * batch.labels.shape[1], rew=rew)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += float(loss.detach())
        return total / len(self.models)
