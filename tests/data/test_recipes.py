"""Tests for untwine.data.recipes: every protocol's splits reproduced independently from the raw files.

Needs the shared data folder (``$UNTWINE_DATA`` or ``../shared/data``); skipped without it. Builds
every recipe once per module into a temporary folder (T1 with small options), a few seconds in all.
"""
from __future__ import annotations

import datetime as dt
import gzip
import json
import re
import sys
import time
import types
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from untwine.core.dataset_spec import DatasetSpec
from untwine.core.paths import data_root
from untwine.core.schema import FeatureKind
from untwine.data import recipes
from untwine.data.encode import validate_against_files
from untwine.data.recipes import RECIPES, get_recipe, prepare

ROOT = data_root()
T1_SMALL = {"train": 2000, "eval": 100}


def _need_data() -> Path:
    if ROOT is None or not (ROOT / "MANIFEST.md").is_file():
        pytest.skip("shared data folder not found: set UNTWINE_DATA to the folder holding MANIFEST.md "
                    "(default ../shared/data)")
    return ROOT


@pytest.fixture(scope="module")
def root() -> Path:
    return _need_data()


@pytest.fixture(scope="module")
def built(root, tmp_path_factory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("recipes")
    # p2v and p5v (pre-trained vectors) need the text model and have their own tests (test_pretrained.py)
    return {k: prepare(k, out / k, **(T1_SMALL if k == "t1" else {})) for k in RECIPES if k not in ("p2v", "p5v")}


def _split(yaml_path: Path, split: str):
    spec = DatasetSpec.from_yaml(yaml_path)
    (path,) = spec.files(split)
    return pq.read_table(path)


def _col(table, name) -> list:
    return table.column(name).to_pylist()


# ------------------------------------------------------------------ registry and API
def test_registry_and_names():
    assert set(RECIPES) == {"p1", "p2", "p2v", "p3", "p4", "p5", "p5v", "p6", "p7", "t1"}
    assert [RECIPES[k].protocol for k in sorted(RECIPES)] == ["P1", "P2", "P2V", "P3", "P4", "P5", "P5V", "P6", "P7",
                                                              "T1"]
    assert get_recipe("p2") is RECIPES["p2"] and get_recipe("P2V") is RECIPES["p2v"]
    for alias in ("p1", "P1", "p1_frappe", "p1-frappe"):
        assert get_recipe(alias) is RECIPES["p1"]
    with pytest.raises(KeyError, match="p7"):
        get_recipe("p9")


def test_unknown_and_clashing_options(root, tmp_path):
    with pytest.raises(TypeError, match="unknown option"):
        prepare("p1", tmp_path, rows=10)
    with pytest.raises(TypeError, match="both"):
        prepare("t1", tmp_path, options={"train": 10}, train=20)
    assert not (tmp_path / "dataset.yaml").exists()


def test_missing_source_names_file_and_env(tmp_path, monkeypatch):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match=r"frappe\.validation\.libfm.*UNTWINE_DATA"):
        prepare("p1", tmp_path / "out", data_root=empty)
    monkeypatch.setattr(recipes._common, "default_data_root", lambda: None)
    with pytest.raises(FileNotFoundError, match="UNTWINE_DATA"):
        prepare("p2", tmp_path / "out")
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------ every recipe
EXPECTED_ROWS = {
    "p1": (46177, 11545, 28860),
    "p2": (80000, 10000, 10000),
    "p3": (7200, 409, 391),
    "p4": (79809, 9976, 9977),
    "p5": (79245, 9906, 9906),
    "p6": (262826, 111815, 111815),
    "p7": (797758, 97383, 105068),
    "t1": (2000, 100, 100),
}


def _manifest_sha(root: Path) -> dict[str, str]:
    text = (root / "MANIFEST.md").read_text()
    return dict(re.findall(r"^\| `([^`]+)` \| [\d,]+ \| `([0-9a-f]{64})`", text, flags=re.M))


