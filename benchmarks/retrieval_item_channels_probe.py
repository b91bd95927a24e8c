"""Probe: the non-neural recall channels on the P7 split of MovieLens 1M, full ranking, train items excluded.

Catalogue = every movie of movies.dat (3,883, as P7's items.parquet), users = the 6,040 of the pairs.
Popularity, ItemCF and Swing are scored on the whole catalogue (score_all); the tag channel (genres)
only returns lists, evaluated with topk_metrics. Prints fit times and valid / test Recall, NDCG and
HitRate@K with the train items excluded (P7), and test with train + valid excluded for comparison.

    .venv/bin/python benchmarks/retrieval_item_channels_probe.py [--data DIR] [--channels popularity,itemcf,...]
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from untwine.data.recipes.p7_recall_ml1m import read_pairs, split_positions
from untwine.metrics.retrieval import full_ranking_metrics, topk_metrics
from untwine.retrieval.channel import interaction_matrix
from untwine.retrieval.itemcf import ItemCFChannel, ItemCFConfig, SwingChannel
from untwine.retrieval.popularity import PopularityChannel
from untwine.retrieval.tags import TagChannel

KS = (20, 50, 100)


def load(data: Path):
    user, movie = read_pairs(data / "ratings_user_movie_pairs.parquet")
    movies = [line.split("::") for line in (data / "movies.dat").read_text(encoding="latin-1").splitlines() if line]
    movie_ids = np.array(sorted(int(m[0]) for m in movies), dtype=np.int64)
    genres_of = {int(m[0]): m[2].strip().split("|") for m in movies}
    genre_names = sorted({g for gs in genres_of.values() for g in gs})
    rows = [(i, genre_names.index(g)) for i, mid in enumerate(movie_ids) for g in genres_of[int(mid)]]
    item_genres = sp.csr_matrix((np.ones(len(rows)), tuple(np.array(rows).T)), shape=(len(movie_ids), len(genre_names)))
    users, u_idx = np.unique(user, return_inverse=True)
    m_idx = np.searchsorted(movie_ids, movie)
    assert (movie_ids[m_idx] == movie).all(), "a movie of the pairs is missing from movies.dat"
    split = split_positions(user)
    n_users, n_items = len(users), len(movie_ids)

    def per_user(rows_: np.ndarray) -> list[np.ndarray]:
        m = interaction_matrix(u_idx[rows_], m_idx[rows_], n_users, n_items)
        return [m.indices[m.indptr[u]:m.indptr[u + 1]].astype(np.int64) for u in range(n_users)]

    train = interaction_matrix(u_idx[split["train"]], m_idx[split["train"]], n_users, n_items)
    return train, per_user(split["train"]), {s: per_user(split[s]) for s in ("valid", "test")}, item_genres


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default="/work/shared/data/movielens-1m")
    ap.add_argument("--channels", default="popularity,itemcf,itemcf_iuf,swing,tags")
    args = ap.parse_args()
    train, train_hist, targets, item_genres = load(Path(args.data))
    print(f"users {train.shape[0]}, catalogue {train.shape[1]}, train pairs {train.nnz}, "
          f"items with train pairs {int((train.getnnz(axis=0) > 0).sum())}")
    factories = {
        "popularity": lambda: PopularityChannel(),
        "itemcf": lambda: ItemCFChannel(),
        "itemcf_iuf": lambda: ItemCFChannel(ItemCFConfig(name="itemcf_iuf", iuf=True)),
        "swing": lambda: SwingChannel(),
        "tags": lambda: TagChannel(),
    }
    out = {}
    for name in args.channels.split(","):
        ch = factories[name]()
        t = time.perf_counter()
        ch.fit(train, item_tags=item_genres) if name == "tags" else ch.fit(train)
        fit_s = time.perf_counter() - t
        res = {"fit_s": round(fit_s, 2)}
        # P7 excludes the train items only; "test_excl_valid" also removes the valid items (the
        # train+valid exclusion of most leave-out protocols in the literature), for comparison
        train_valid = [np.union1d(a, b) for a, b in zip(train_hist, targets["valid"])]
        for split, target_split, seen in (("valid", "valid", train_hist), ("test", "test", train_hist),
                                          ("test_excl_valid", "test", train_valid)):
            t = time.perf_counter()
            if name == "tags":
                lists = ch.retrieve(train_hist, max(KS), exclude=seen)[0]
                m = topk_metrics(lists, targets[target_split], KS)
            else:
                m = full_ranking_metrics(lambda rows: ch.score_all([train_hist[r] for r in rows]),
                                         seen, targets[target_split], KS)
            res[split] = {k: round(v, 4) if isinstance(v, float) else v for k, v in m.as_dict().items()}
            res[f"{split}_eval_s"] = round(time.perf_counter() - t, 2)
        out[name] = res
        tm = res["test"]
        print(f"{name:11s} fit {fit_s:6.1f}s | test " + "  ".join(
            f"R@{k} {tm[f'recall@{k}']:.4f} N@{k} {tm[f'ndcg@{k}']:.4f}" for k in KS))
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
