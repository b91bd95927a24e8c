"""P5V — p5v-seq-ml100k-vectors: P5 (seq-ml100k) plus per-item pre-trained vectors as vector tables.

Same samples, columns, order and split as :mod:`p5_seq_ml100k` (built with its ``build``), plus two side
tables keyed by ``item_id`` that the schema declares as ``vector_tables`` (aligned with the item
vocabulary when encoded), for the similarity between the target and each history item (SPEC 2.3):

- ``text`` (``item_text_vectors.parquet``, 384): the all-MiniLM-L6-v2 embedding of every movie's
  ``"{title}. Genres: {genres}"``, exactly P2V's item text vectors (:mod:`p2v_ml100k_vectors`);
- ``i2v`` (``item2vec_vectors.parquet``, 32): item2vec with P2V's settings, trained on the TRAIN split
  only: one sequence per user (ascending user id) of the target items of their train samples, in
  sample order. Zero for an item absent from those sequences (a zero vector is "missing" to the
  similarity encoders).

The per-row columns carry no vectors: a model reads the tables through the sequence encoder's
``similarity`` option (``configs/p5v/``).
"""
from __future__ import annotations

import numpy as np
import pyarrow as pa

from untwine.core.schema import Schema, VectorTable
from untwine.data import pretrained
from untwine.data.recipes import p2_ml100k, p5_seq_ml100k
from untwine.data.recipes import p2v_ml100k_vectors as p2v
from untwine.data.recipes._common import Built, Context, Recipe, split_sizes, str_array


def schema() -> Schema:
    base = p5_seq_ml100k.schema()
    tables = [VectorTable(name="text", key="item_id", file=f"{p2v.TEXT_SIDE}.parquet", dim=pretrained.TEXT_DIM),
              VectorTable(name="i2v", key="item_id", file=f"{p2v.I2V_SIDE}.parquet", dim=p2v.I2V_PARAMS["dim"])]
    return base.model_copy(update={"vector_tables": tables})


def build(ctx: Context) -> Built:
    built = p5_seq_ml100k.build(ctx)
    ml = p2_ml100k.load(ctx.data_root)
    rows, _ = p5_seq_ml100k.samples(ml)
    a, _ = split_sizes(len(rows))
    item_ids, text_tab, text_side, text_info = p2v.text_vectors(ctx, ml)
    num_items = text_tab.shape[0] - 1
    i2v = pretrained.train_item2vec(p2v.train_sequences(ml, rows[:a]), num_items, **p2v.I2V_PARAMS)
    counts = np.bincount(ml.item[rows[:a]], minlength=num_items + 1)
    i2v_side = pa.table({"item_id": str_array(item_ids), "vector": p2v.list_column(i2v[item_ids]),
                         "train_count": pa.array(counts[item_ids].astype(np.int64))})
    extra = {**built.extra,
             "vector_tables": {"text": {**text_info, "template": p2v.TEXT_TEMPLATE},
                               "i2v": {**p2v.I2V_PARAMS, "trained_on": "train split only",
                                       "sequences": "one per user (ascending user id): target items of the "
                                                    "user's train samples in sample order",
                                       "items_with_vector": int(i2v[item_ids].any(axis=1).sum()),
                                       "items": int(item_ids.size)}}}
    return Built(splits=built.splits, schema=schema(), side_tables={p2v.TEXT_SIDE: text_side, p2v.I2V_SIDE: i2v_side},
                 extra=extra)


RECIPE = Recipe(key="p5v", protocol="P5V", dataset_name="p5v-seq-ml100k-vectors", module="p5v_seq_ml100k_vectors",
                sources=p2_ml100k.SOURCES, build=build,
                description="P5 plus per-item vector tables (MiniLM text, train-only item2vec) for target-vs-history "
                            "similarity")