@pytest.mark.parametrize("key", sorted(EXPECTED_ROWS))
def test_rows_schema_and_provenance(key, built, root):
    path = built[key]
    spec = DatasetSpec.from_yaml(path)
    validate_against_files(spec)  # every schema column exists in every split file
    rows = {s: pq.ParquetFile(spec.files(s)[0]).metadata.num_rows for s in ("train", "valid", "test")}
    assert tuple(rows.values()) == EXPECTED_ROWS[key]
    ex = spec.extra
    assert ex["protocol"] == RECIPES[key].protocol and ex["seed"] == 2024 and ex["rows"] == rows
    manifest = _manifest_sha(root)
    for rel, sha in ex["source"].items():
        if rel in manifest:
            assert sha == manifest[rel], rel
    assert all(not Path(f).is_absolute() for s in ("train", "valid", "test") for f in getattr(spec, s))
    for rel in ex["side_files"].values():
        assert (path.parent / rel).is_file()
    # label columns: int8 0/1
    for lab in spec.schema.labels:
        for s in ("train", "valid", "test"):
            col = _split(path, s).column(lab.source)
            assert str(col.type) == "int8" and set(col.unique().to_pylist()) <= {0, 1}
    if key in ("p1", "p2", "p5", "p6", "p7"):
        assert spec.schema.group_key is not None


@pytest.mark.parametrize("key,low,high", [("p1", 0.3, 0.37), ("p2", 0.5, 0.6), ("p3", 0.2, 0.24),
                                          ("p5", 0.5, 0.6), ("t1", 0.15, 0.35)])
def test_label_rates_sane(key, low, high, built):
    rates = DatasetSpec.from_yaml(built[key]).extra["label_rate"]["label"]
    assert all(low <= r <= high for r in rates.values()), rates


# ------------------------------------------------------------------ P1
def test_p1_split_reproduced(built, root):
    lines = (root / "frappe-nfm-partial/frappe.validation.libfm").read_text().splitlines()
    perm = np.random.default_rng(2024).permutation(len(lines))
    cut = int(0.8 * len(lines))
    names = ["user", "item", "daytime", "weekday", "isweekend", "homework", "cost", "weather", "country", "city"]

    def as_lines(table):
        cols = [_col(table, n) for n in names]
        labs = _col(table, "label")
        return [" ".join([("1" if lab else "-1")] + [f"{c[i]}:1" for c in cols]) for i, lab in enumerate(labs)]

    norm = [" ".join(x.split()) for x in lines]
    assert as_lines(_split(built["p1"], "train")) == [norm[i] for i in sorted(perm[:cut])]
    assert as_lines(_split(built["p1"], "valid")) == [norm[i] for i in sorted(perm[cut:])]
    test_lines = (root / "frappe-nfm-partial/frappe.test.libfm").read_text().splitlines()
    assert as_lines(_split(built["p1"], "test")) == [" ".join(x.split()) for x in test_lines]
    sch = DatasetSpec.from_yaml(built["p1"]).schema
    assert [f.group.value for f in sch.features] == ["user", "item"] + ["context"] * 8
    assert sch.group_key == "user"


# ------------------------------------------------------------------ P2
def test_p2_time_split_and_features(built, root):
    t = {s: _split(built["p2"], s) for s in ("train", "valid", "test")}
    ts = {s: np.asarray(_col(t[s], "timestamp")) for s in t}
    for s in ts:
        assert np.all(np.diff(ts[s]) >= 0)
    assert ts["train"].max() <= ts["valid"].min() and ts["valid"].max() <= ts["test"].min()
    raw = np.loadtxt(root / "movielens-100k/u.data", dtype=np.int64)
    order = np.argsort(raw[:, 3], kind="stable")
    got = np.concatenate([np.c_[np.asarray(_col(t[s], "user_id"), dtype=int), np.asarray(_col(t[s], "item_id"), dtype=int)]
                          for s in t])
    assert np.array_equal(got, raw[order][:, :2])
    lab = np.concatenate([np.asarray(_col(t[s], "label")) for s in t])
    assert np.array_equal(lab, (raw[order][:, 2] >= 4).astype(np.int8))
    # side features of one row, checked against the raw files and datetime
    users = {ln.split("|")[0]: ln.split("|") for ln in (root / "movielens-100k/u.user").read_text().splitlines()}
    row = {c: t["test"].column(c)[123].as_py() for c in t["test"].column_names}
    u = users[row["user_id"]]
    assert (row["age"], row["gender"], row["occupation"], row["zip3"]) == (u[1], u[2], u[3], u[4][:3])
    when = dt.datetime.fromtimestamp(row["timestamp"], tz=dt.timezone.utc)
    assert (row["hour"], row["weekday"]) == (str(when.hour), str(when.weekday()))
    genres = set(_col(t["train"], "genres"))
    assert "unknown" in genres and all(g.split("|")[0] for g in genres)
    sch = DatasetSpec.from_yaml(built["p2"]).schema
    assert sch.feature("genres").kind is FeatureKind.MULTI_CATEGORICAL and sch.group_key == "user_id"
    assert "timestamp" not in [f.name for f in sch.features]


