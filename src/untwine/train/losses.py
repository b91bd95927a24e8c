"""Training losses: per-task BCE with masks and weights, plus a pairwise ranking term and repeated-exposure
weights on negatives (SPEC 5, notes 000:374-416).

With ~0.1% positives the BCE gradient on the many easy negatives vanishes; a logistic loss on the score
difference of (positive, negative) pairs keeps pushing positives above negatives. The total per task is

    L_t = BCE_t + lambda * mean over pairs (i+, j-) of w_ij * log(1 + exp(-(z_i - z_j)))

Pairs are drawn inside the batch or inside one group (user / request, the schema's ``group_key``).
``pairs_per_positive = K`` samples K negatives (with replacement) per positive, so the cost is O(B K);
``None`` takes every pair, O(P N): exact, for small batches and for tests.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from untwine.core.batch import Batch


@dataclass(frozen=True)
class RankingLoss:
    weight: float = 0.0  # lambda; 0 turns the term off
    pairs_per_positive: int | None = 16  # None: every (positive, negative) pair
    scope: str = "batch"  # "batch" | "group"


@dataclass(frozen=True)
class RepeatExposureWeight:
    """w(n) >= 1 for a negative that is the n-th earlier exposure of its (user, item) inside the window.

    ``linear``: w(n) = min(cap, 1 + alpha n); ``log``: w(n) = min(cap, 1 + alpha ln(1 + n)). w(0) = 1, so first
    exposures and every positive keep weight 1; only the tasks listed are touched."""

    tasks: tuple[int, ...]
    alpha: float = 0.5
    form: str = "log"
    cap: float = 4.0

    def __call__(self, n: Tensor) -> Tensor:
        n = n.to(torch.float32)
        w = 1 + self.alpha * (n if self.form == "linear" else torch.log1p(n))
        return w.clamp(max=self.cap)


def sample_pairs(labels: Tensor, groups: Tensor | None = None, pairs_per_positive: int | None = 16,
                 generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """(positive index, negative index) pairs with both rows in the same group (the whole batch if None).

    Rows are sorted by (group, label) so each group's negatives are one contiguous run; every positive with
    at least one negative in its group draws K offsets into that run. Positives alone in their group give
    no pair."""
    n = labels.shape[0]
    pos_mask = labels > 0.5
    if groups is None:
        neg = torch.nonzero(~pos_mask).squeeze(1)
        pos = torch.nonzero(pos_mask).squeeze(1)
        if len(neg) == 0 or len(pos) == 0:
            empty = torch.zeros(0, dtype=torch.long, device=labels.device)
            return empty, empty
        if pairs_per_positive is None:
            return pos.repeat_interleave(len(neg)), neg.repeat(len(pos))
        draw = torch.randint(len(neg), (len(pos), pairs_per_positive), generator=generator, device=labels.device)
        return pos.repeat_interleave(pairs_per_positive), neg[draw].reshape(-1)
    _, gid = torch.unique(groups, return_inverse=True)
    # negatives first inside a group: key = 2 * group + is_positive
    order = torch.argsort(gid * 2 + pos_mask.long(), stable=True)
    g_sorted, pos_sorted = gid[order], pos_mask[order]
    n_groups = int(gid.max()) + 1 if n else 0
    group_start = torch.searchsorted(g_sorted, torch.arange(n_groups, device=labels.device))
    neg_count = torch.bincount(gid[~pos_mask], minlength=n_groups)
    pos_rows = torch.nonzero(pos_sorted).squeeze(1)
    pg = g_sorted[pos_rows]
    keep = neg_count[pg] > 0
    pos_rows, pg = pos_rows[keep], pg[keep]
    if len(pos_rows) == 0:
        empty = torch.zeros(0, dtype=torch.long, device=labels.device)
        return empty, empty
    counts = neg_count[pg]
    if pairs_per_positive is None:
        reps = counts
        p_idx = pos_rows.repeat_interleave(reps)
        # offset of each pair inside its positive's negatives: 0..count-1
        first = torch.cumsum(reps, 0) - reps
        offset = torch.arange(int(reps.sum()), device=labels.device) - first.repeat_interleave(reps)
        n_idx = group_start[pg].repeat_interleave(reps) + offset
    else:
        k = pairs_per_positive
        u = torch.rand((len(pos_rows), k), generator=generator, device=labels.device)
        offset = (u * counts[:, None]).long().clamp(max=(counts - 1)[:, None])
        p_idx = pos_rows.repeat_interleave(k)
        n_idx = (group_start[pg][:, None] + offset).reshape(-1)
    return order[p_idx], order[n_idx]


def pairwise_logistic(logits: Tensor, pos: Tensor, neg: Tensor, pair_weights: Tensor | None = None) -> Tensor:
    """Weighted mean of log(1 + exp(-(z_pos - z_neg))) over the pairs; 0 (with a gradient path) when there are none."""
    if len(pos) == 0:
        return logits.sum() * 0.0
    loss = F.softplus(logits[neg] - logits[pos])
    if pair_weights is None:
        return loss.mean()
    return (loss * pair_weights).sum() / pair_weights.sum().clamp_min(1e-12)


def task_row_weights(batch: Batch, t: int, rew: RepeatExposureWeight | None) -> Tensor | None:
    """Per-row weight of task t: sample weight x label mask x w(n) on negatives (for the REW tasks)."""
    w = batch.weights
    if batch.label_mask is not None:
        m = batch.label_mask[:, t]
        w = m if w is None else w * m
    if rew is not None and t in rew.tasks:
        if batch.exposures is None:
            raise ValueError("repeated-exposure weighting needs batch.exposures (train.repeat_exposure set "
                             "but the loader attached no exposure counts)")
        r = torch.where(batch.labels[:, t] > 0.5, torch.ones_like(batch.labels[:, t]), rew(batch.exposures))
        w = r if w is None else w * r
    return w


def multitask_bce(logits: dict[str, Tensor], batch: Batch, task_weights: list[float],
                  ranking: RankingLoss | None = None, rew: RepeatExposureWeight | None = None,
                  generator: torch.Generator | None = None, per_row: bool = False) -> tuple[Tensor, dict[str, Tensor]]:
    """sum_t w_t * (weighted mean BCE_t + lambda * pairwise_t) over the rows each task counts.

    A task's mean is over the rows where its mask is 1 (all rows without a mask), each row scaled by the
    sample weight and, for REW tasks, by w(n) on negatives; a batch where a task has no counted rows
    contributes 0 for that task. Ranking pairs come from counted rows only; a pair weighs w_pos * w_neg.

    ``per_row`` divides each task's weighted BCE sum by the batch size instead of by the task's counted
    weight: every row weighs the same whatever task it belongs to. A stream learner needs this -- a batch
    holding one late conversion among 511 clicks must not move the conversion tower as if it held 512."""
    total = torch.zeros((), dtype=torch.float32, device=batch.labels.device)
    per_task: dict[str, Tensor] = {}
    for t, (name, z) in enumerate(logits.items()):
        y = batch.labels[:, t]
        w = task_row_weights(batch, t, rew)
        if w is None:
            loss = F.binary_cross_entropy_with_logits(z, y)
        else:
            denom = float(len(y)) if per_row else w.sum().clamp_min(1e-12)
            loss = (F.binary_cross_entropy_with_logits(z, y, reduction="none") * w).sum() / denom
        if ranking is not None and ranking.weight > 0:
            rows = torch.nonzero(w > 0).squeeze(1) if w is not None else None
            yy, zz = (y, z) if rows is None else (y[rows], z[rows])
            groups = None
            if ranking.scope == "group":
                if batch.groups is None:
                    raise ValueError("train.ranking_scope=group needs a group_key in the schema")
                groups = batch.groups if rows is None else batch.groups[rows]
            pos, neg = sample_pairs(yy, groups, ranking.pairs_per_positive, generator)
            pw = None
            if w is not None:
                ww = w[rows]
                pw = ww[pos] * ww[neg]
            loss = loss + ranking.weight * pairwise_logistic(zz, pos, neg, pw)
        per_task[name] = loss
        total = total + task_weights[t] * loss
    return total, per_task


# ---------------------------------------------------------------- retrieval losses
def sampled_softmax(user: Tensor, item: Tensor, log_q: Tensor | None = None, temperature: float = 1.0,
                    extra_items: Tensor | None = None, extra_log_q: Tensor | None = None,
                    same_item: Tensor | None = None) -> Tensor:
    """In-batch sampled softmax for two-tower retrieval (Yi et al., RecSys 2019).

    Row i's positive is ``item[i]``; the other rows' items (and optional ``extra_items``, e.g. uniform
    random negatives) are its negatives. Logits are <u_i, v_j> / temperature - log q_j: subtracting the
    log sampling probability of each candidate (log-Q correction) removes the bias towards penalising
    popular items, which appear as in-batch negatives in proportion to their frequency. ``same_item``
    (B,) ids mask in-batch "negatives" that are the row's own positive item. Returns the mean cross-entropy."""
    logits = user @ item.T / temperature
    if log_q is not None:
        logits = logits - log_q[None, :]
    if same_item is not None:
        dup = (same_item[:, None] == same_item[None, :]) & ~torch.eye(len(same_item), dtype=torch.bool,
                                                                        device=user.device)
        logits = logits.masked_fill(dup, float("-inf"))
    if extra_items is not None:
        extra = user @ extra_items.T / temperature
        if extra_log_q is not None:
            extra = extra - extra_log_q[None, :]
        logits = torch.cat([logits, extra], dim=1)
    return F.cross_entropy(logits, torch.arange(len(user), device=user.device))


def bpr(pos_scores: Tensor, neg_scores: Tensor) -> Tensor:
    """Bayesian personalised ranking (Rendle et al., UAI 2009): mean of -log sigmoid(s_pos - s_neg);
    ``neg_scores`` (B,) or (B, K) negatives per positive."""
    diff = pos_scores.unsqueeze(-1) - neg_scores if neg_scores.dim() == 2 else pos_scores - neg_scores
    return F.softplus(-diff).mean()
