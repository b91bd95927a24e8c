"""Where untwine finds the shared datasets and keeps its caches."""
from __future__ import annotations

import os
from pathlib import Path

_REPO_ROOT = Path(__file__).resolve().parents[3]


def data_root(required: bool = False) -> Path | None:
    """The folder of real datasets: ``$UNTWINE_DATA``, else ``../shared/data`` beside the checkout or cwd.

    Returns None when none exists, unless ``required`` (then raises with what was tried).
    """
    tried: list[Path] = []
    env = os.environ.get("UNTWINE_DATA")
    if env:
        tried.append(Path(env))
    tried += [Path.cwd().parent / "shared" / "data", _REPO_ROOT.parent / "shared" / "data"]
    for p in tried:
        if p.is_dir():
            return p.resolve()
    if required:
        raise FileNotFoundError(
            "no dataset folder found; set UNTWINE_DATA. Tried: " + ", ".join(str(p) for p in tried))
    return None


def cache_root() -> Path:
    """Encoded-data cache: ``$UNTWINE_CACHE``, else ``~/.cache/untwine``."""
    return Path(os.environ.get("UNTWINE_CACHE", Path.home() / ".cache" / "untwine"))