# ------------------------------------------------------------------ P3
def test_p3_missing_values_and_types(built, root):
    t = _split(built["p3"], "train")
    assert str(t.schema.field("I1").type) == "double" and str(t.schema.field("C1").type) == "string"
    assert t.column("I12").null_count > 0 and t.column("C22").null_count > 0
    assert min(v for v in _col(t, "I2") if v is not None) < 0
    first = (root / "criteo-kaggle-head8k/train.tsv").read_text().split("\n", 1)[0].split("\t")
    row = [t.column(c)[0].as_py() for c in t.column_names]
    assert [("" if v is None else str(int(v)) if isinstance(v, float) else str(v)) for v in row] == first
    sch = DatasetSpec.from_yaml(built["p3"]).schema
    assert {f.transform for f in sch.numeric} == {"log1p_standard"} and len(sch.categorical) == 26


# ------------------------------------------------------------------ P4
def test_p4_permutation_split_and_labels(built, root):
    from untwine.data.recipes.p4_census import COLUMNS
    with gzip.open(root / "census-income-kdd/census-income.test.gz", "rt", encoding="latin-1") as fh:
        rows = [[v.strip() for v in ln.rstrip("\n").split(",")] for ln in fh if ln.strip()]
    assert len(rows) == 99762
    perm = np.random.default_rng(2024).permutation(len(rows))
    cuts = {"train": sorted(perm[:79809]), "valid": sorted(perm[79809:89785]), "test": sorted(perm[89785:])}
    i_age, i_inc, i_mar, i_edu = (COLUMNS.index(c) for c in ("age", "income_50k", "marital_stat", "education"))
    total_income = total_marital = 0
    for s, idx in cuts.items():
        t = _split(built["p4"], s)
        assert _col(t, "age") == [float(rows[i][i_age]) for i in idx]
        assert _col(t, "education") == [rows[i][i_edu] for i in idx]
        assert _col(t, "income") == [int(rows[i][i_inc] == "50000+.") for i in idx]
        assert _col(t, "marital") == [int(rows[i][i_mar] == "Never married") for i in idx]
        assert not {"instance_weight", "income_50k", "marital_stat"} & set(t.column_names)
        total_income += sum(_col(t, "income"))
        total_marital += sum(_col(t, "marital"))
    assert (total_income, total_marital) == (6186, 43143)  # dataset README
    sch = DatasetSpec.from_yaml(built["p4"]).schema
    assert sch.task_names == ["income", "marital"] and len(sch.numeric) == 7 and len(sch.categorical) == 32


# ------------------------------------------------------------------ P5
def test_p5_histories(built, root):
    raw = np.loadtxt(root / "movielens-100k/u.data", dtype=np.int64)
    events: dict[int, list[tuple[int, int]]] = {}
    for u, i, _r, ts in raw.tolist():
        events.setdefault(u, []).append((ts, i))
    for u in events:
        events[u].sort()
    pos = {(u, ts, i): k for u, ev in events.items() for k, (ts, i) in enumerate(ev)}
    prev_max = -1
    for s in ("train", "valid", "test"):
        t = _split(built["p5"], s)
        ts = np.asarray(_col(t, "timestamp"))
        assert ts.min() >= prev_max and np.all(np.diff(ts) >= 0)
        prev_max = ts.max()
        users, items = _col(t, "user_id"), _col(t, "item_id")
        hist, hts, hg = _col(t, "hist_item_id"), _col(t, "hist_ts"), _col(t, "hist_genre")
        for r in range(0, t.num_rows, 37):  # a spread of rows, checked against an independent rebuild
            u = int(users[r])
            k = pos[(u, int(ts[r]), int(items[r]))]
            assert k >= 1
            want = events[u][max(0, k - 50):k]
            assert hist[r] == "|".join(str(i) for _, i in want)
            assert hts[r] == "|".join(str(x) for x, _ in want)
            assert len(hg[r].split("|")) == len(want)
    total = sum(EXPECTED_ROWS["p5"])
    assert total == 100000 - len(events)
    sch = DatasetSpec.from_yaml(built["p5"]).schema
    seq = sch.feature("hist_item_id")
    assert seq.kind is FeatureKind.SEQUENCE and seq.vocab_from == "item_id" and seq.max_len == 50
    assert seq.timestamps == "hist_ts" and seq.side_fields == {"hist_genre": "genre_first"}


