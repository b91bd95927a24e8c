"""Plots that show why an encoder helps or not, from the runs of benchmarks/encoders.py.

    python benchmarks/encoder_plots.py attention [--run runs/bench/encoders/sequence/p5_tin_s1]
    python benchmarks/encoder_plots.py mnse [--run runs/bench/encoders/numeric/p4_mnse_s1]
    python benchmarks/encoder_plots.py similarity [--dataset p2v]

attention: TIM's attention weight per time-gap bucket (P5) or recency position (P6) on the test split,
relative to uniform attention (alpha_i * n: 1 = average), for behaviours of the target's category and the
others. Writes benchmarks/results/encoders/tim_attention_<protocol>_<variant>.{png,json}.

mnse: the learned MNSE encodings of every value 0..M of each numeric field projected on their first two
principal components, coloured by value (large dots: the values the training split maps to), plus the
Spearman correlation between |a - b| and the distance of the encodings over the values seen in training
(positive: nearby values sit closer, the order is learned). Writes
benchmarks/results/encoders/mnse_vectors_<protocol>.{png,json}.

similarity: per vector pair of a dataset (default p2v), the cosine's distribution by label on the test
split and its AUC as a lone score. Writes benchmarks/results/encoders/similarity_<dataset>.{png,json}.

history_similarity: per vector table of a dataset with sequences (default p5v), the mean and the max of the
target-vs-history cosines of each sample as lone scores (AUC, and GAUC within users) and the label rate by
decile of the mean. Writes benchmarks/results/encoders/history_similarity_<dataset>.{png,json}.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, write_json  # noqa: E402

from untwine.core.features import FeatureSpace  # noqa: E402
from untwine.data.encode import encode_with_vocab  # noqa: E402
from untwine.data.loader import BatchLoader, SplitArrays  # noqa: E402
from untwine.models.base import build_model  # noqa: E402
from untwine.nn.numeric import MNSE  # noqa: E402
from untwine.train.config import ExperimentConfig  # noqa: E402
from untwine.train.run import load_run, resolve_dataset, select_tasks  # noqa: E402

OUT = RESULTS / "encoders"


def attention(run_dir: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cfg, space, model = load_run(run_dir)
    spec = select_tasks(resolve_dataset(cfg.dataset, cfg.base_dir), cfg.tasks)
    prepared = encode_with_vocab(spec, space, run_dir / "vocab", "test")
    seq = space.schema.sequences[0]
    field = next(s for s in model.embedding.sequences if s.name == seq.name)
    side = next(iter(seq.side_fields), None)
    cat_col = space.schema.categorical.index(space.schema.feature(seq.side_fields[side])) if side else None
    n_pos = field.encoder.time.num_embeddings
    sums = {k: np.zeros(n_pos) for k in ("same", "other")}
    counts = {k: np.zeros(n_pos) for k in ("same", "other")}
    loader = BatchLoader(SplitArrays.open(prepared, "test"), space.schema, 4096, shuffle=False)
    with torch.inference_mode():
        for batch in loader:
            alpha, pos, mask = model.embedding.sequence_attention(batch, seq.name)
            rel = alpha * mask.sum(1, keepdim=True)  # 1 = the weight of uniform attention
            same = (batch.seq[f"{seq.name}.{side}"] == batch.categorical[:, cat_col].unsqueeze(1)) if side \
                else torch.ones_like(mask)
            for key, sel in (("same", mask & same), ("other", mask & ~same)):
                sums[key] += np.bincount(pos[sel].numpy(), weights=rel[sel].numpy(), minlength=n_pos)
                counts[key] += np.bincount(pos[sel].numpy(), minlength=n_pos)
    timed = bool(seq.timestamps)
    if timed:
        enc = field.boundaries.numpy()
        labels = ["0"] + [_human(enc[k]) for k in range(1, len(enc))] + [f">{_human(enc[-1])}"]
    else:
        labels = [str(k) for k in range(n_pos)]
    keep = [k for k in range(n_pos) if counts["same"][k] + counts["other"][k] >= 50]
    fig, ax = plt.subplots(figsize=(9, 4.2))
    for key, colour in (("same", "tab:red"), ("other", "tab:blue")):
        ks = [k for k in keep if counts[key][k] >= 20]
        ax.plot(ks, [sums[key][k] / counts[key][k] for k in ks], "o-", color=colour,
                label=(f"behaviour with the target's {seq.side_fields[side]}" if key == "same"
                       else f"behaviour with another {seq.side_fields[side]}") if side else "all")
    ax.axhline(1.0, color="grey", lw=0.8, ls="--")
    ax.set_xticks(keep[::max(1, len(keep) // 14)])
    ax.set_xticklabels([labels[k] for k in keep[::max(1, len(keep) // 14)]], rotation=45, ha="right")
    ax.set_xlabel("time gap t_target - t_i (bucket upper edge)" if timed else "recency position (1 = most recent)")
    ax.set_ylabel("attention x history length (1 = uniform)")
    ax.set_title(f"TIM attention on {spec.name} test split ({run_dir.name})")
    ax.legend()
    fig.tight_layout()
    name = run_dir.name.rsplit("_s", 1)[0]  # e.g. p5_tin
    OUT.mkdir(parents=True, exist_ok=True)
    fig.savefig(OUT / f"tim_attention_{name}.png", dpi=120)
    write_json(OUT / f"tim_attention_{name}.json", {
        "run": str(run_dir), "positions": labels, "timestamps": timed,
        **{f"mean_relative_attention_{k}": [float(sums[k][i] / counts[k][i]) if counts[k][i] else None
                                             for i in range(n_pos)] for k in sums},
        **{f"count_{k}": counts[k].astype(int).tolist() for k in counts}})
    print(f"wrote {OUT / f'tim_attention_{name}.png'}")


def _human(seconds: float) -> str:
    for unit, s in (("y", 365 * 86400), ("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= s:
            return f"{seconds / s:.3g}{unit}"
    return f"{seconds:.0f}s"


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    ra, rb = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    return float(np.corrcoef(ra, rb)[0, 1])


def mnse(run_dir: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cfg, space, model = load_run(run_dir)
    spec = select_tasks(resolve_dataset(cfg.dataset, cfg.base_dir), cfg.tasks)
    raw = torch.from_numpy(np.array(SplitArrays.open(encode_with_vocab(spec, space, run_dir / "vocab", "train"),
                                                     "train").arrays["numeric_raw"]))
    fields = [f.name for f in space.schema.numeric]
    numeric = model.embedding.numeric
    panels, report = [], {}
    for g, group in enumerate(numeric.groups if numeric is not None else []):
        mods = [m for m in group.modules() if isinstance(m, MNSE)]
        if not mods:
            continue
        cols = getattr(numeric, f"cols_{g}").tolist()
        codes, missing = group.to_integer(raw[:, cols])
        for j, col in enumerate(cols):
            seen = np.unique(codes[:, j][~missing[:, j]].numpy())  # codes training ever produced
            torch.manual_seed(0)  # the same digits at initialisation: how much order is the prior alone
            fresh = MNSE(1, mods[0].max_value, mods[0].dim, mods[0].bases, mods[0].combine, init_std=1e-4)
            panels.append((fields[col], mods[0].value_table(j).detach().numpy(), seen,
                           fresh.value_table(0).detach().numpy()))
    if not panels:
        raise SystemExit(f"{run_dir}: the model has no MNSE-encoded numeric field")
    rng = np.random.default_rng(0)
    cols = min(4, len(panels))
    rows = (len(panels) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 3.3 * rows), squeeze=False)
    for ax, (name, table, seen, init) in zip(axes.flat, panels):
        centred = table - table.mean(0)
        _, _, vt = np.linalg.svd(centred, full_matrices=False)
        xy = centred @ vt[:2].T
        values = np.arange(len(table))
        ax.scatter(xy[:, 0], xy[:, 1], c=values, cmap="viridis", s=3, alpha=0.25)
        sc = ax.scatter(xy[seen, 0], xy[seen, 1], c=seen, cmap="viridis", s=22, edgecolors="k", linewidths=0.3,
                        vmin=0, vmax=len(table) - 1)
        i, j = rng.integers(0, len(table), 4000), rng.integers(0, len(table), 4000)
        rho = _spearman(np.abs(i - j), np.linalg.norm(table[i] - table[j], axis=1))
        rho_seen = rho_init = float("nan")
        if len(seen) >= 3:
            a, b = np.triu_indices(len(seen), 1)
            gap = np.abs(seen[a] - seen[b])
            rho_seen = _spearman(gap, np.linalg.norm(table[seen[a]] - table[seen[b]], axis=1))
            rho_init = _spearman(gap, np.linalg.norm(init[seen[a]] - init[seen[b]], axis=1))
        report[name] = {"spearman_gap_vs_distance_all_values": rho, "spearman_gap_vs_distance_seen_values": rho_seen,
                        "spearman_seen_values_at_initialisation": rho_init,
                        "distinct_values_seen_in_train": int(len(seen))}
        ax.set_title(f"{name}: {len(seen)} values seen\nSpearman {rho_seen:+.2f} trained, {rho_init:+.2f} at init",
                     fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
        fig.colorbar(sc, ax=ax, fraction=0.046)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    fig.suptitle(f"MNSE encodings of values 0..M on their first two principal components ({run_dir.name}); "
                 "large dots: values the training split produced", fontsize=10)
    fig.tight_layout()
    name = run_dir.name.split("_")[0]
    OUT.mkdir(parents=True, exist_ok=True)
    fig.savefig(OUT / f"mnse_vectors_{name}.png", dpi=120)
    write_json(OUT / f"mnse_vectors_{name}.json", {"run": str(run_dir), "fields": report})
    print(f"wrote {OUT / f'mnse_vectors_{name}.png'}")


def similarity(dataset: str) -> None:
    """Distribution of each vector pair's cosine by label on the test split, and its AUC as a lone score."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from untwine.data.encode import prepare
    from untwine.metrics.classification import auc

    spec = resolve_dataset(dataset)
    prepared = prepare(spec)
    pairs = [(f.name, f.pair) for f in spec.schema.vectors if f.pair]
    fig, axes = plt.subplots(1, len(pairs), figsize=(5.2 * len(pairs), 3.8), squeeze=False)
    report = {}
    for ax, (a, b) in zip(axes[0], pairs):
        report[f"{a}~{b}"] = {}
        for split in ("train", "test"):
            arr = SplitArrays.open(prepared, split).arrays
            u, v = np.asarray(arr[f"vec.{a}"]), np.asarray(arr[f"vec.{b}"])
            nu, nv = np.linalg.norm(u, axis=1), np.linalg.norm(v, axis=1)
            ok = (nu > 0) & (nv > 0)
            cos = (u * v).sum(1)[ok] / (nu * nv)[ok]
            y = np.asarray(arr["labels"])[ok, 0]
            report[f"{a}~{b}"][split] = {"auc_of_cosine_alone": float(auc(cos, y)), "missing_rate": float(1 - ok.mean()),
                                         "cosine_quantiles_1_50_99": [float(q) for q in np.quantile(cos, [.01, .5, .99])]}
            if split == "test":
                for lab, colour in ((1, "tab:red"), (0, "tab:blue")):
                    ax.hist(cos[y == lab], bins=60, density=True, alpha=0.5, color=colour, label=f"label {lab}")
                ax.set_title(f"cos({a}, {b}), test: AUC alone {report[f'{a}~{b}'][split]['auc_of_cosine_alone']:.3f}",
                             fontsize=9)
                ax.set_xlabel("cosine similarity (MNSE code = round((s + 1) / 2 * M))")
                ax.legend()
    fig.tight_layout()
    OUT.mkdir(parents=True, exist_ok=True)
    fig.savefig(OUT / f"similarity_{spec.name}.png", dpi=120)
    write_json(OUT / f"similarity_{spec.name}.json", report)
    print(json.dumps(report, indent=1))


