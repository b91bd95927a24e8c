"""Bad input fails loudly with file, line and column, or is skipped and counted on request."""
from pathlib import Path

import pytest

from untwine.core.dataset_spec import DatasetSpec
from untwine.data.encode import prepare
from untwine.data.readers import BadInputError

SCHEMA = {"features": [{"name": "u", "kind": "categorical"}, {"name": "x", "kind": "numeric"}],
          "labels": [{"name": "y"}]}


def spec_for(tmp_path: Path, text: str, fmt: str = "csv", **kw) -> DatasetSpec:
    path = tmp_path / f"data.{fmt}"
    path.write_text(text)
    return DatasetSpec(name="bad", format=fmt, train=[str(path)], schema=SCHEMA, **kw)


GOOD = "y,u,x\n1,a,1.5\n0,b,2\n"


def test_good_file_encodes(tmp_path):
    p = prepare(spec_for(tmp_path, GOOD), cache_dir=tmp_path / "c")
    assert p.rows["train"] == 2


def test_wrong_width_names_file_and_line(tmp_path):
    spec = spec_for(tmp_path, GOOD + "1,c\n0,d,3\n")
    with pytest.raises(BadInputError, match=r"data\.csv:4: expected 3 columns, found 2"):
        prepare(spec, cache_dir=tmp_path / "c")


def test_non_numeric_value_names_line_and_column(tmp_path):
    spec = spec_for(tmp_path, GOOD + "1,c,abc\n")
    with pytest.raises(BadInputError, match=r"data\.csv: line 4, column 'x': expected a number, found 'abc'"):
        prepare(spec, cache_dir=tmp_path / "c")


def test_empty_label_names_line_and_column(tmp_path):
    spec = spec_for(tmp_path, GOOD + ",c,3\n")
    with pytest.raises(BadInputError, match=r"line 4, column 'y': expected a label, found an empty value"):
        prepare(spec, cache_dir=tmp_path / "c")


def test_skip_mode_skips_and_counts_each_reason(tmp_path):
    text = GOOD + "1,c\n" + "1,d,abc\n" + ",e,3\n" + "1,f,4\n"
    p = prepare(spec_for(tmp_path, text), cache_dir=tmp_path / "c", on_bad_rows="skip", log=lambda *_: None)
    assert p.rows["train"] == 3  # a, b, f
    rep = p.bad_rows["train"]
    assert rep["skipped"] == 3
    assert rep["by_reason"] == {"wrong width": 1, "non-numeric value": 1, "empty label": 1}


def test_line_numbers_stay_right_after_skipped_rows(tmp_path):
    # line 3 has the wrong width and is skipped; the non-numeric value is on line 5 of the file
    text = "y,u,x\n1,a,1\n1,b\n0,c,2\n1,d,zz\n"
    p = prepare(spec_for(tmp_path, text), cache_dir=tmp_path / "c", on_bad_rows="skip", log=lambda *_: None)
    examples = p.bad_rows["train"]["examples"]
    assert any(e.endswith("data.csv:3: wrong width") for e in examples), examples
    assert any("line 5 column 'x'" in e for e in examples), examples


def test_missing_column_fails_before_any_work(tmp_path):
    spec = spec_for(tmp_path, "y,u\n1,a\n")
    cache = tmp_path / "c"
    with pytest.raises(BadInputError, match=r"reads column\(s\) \['x'\] which the file does not have"):
        prepare(spec, cache_dir=cache)
    assert not cache.exists() or not any(cache.iterdir())


def test_missing_file_is_named(tmp_path):
    spec = DatasetSpec(name="m", format="csv", train=[str(tmp_path / "nope.csv")], schema=SCHEMA)
    with pytest.raises(FileNotFoundError, match="nope.csv"):
        prepare(spec, cache_dir=tmp_path / "c")


def test_label_outside_zero_one_is_rejected(tmp_path):
    with pytest.raises(BadInputError, match="expected 0/1"):
        prepare(spec_for(tmp_path, GOOD + "3,c,1\n"), cache_dir=tmp_path / "c")


def test_minus_one_labels_map_to_zero(tmp_path):
    from untwine.data.loader import SplitArrays

    p = prepare(spec_for(tmp_path, "y,u,x\n1,a,1\n-1,b,2\n"), cache_dir=tmp_path / "c")
    assert SplitArrays.open(p, "train").arrays["labels"][:, 0].tolist() == [1.0, 0.0]


def test_tsv_without_header_needs_and_uses_column_names(tmp_path):
    path = tmp_path / "d.tsv"
    path.write_text("1\ta\t1.5\n0\tb\t\n")
    spec = DatasetSpec(name="t", format="tsv", header=False, column_names=["y", "u", "x"], train=[str(path)],
                       schema=SCHEMA)
    p = prepare(spec, cache_dir=tmp_path / "c")
    assert p.rows["train"] == 2
    assert p.space.numeric_stats["x"].missing == 1


def test_vectors_and_quoted_headers_in_csv(tmp_path):
    import numpy as np

    from untwine.data.loader import SplitArrays

    path = tmp_path / "v.csv"
    path.write_text('"y","v"\n1,0.5|1.5\n0,-1|2e-1\n')
    spec = DatasetSpec(name="v", format="csv", train=[str(path)], schema={
        "features": [{"name": "v", "kind": "vector", "dim": 2}], "labels": [{"name": "y"}]})
    p = prepare(spec, cache_dir=tmp_path / "c")
    np.testing.assert_allclose(SplitArrays.open(p, "train").arrays["vec.v"], [[0.5, 1.5], [-1.0, 0.2]])
