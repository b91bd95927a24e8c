"""Dimensional-collapse analysis: singular spectra and information abundance of embedding tables.

For a field's embedding matrix E (the rows of the values seen in training, n x d) with singular values
s_1 >= ... >= s_d, the information abundance IA = sum_i s_i / s_1 is 1 when every row lies on one line
(collapsed) and d when the spectrum is flat (SPEC 3, notes 000:435-448). ``frequency_weighted`` scales
row i by sqrt(count_i / total) first, so the spectrum is that of the embeddings as batches see them
(frequent values dominate) rather than of the vocabulary.

:func:`collapse_report` works on any model: it finds every :class:`untwine.nn.FieldEmbedding` in it
(a single table, or each table of a multi-embedding model) and reports every vocabulary-owning feature
of each. :func:`pair_spectra` measures the per-field-pair interaction inputs v_i * v_j (the vectors FM,
IPNN and GwPFM take inner products of) on rows of data.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterable

import numpy as np
import torch
from torch import nn

from untwine.core.batch import Batch
from untwine.core.features import FeatureSpace
from untwine.data.vocab import NUM_RESERVED, Vocab
from untwine.nn.embedding import FieldEmbedding


def singular_spectrum(matrix: torch.Tensor | np.ndarray) -> np.ndarray:
    """Singular values of an (n, d) matrix in float64, descending (min(n, d) of them)."""
    m = torch.as_tensor(np.asarray(matrix, dtype=np.float64))
    if m.numel() == 0:
        return np.zeros(0)
    return torch.linalg.svdvals(m).numpy()


def information_abundance(singular_values: np.ndarray) -> float:
    """IA = sum_i s_i / max_i s_i (0 for an all-zero matrix)."""
    s = np.asarray(singular_values, dtype=np.float64)
    top = s.max(initial=0.0)
    return float(s.sum() / top) if top > 0 else 0.0


def embedding_tables(model: nn.Module) -> list[tuple[str, FieldEmbedding]]:
    """Every embedding table of a model, by module path (first-order weight tables excluded)."""
    return [(name or "embedding", m) for name, m in model.named_modules()
            if isinstance(m, FieldEmbedding) and not m.linear]


def field_rows(table: FieldEmbedding, space: FeatureSpace, feature: str,
               counts: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """The rows of ``feature``'s vocabulary (PAD and OOV excluded) and their training counts (or None)."""
    n = space.vocab_size(feature)
    start = table.offsets[feature]
    rows = table.table.weight.detach()[start + NUM_RESERVED:start + n].double().numpy()
    if counts is not None and len(counts) == len(rows):
        seen = counts > 0
        return rows[seen], counts[seen].astype(np.float64)
    return rows, None


def load_counts(vocab_dir: str | Path | None, space: FeatureSpace) -> dict[str, np.ndarray]:
    """Training counts per vocabulary-owning feature from a run's ``vocab/`` (hashed vocabularies have none)."""
    if vocab_dir is None:
        return {}
    out = {}
    for f in space.sparse_features():
        stem = Path(vocab_dir) / f.name
        if f.vocab_from is None and (Path(vocab_dir) / f"{f.name}.json").exists():
            v = Vocab.load(stem)
            if v.hash_buckets is None:
                out[f.name] = np.asarray(v.counts)
    return out


def spectrum_record(rows: np.ndarray, weights: np.ndarray | None, frequency_weighted: bool) -> dict:
    m = rows
    if frequency_weighted and weights is not None:
        m = rows * np.sqrt(weights / weights.sum())[:, None]
    s = singular_spectrum(m)
    return {"rows": int(len(rows)), "dim": int(rows.shape[1]), "singular_values": [float(x) for x in s],
            "ia": information_abundance(s), "weighted": bool(frequency_weighted and weights is not None)}


def collapse_report(model: nn.Module, space: FeatureSpace, vocab_dir: str | Path | None = None,
                    frequency_weighted: bool = False, alarm: float | None = None) -> dict:
    """Per table and per vocabulary-owning feature: singular spectrum and IA; the mean IA per table and
    overall; with ``alarm``, the (table, feature) pairs whose IA is below it."""
    counts = load_counts(vocab_dir, space)
    owners = [f.name for f in space.sparse_features() if f.vocab_from is None]
    tables = []
    for path, table in embedding_tables(model):
        fields = {}
        for name in owners:
            rows, weights = field_rows(table, space, name, counts.get(name))
            if len(rows) >= 2:  # a single row has one singular value: IA 1 says nothing
                fields[name] = spectrum_record(rows, weights, frequency_weighted)
        ias = [r["ia"] for r in fields.values()]
        tables.append({"path": path, "dim": table.dim, "fields": fields,
                       "mean_ia": float(np.mean(ias)) if ias else float("nan"),
                       "mean_normalised_ia": float(np.mean([r["ia"] / r["dim"] for r in fields.values()]))
                       if fields else float("nan")})
    all_ias = [r["ia"] for t in tables for r in t["fields"].values()]
    report = {"tables": tables, "mean_ia": float(np.mean(all_ias)) if all_ias else float("nan"),
              "frequency_weighted": frequency_weighted}
    found = embedding_tables(model)
    if len(found) > 1:  # a field's K tables side by side: comparable with one table of the summed width
        combined = {}
        for name in owners:
            parts = [field_rows(table, space, name, counts.get(name)) for _, table in found]
            if len(parts[0][0]) >= 2:
                combined[name] = spectrum_record(np.concatenate([rows for rows, _ in parts], axis=1), parts[0][1],
                                                 frequency_weighted)
        report["combined"] = {"dim": int(sum(t.dim for _, t in found)), "fields": combined,
                              "mean_ia": float(np.mean([r["ia"] for r in combined.values()])) if combined
                              else float("nan")}
    if alarm is not None:  # a feature whose ceiling min(n, d) is below the threshold cannot reach it: not an alarm
        report["alarm"] = alarm
        report["collapsed"] = [{"table": t["path"], "feature": name, "ia": r["ia"], "ceiling": min(r["rows"], r["dim"])}
                               for t in tables for name, r in t["fields"].items()
                               if r["ia"] < alarm <= min(r["rows"], r["dim"])]
    return report