def history_similarity(dataset: str) -> None:
    """How much the target-vs-history cosines alone say about the label (test split)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from untwine.data.encode import prepare
    from untwine.metrics.classification import auc, gauc

    spec = resolve_dataset(dataset)
    prepared = prepare(spec)
    seq = spec.schema.sequences[0]
    owner = spec.schema.vocab_owner(seq)
    target_col = [f.name for f in spec.schema.categorical].index(seq.vocab_from)
    arr = SplitArrays.open(prepared, "test").arrays
    ids, target = np.asarray(arr[f"seq.{seq.name}"]), np.asarray(arr["categorical"])[:, target_col]
    y, users = np.asarray(arr["labels"])[:, 0], np.asarray(arr["groups"])
    tables = spec.schema.tables_for(owner)
    fig, axes = plt.subplots(1, len(tables), figsize=(5.2 * len(tables), 3.8), squeeze=False)
    report = {}
    for ax, t in zip(axes[0], tables):
        table = prepared.vector_table(t.name)
        table = table / np.maximum(np.linalg.norm(table, axis=1, keepdims=True), 1e-12)
        has = np.abs(table).sum(1) > 0
        valid = (ids > 0) & has[ids] & has[target][:, None]
        cos = np.einsum("bd,bld->bl", table[target], table[ids])
        n = valid.sum(1)
        ok = n > 0
        mean = np.where(ok, (cos * valid).sum(1) / np.maximum(n, 1), 0.0)
        top = np.where(valid, cos, -2).max(1)
        r = {"samples_with_a_defined_cosine": float(ok.mean()),
             "auc_of_mean_alone": float(auc(mean[ok], y[ok])), "auc_of_max_alone": float(auc(top[ok], y[ok])),
             "gauc_of_mean_alone": float(gauc(mean[ok], y[ok], users[ok]).value),
             "gauc_of_max_alone": float(gauc(top[ok], y[ok], users[ok]).value)}
        edges = np.quantile(mean[ok], np.linspace(0, 1, 11))
        dec = np.clip(np.searchsorted(edges, mean[ok], side="right") - 1, 0, 9)
        rate = [float(y[ok][dec == k].mean()) for k in range(10)]
        r["label_rate_by_decile_of_mean"] = rate
        report[t.name] = r
        ax.plot(range(1, 11), rate, marker="o")
        ax.axhline(float(y[ok].mean()), color="grey", linestyle="--", label="overall rate")
        ax.set_xlabel(f"decile of the mean cos(target, history item), table {t.name}")
        ax.set_ylabel("label rate (test)")
        ax.set_title(f"{t.name}: AUC alone {r['auc_of_mean_alone']:.3f}, GAUC alone {r['gauc_of_mean_alone']:.3f}",
                     fontsize=9)
        ax.legend(fontsize=7)
    fig.tight_layout()
    OUT.mkdir(parents=True, exist_ok=True)
    fig.savefig(OUT / f"history_similarity_{spec.name}.png", dpi=120)
    write_json(OUT / f"history_similarity_{spec.name}.json", report)
    print(json.dumps(report, indent=1))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("plot", choices=["attention", "mnse", "similarity", "history_similarity"])
    ap.add_argument("--dataset", default="p2v", help="similarity: a dataset with paired vector features")
    ap.add_argument("--run", type=Path)
    a = ap.parse_args()
    default = {"attention": "runs/bench/encoders/sequence/p5_tin_s1", "mnse": "runs/bench/encoders/numeric/p4_mnse_s1"}
    if a.plot == "similarity":
        similarity(a.dataset)
        return
    if a.plot == "history_similarity":
        history_similarity(a.dataset if a.dataset != "p2v" else "p5v")
        return
    run = a.run or Path(default[a.plot])
    (attention if a.plot == "attention" else mnse)(run)


if __name__ == "__main__":
    main()
