"""Interest-entanglement analysis (SPEC 4 and 6, notes 000:449-468).

Two single-task models A and B and one multi-task model are trained on the same data. For the
(user, item) pairs of a split, each model gives the distance between the user's and the item's
embedding (1 - cosine, z-scored per model so models of different scales compare). The pairs where A
and B disagree most (close for A, far for B, and the reverse) show what the shared model does with
conflicting tasks: if its distances pile up between A's and B's (the notes' grey curve between the red
and the blue), one embedding is serving both tasks, i.e. the tasks are entangled; a model whose
distances follow one task or the other keeps them apart. Gate weights per task show how a gated model
shares its experts.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterable

import numpy as np
import torch

from untwine.analysis.collapse import embedding_tables, pyplot, save_figure
from untwine.core.batch import Batch
from untwine.core.features import FeatureSpace
from untwine.core.schema import FieldGroup


def pair_features(space: FeatureSpace, user: str | None = None, item: str | None = None) -> tuple[str, str]:
    """The user and item id features: given, else the group key (or first user-group categorical) and the
    first item-group categorical."""
    cats = space.schema.categorical
    names = [f.name for f in cats]
    if user is None:
        key = space.schema.group_key
        user = key if key in names else next((f.name for f in cats if f.group is FieldGroup.USER), None)
    if item is None:
        item = next((f.name for f in cats if f.group is FieldGroup.ITEM), None)
    for role, name in (("user", user), ("item", item)):
        if name not in names:
            raise ValueError(f"no categorical {role} feature {name!r} (pass --{role}); categorical: {names}")
    return user, item


@torch.no_grad()
def pair_distances(model: torch.nn.Module, space: FeatureSpace, batches: Iterable[Batch], user: str, item: str,
                   max_rows: int = 50_000, table: int = 0) -> np.ndarray:
    """1 - cos(e_user, e_item) for the rows of ``batches`` in the model's ``table``-th embedding table."""
    fe = embedding_tables(model)[table][1]
    cols = [f.name for f in space.schema.categorical]
    ju, ji = cols.index(user), cols.index(item)
    w = fe.table.weight
    out, seen = [], 0
    for batch in batches:
        cat = batch.categorical
        eu, ei = w[cat[:, ju] + fe.offsets[user]], w[cat[:, ji] + fe.offsets[item]]
        cos = (eu * ei).sum(1) / (eu.norm(dim=1) * ei.norm(dim=1)).clamp_min(1e-12)
        out.append((1 - cos).double().numpy())
        seen += len(batch)
        if seen >= max_rows:
            break
    return np.concatenate(out)[:max_rows] if out else np.zeros(0)


def zscore(x: np.ndarray) -> np.ndarray:
    sd = x.std()
    return (x - x.mean()) / sd if sd > 0 else x - x.mean()


def entanglement_report(dist_a: np.ndarray, dist_b: np.ndarray, dist_mt: dict[str, np.ndarray],
                        fraction: float = 0.1) -> dict:
    """The ``fraction`` of pairs where z-scored A and B disagree most; per multi-task view, how its
    z-distances sit relative to A's and B's there: ``between`` = share of pairs strictly between them,
    ``pull_to_middle`` = 1 - mean |z_mt - mid| / mean half-gap (1: always at the midpoint, 0: as far from it
    as A and B are, negative: farther), and the correlation with A's and with B's distances."""
    za, zb = zscore(dist_a), zscore(dist_b)
    gap = za - zb
    k = max(1, int(round(fraction * len(gap))))
    picked = np.argsort(-np.abs(gap))[:k]
    lo, hi = np.minimum(za, zb)[picked], np.maximum(za, zb)[picked]
    mid, half = (lo + hi) / 2, (hi - lo) / 2
    report = {"pairs": int(len(gap)), "selected": int(k), "fraction": fraction,
              "a_closer_in_selected": float((za[picked] < zb[picked]).mean()),
              "mean_abs_gap_selected": float(np.abs(gap[picked]).mean()), "views": {}}
    for name, d in dist_mt.items():
        z = zscore(d)[picked]
        report["views"][name] = {
            "between": float(((z > lo) & (z < hi)).mean()),
            "pull_to_middle": float(1 - np.abs(z - mid).mean() / max(half.mean(), 1e-12)),
            "corr_with_a": float(np.corrcoef(z, za[picked])[0, 1]) if k > 1 else float("nan"),
            "corr_with_b": float(np.corrcoef(z, zb[picked])[0, 1]) if k > 1 else float("nan")}
    report["picked"] = picked
    return report


def plot_distances(za: np.ndarray, zb: np.ndarray, views: dict[str, np.ndarray], labels: tuple[str, str],
                   path: str | Path, title: str = "") -> None:
    """The notes' red / blue / grey curves: distance distributions of the selected pairs (PNG)."""
    plt = pyplot()


    fig, ax = plt.subplots(figsize=(6.4, 3.8))
    lo = min(za.min(), zb.min(), *(v.min() for v in views.values()))
    hi = max(za.max(), zb.max(), *(v.max() for v in views.values()))
    bins = np.linspace(lo, hi, 50)
    ax.hist(za, bins=bins, density=True, histtype="step", linewidth=2, color="tab:red", label=f"single-task {labels[0]}")
    ax.hist(zb, bins=bins, density=True, histtype="step", linewidth=2, color="tab:blue", label=f"single-task {labels[1]}")
    greys = [f"{g:.2f}" for g in np.linspace(0.3, 0.8, max(len(views), 1))]  # one shade per view, however many
    for (name, z), colour in zip(views.items(), greys):
        ax.hist(z, bins=bins, density=True, histtype="stepfilled", alpha=0.45, color=colour, label=name)
    ax.set_xlabel("user-item embedding distance, z-scored per model (selected pairs)")
    ax.set_ylabel("density")
    ax.legend(fontsize=7)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    save_figure(fig, path)


def plot_gates(weights: np.ndarray, tasks: list[str], path: str | Path, title: str = "") -> None:
    """Distribution of each expert's gate weight, per task: (N, T, E) weights -> box plots (PNG)."""
    plt = pyplot()


    n, t, e = weights.shape
    fig, axes = plt.subplots(1, t, figsize=(max(3.2, 0.6 * e + 1.5) * t, 3.4), squeeze=False, sharey=True)
    for k, ax in enumerate(axes[0]):
        ax.boxplot([w[~np.isnan(w)] for w in (weights[:, k, j] for j in range(e))], showfliers=False)
        ax.set_xticks(range(1, e + 1), [str(j) for j in range(e)])
        ax.set_xlabel("expert")
        ax.set_title(f"gate of {tasks[k]}", fontsize=9)
    axes[0][0].set_ylabel("gate weight")
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    save_figure(fig, path)


@torch.no_grad()
def gate_sample(model: torch.nn.Module, batches: Iterable[Batch], max_rows: int = 20_000) -> np.ndarray | None:
    """(N, T, E) gate weights of a gated model over ``batches`` (None when it has no ``gate_weights``;
    tasks with different expert counts are padded with NaN)."""
    if not hasattr(model, "gate_weights"):
        return None
    parts, seen = [], 0
    for batch in batches:
        w = model.gate_weights(batch)
        if w is None:
            return None
        if isinstance(w, list):
            e = max(x.shape[1] for x in w)
            w = torch.stack([torch.nn.functional.pad(x, (0, e - x.shape[1]), value=float("nan")) for x in w], 1)
        parts.append(w.double().numpy())
        seen += len(batch)
        if seen >= max_rows:
            break
    return np.concatenate(parts)[:max_rows] if parts else None