@torch.no_grad()
def pair_spectra(model: nn.Module, batches: Iterable[Batch], max_rows: int = 20_000) -> list[dict]:
    """For each table, the IA of v_i * v_j over ``max_rows`` rows of data for every field pair i < j:
    {path, fields, ia (F x F, upper triangle filled, NaN elsewhere)}."""
    tables = embedding_tables(model)
    chunks: list[list[torch.Tensor]] = [[] for _ in tables]
    seen = 0
    for batch in batches:
        for k, (_, table) in enumerate(tables):
            chunks[k].append(table(batch)[0].double())
        seen += len(batch)
        if seen >= max_rows:
            break
    out = []
    for (path, table), parts in zip(tables, chunks):
        fields = torch.cat(parts)[:max_rows] if parts else torch.zeros(0, table.num_fields, table.dim)
        f = fields.shape[1]
        ia = np.full((f, f), np.nan)
        for i in range(f):
            for j in range(i + 1, f):
                ia[i, j] = information_abundance(singular_spectrum(fields[:, i] * fields[:, j]))
        out.append({"path": path, "dim": table.dim, "fields": table.field_names(), "rows": int(fields.shape[0]),
                    "ia": [[None if np.isnan(x) else float(x) for x in row] for row in ia]})
    return out


def plot_spectra(report: dict, path: str | Path, title: str = "") -> None:
    """Normalised singular spectra s_i / s_1 per feature, one panel per table (PNG)."""
    plt = pyplot()

    tables = [t for t in report["tables"] if t["fields"]]
    fig, axes = plt.subplots(1, max(len(tables), 1), figsize=(4.2 * max(len(tables), 1), 3.6), squeeze=False)
    for ax, t in zip(axes[0], tables):
        for name, r in t["fields"].items():
            s = np.asarray(r["singular_values"])
            ax.plot(np.arange(1, len(s) + 1), s / s[0] if s[0] > 0 else s, marker=".", label=f"{name} ({r['ia']:.1f})")
        ax.set_yscale("log")
        ax.set_xlabel("singular value index")
        ax.set_ylabel("s_i / s_1")
        ax.set_title(f"{t['path']} (d={t['dim']}, mean IA {t['mean_ia']:.2f})", fontsize=9)
        ax.legend(fontsize=6, title="feature (IA)", title_fontsize=6)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    save_figure(fig, path)


def plot_ia(reports: dict[str, dict], path: str | Path, title: str = "") -> None:
    """IA per feature (mean over a model's tables), one bar per model, with each table's width as the
    ceiling IA can reach (PNG)."""
    plt = pyplot()

    features = list(dict.fromkeys(n for r in reports.values() for t in r["tables"] for n in t["fields"]))
    fig, ax = plt.subplots(figsize=(max(6.0, 0.9 * len(features) * max(len(reports), 1) / 3 + 3), 3.8))
    width = 0.8 / max(len(reports), 1)
    x = np.arange(len(features))
    for k, (label, r) in enumerate(reports.items()):
        ia = [np.mean([t["fields"][f]["ia"] for t in r["tables"] if f in t["fields"]] or [np.nan]) for f in features]
        ax.bar(x + k * width, ia, width, label=label)
    ax.set_xticks(x + width * (len(reports) - 1) / 2, features, rotation=45, ha="right", fontsize=7)
    ax.set_ylabel("information abundance (mean over tables)")
    ax.legend(fontsize=7)
    if title:
        ax.set_title(title, fontsize=10)
    fig.tight_layout()
    save_figure(fig, path)


def plot_pair_ia(pairs: dict, path: str | Path, title: str = "") -> None:
    """Heatmap of the IA of v_i * v_j per field pair (one table of :func:`pair_spectra`) (PNG)."""
    plt = pyplot()

    ia = np.array([[np.nan if x is None else x for x in row] for row in pairs["ia"]], dtype=float)
    n = len(pairs["fields"])
    fig, ax = plt.subplots(figsize=(1.0 + 0.35 * n + 1.5, 1.0 + 0.35 * n))
    im = ax.imshow(ia, cmap="viridis", vmin=1, vmax=pairs["dim"])
    ax.set_xticks(range(n), pairs["fields"], rotation=90, fontsize=6)
    ax.set_yticks(range(n), pairs["fields"], fontsize=6)
    fig.colorbar(im, ax=ax, label=f"IA of v_i * v_j (max {pairs['dim']})")
    ax.set_title(title or f"{pairs['path']}: field-pair interaction inputs ({pairs['rows']} rows)", fontsize=8)
    fig.tight_layout()
    save_figure(fig, path)


def pyplot():
    """matplotlib.pyplot on the file-only Agg backend (imported when a plot is drawn, not at start-up)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: str | Path) -> None:
    """Write a figure as PNG atomically and close it."""
    from untwine.core.io import atomic_path

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    pyplot().close(fig)