# ------------------------------------------------------------------ P6
def test_p6_leave_one_out_and_negatives(built, root):
    seqs = {}
    for ln in (root / "amazon-yelp-lastfm-seq-s3rec/Beauty.txt").read_text().splitlines():
        p = ln.split()
        seqs[int(p[0])] = [int(x) for x in p[1:]]
    n_items = max(max(s) for s in seqs.values())
    t = {s: _split(built["p6"], s) for s in ("train", "valid", "test")}
    # independent negative draws (literal definition: uniform index into the sorted complement), first 1500 users
    rng = np.random.default_rng(2024)
    expect_neg: dict[str, list[int]] = {"train": [], "valid": [], "test": []}
    n_users_checked = 1500
    for u in sorted(seqs)[:n_users_checked]:
        s = seqs[u]
        comp = np.setdiff1d(np.arange(1, n_items + 1), s)
        draws = comp[rng.integers(0, len(comp), size=(len(s) - 3) + 8)].tolist()
        expect_neg["train"] += draws[:len(s) - 3]
        expect_neg["valid"] += draws[len(s) - 3:len(s) + 1]
        expect_neg["test"] += draws[len(s) + 1:]
    for split in t:
        users = np.asarray(_col(t[split], "user_id"), dtype=np.int64)
        items = np.asarray(_col(t[split], "item_id"), dtype=np.int64)
        labels = np.asarray(_col(t[split], "label"))
        hist = _col(t[split], "hist_item_id")
        mask = users <= sorted(seqs)[n_users_checked - 1]
        assert items[mask & (labels == 0)].tolist() == expect_neg[split]
        for r in range(0, len(users), 101):
            s = seqs[int(users[r])]
            assert int(items[r]) not in s if labels[r] == 0 else True
            if split == "test" and labels[r] == 1:
                assert int(items[r]) == s[-1] and hist[r] == "|".join(map(str, s[:-1][-50:]))
            if split == "valid" and labels[r] == 1:
                assert int(items[r]) == s[-2] and hist[r] == "|".join(map(str, s[:-2][-50:]))
    v = t["valid"]
    assert _col(v, "label")[:5] == [1, 0, 0, 0, 0] and len(set(_col(v, "user_id"))) == len(seqs)
    rt = pq.read_table(built["p6"].parent / "retrieval_test.parquet")
    assert rt.num_rows == len(seqs)
    u0 = int(rt.column("user_id")[0].as_py())
    assert rt.column("item_id")[0].as_py() == str(seqs[u0][-1])
    assert rt.column("seen_item_id")[0].as_py() == "|".join(map(str, seqs[u0][:-1]))
    rtr = pq.read_table(built["p6"].parent / "retrieval_train.parquet")
    assert rtr.num_rows == sum(len(s) - 2 for s in seqs.values())
    items = pq.read_table(built["p6"].parent / "items.parquet")
    assert items.num_rows == n_items
    sch = DatasetSpec.from_yaml(built["p6"]).schema
    assert sch.feature("item_attrs").kind is FeatureKind.MULTI_CATEGORICAL
    assert sch.feature("hist_item_id").side_fields == {"hist_attr_first": "attr_first"}


def test_p6_complement_trick_matches_setdiff():
    from untwine.data.recipes.p6_seq_beauty import complement_draws
    rng = np.random.default_rng(0)
    for _ in range(200):
        n = int(rng.integers(5, 60))
        seen = rng.integers(1, n + 1, size=int(rng.integers(1, n)))
        comp = np.setdiff1d(np.arange(1, n + 1), seen)
        if not len(comp):
            continue
        r = rng.integers(0, len(comp), size=30)
        assert np.array_equal(complement_draws(seen, n, r), comp[r])


# ------------------------------------------------------------------ P7
def test_p7_per_user_split(built, root):
    pairs = pq.read_table(root / "movielens-1m/ratings_user_movie_pairs.parquet")
    user = np.asarray(pairs.column("userID").to_pylist(), dtype=np.int64)
    movie = np.asarray(pairs.column("movieID").to_pylist(), dtype=np.int64)
    t = {s: _split(built["p7"], s) for s in ("train", "valid", "test")}
    got = {s: (np.asarray(_col(t[s], "user_id"), dtype=np.int64), np.asarray(_col(t[s], "item_id"), dtype=np.int64))
           for s in t}
    # the union is exactly the pair list, each pair once
    all_pairs = np.concatenate([gu * 10_000 + gi for gu, gi in got.values()])
    assert len(all_pairs) == len(user) and np.array_equal(np.sort(all_pairs), np.sort(user * 10_000 + movie))
    # the first 300 users independently: same rng stream, same order
    rng = np.random.default_rng(2024)
    want = {"train": [], "valid": [], "test": []}
    for u in np.unique(user)[:300]:
        items = movie[user == u]
        items = items[rng.permutation(len(items))]
        a, b = int(0.8 * len(items)), int(0.8 * len(items)) + int(0.1 * len(items))
        want["train"] += items[:a].tolist()
        want["valid"] += items[a:b].tolist()
        want["test"] += items[b:].tolist()
    last = np.unique(user)[299]
    for s in t:
        gu, gi = got[s]
        assert np.all(np.diff(gu) >= 0)
        assert gi[gu <= last].tolist() == want[s]
    assert set(np.unique(got["test"][0])) == set(np.unique(user))  # every user has a test item
    assert set(_col(t["train"], "label")) == {1}
    row = {c: t["train"].column(c)[0].as_py() for c in t["train"].column_names}
    assert (row["user_id"], row["gender"], row["age"], row["occupation"], row["zip3"]) == ("1", "F", "1", "10", "480")
    items = pq.read_table(built["p7"].parent / "items.parquet")
    assert items.num_rows == 3883
    assert "full ranking" in DatasetSpec.from_yaml(built["p7"]).extra["evaluation"]


