import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml


def write_learnable(folder, n_train=3000, n_eval=800, seed=0):
    """A dataset with a learnable rule: click iff (user + item) is even, flipped 10% of the time."""
    rng = np.random.default_rng(seed)
    for split, n in (("train", n_train), ("valid", n_eval), ("test", n_eval)):
        u, i = rng.integers(0, 20, n), rng.integers(0, 20, n)
        y = ((u + i) % 2 == 0) ^ (rng.random(n) < 0.1)
        pq.write_table(pa.table({"user": u.astype(str), "item": i.astype(str), "x": rng.normal(size=n),
                                 "y": y.astype(np.int8)}), folder / f"{split}.parquet")
    spec = {"name": "learnable", "train": "train.parquet", "valid": "valid.parquet", "test": "test.parquet",
            "schema": {"features": [{"name": "user", "kind": "categorical", "group": "user"},
                                    {"name": "item", "kind": "categorical", "group": "item"},
                                    {"name": "x", "kind": "numeric"}],
                       "labels": [{"name": "y"}], "group_key": "user"}}
    (folder / "dataset.yaml").write_text(yaml.safe_dump(spec))
    return folder / "dataset.yaml"


@pytest.fixture
def learnable(tmp_path):
    return write_learnable(tmp_path)


def experiment(dataset, **train):
    base = {"batch_size": 128, "epochs": 6, "patience": 2, "progress": False, "lr": 3e-3}
    base.update(train)
    return {"dataset": str(dataset), "model": {"name": "dnn", "hidden": [32, 32]}, "train": base}
