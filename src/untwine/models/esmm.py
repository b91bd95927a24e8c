"""ESMM: pCTCVR = pCTR x pCVR over all impressions (Ma et al., SIGIR 2018)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from untwine.core.batch import Batch
from untwine.core.features import FeatureSpace
from untwine.models.base import MODELS, RankingModel
from untwine.models.multitask import MultiTaskConfig
from untwine.nn.experts import TaskTowers


def product_logit(a: Tensor, b: Tensor) -> Tensor:
    """logit(sigmoid(a) * sigmoid(b)), computed in log space: log p = logsigmoid(a) + logsigmoid(b) and
    logit = log p - log(1 - p), with log(1 - p) = log(-expm1(log p)) near p = 1 and log1p(-p) elsewhere."""
    log_p = (F.logsigmoid(a) + F.logsigmoid(b)).clamp(max=-1e-7)
    log_1mp = torch.where(log_p > -0.6931, torch.log(-torch.expm1(log_p)), torch.log1p(-torch.exp(log_p)))
    return log_p - log_1mp


@MODELS.register("esmm", config=MultiTaskConfig,
                 paper="Ma et al., Entire Space Multi-Task Model, SIGIR 2018",
                 inputs="categorical, multi-valued, sequence, numeric, vector")
class ESMM(RankingModel):
    """The first task is the click; every other task's label is click AND conversion over all impressions
    (CTCVR). A CTR tower and one CVR tower per conversion task read the shared embeddings; the model
    outputs logit(pCTR) and logit(pCTR x pCVR_k), so the CVR towers learn only through the product over the
    entire space and are never fitted to clicked impressions alone (no sample selection bias) nor given
    unclicked impressions as CVR negatives. ``cvr(batch)`` gives the pCVR probabilities. With one task
    it is the CTR tower alone. ``expert_hidden`` is unused."""

    def __init__(self, space: FeatureSpace, config: MultiTaskConfig) -> None:
        super().__init__(space, config)
        masked = [lab.name for lab in space.schema.labels[1:] if lab.mask_column]
        if masked:
            raise ValueError(f"esmm trains {masked} over all impressions as click AND conversion (CTCVR); drop "
                             f"their mask_column (a CVR task masked to clicks is what ESMM replaces)")
        self.embedding = self.field_embedding()
        self.towers = TaskTowers(self.embedding.output_dim, config.hidden, len(self.tasks), **config.mlp_options())

    def _logits(self, batch: Batch) -> Tensor:  # (B, T): the CTR logit, then each CVR logit
        return self.towers(self.embedding.flat(batch).unsqueeze(1))

    def cvr(self, batch: Batch) -> dict[str, Tensor]:
        """pCVR = P(conversion | click) per conversion task, (B,) probabilities."""
        z = self._logits(batch)
        return {t: torch.sigmoid(z[:, k]) for k, t in enumerate(self.tasks) if k > 0}

    def forward(self, batch: Batch) -> dict[str, Tensor]:
        z = self._logits(batch)
        ctr = z[:, :1]
        return self.as_tasks(torch.cat([ctr, product_logit(ctr, z[:, 1:])], dim=1))
