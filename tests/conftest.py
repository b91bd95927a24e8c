import os

import pytest

from untwine.core.paths import data_root


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    """Every test encodes into its own cache folder."""
    monkeypatch.setenv("UNTWINE_CACHE", str(tmp_path / "cache"))


@pytest.fixture
def shared_data():
    root = data_root()
    if root is None:
        pytest.skip("real datasets not found: set UNTWINE_DATA or put ../shared/data beside the checkout")
    return root