# ------------------------------------------------------------------ T1
def test_t1_matches_make_t1_main(built, root, tmp_path, monkeypatch):
    """Run make_t1.main() itself with a stand-in pandas that captures its frame; compare with the recipe."""
    import importlib.util

    captured: dict[str, dict] = {}

    class _Part:
        def __init__(self, cols, lo, hi):
            self.cols, self.lo, self.hi = cols, lo, hi

        def to_csv(self, path, index=False):
            captured[Path(path).stem] = {k: v[self.lo:self.hi] for k, v in self.cols.items()}

        def to_parquet(self, path, index=False):
            pass

    class _ILoc:
        def __init__(self, cols):
            self.cols = cols

        def __getitem__(self, sl):
            return _Part(self.cols, sl.start, sl.stop)

    class DataFrame:
        def __init__(self, cols):
            self.iloc = _ILoc(cols)

    monkeypatch.setitem(sys.modules, "pandas", types.SimpleNamespace(DataFrame=DataFrame))
    spec = importlib.util.spec_from_file_location("make_t1_under_test", root.parent / "tools" / "make_t1.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    monkeypatch.setattr(sys, "argv", ["make_t1.py", str(tmp_path), "--train", str(T1_SMALL["train"]),
                                      "--eval", str(T1_SMALL["eval"])])
    mod.main()
    for split in ("train", "valid", "test"):
        table = _split(built["t1"], split)
        ref = captured[split]
        assert table.column_names == list(ref)
        for c in ref:
            assert np.array_equal(table.column(c).to_numpy(zero_copy_only=False), np.asarray(ref[c])), (split, c)
    spec_ = DatasetSpec.from_yaml(built["t1"])
    assert spec_.train == ["raw/train.parquet"] and spec_.extra["options"] == T1_SMALL
    assert {f.transform for f in spec_.schema.numeric} == {"log1p_standard"}


# ------------------------------------------------------------------ caching
def _stamp(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in folder.rglob("*") if p.is_file()}


@pytest.mark.parametrize("key", sorted(EXPECTED_ROWS))
def test_second_call_is_cached_and_force_rewrites(key, built):
    yaml_path = built[key]
    folder = yaml_path.parent
    opts = T1_SMALL if key == "t1" else {}
    before = _stamp(folder)
    t0 = time.perf_counter()
    assert prepare(key, folder, **opts) == yaml_path
    assert time.perf_counter() - t0 < 1.0
    assert _stamp(folder) == before
    if key in ("p1", "p3", "t1"):  # a rebuild of the small ones
        time.sleep(0.01)
        prepare(key, folder, force=True, **opts)
        after = _stamp(folder)
        assert set(after) == set(before) and all(after[k] != before[k] for k in before)


def test_cache_invalidated_by_options_and_missing_files(root, tmp_path):
    y = prepare("t1", tmp_path, train=300, eval=20)
    assert DatasetSpec.from_yaml(y).extra["rows"]["valid"] == 20
    y = prepare("t1", tmp_path, train=300, eval=30)  # other options: rebuilt
    assert DatasetSpec.from_yaml(y).extra["rows"]["valid"] == 30
    (tmp_path / "raw" / "test.parquet").unlink()  # a missing split file: rebuilt
    prepare("t1", tmp_path, train=300, eval=30)
    assert (tmp_path / "raw" / "test.parquet").is_file()
    raw = json.loads(json.dumps(DatasetSpec.from_yaml(y).extra["source"]))
    assert list(raw) == ["../tools/make_t1.py"]
