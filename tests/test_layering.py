"""Dependencies point one way: core -> data -> nn -> models -> train -> analysis/sim/stream/explore/retrieval
-> serving -> cli (rerank needs only core and metrics), checked on the AST."""
import ast
from pathlib import Path

import untwine

PKG = Path(untwine.__file__).parent
# package -> untwine packages it may import
ALLOWED = {
    "core": {"core"},
    "metrics": {"metrics"},
    "data": {"core", "data"},
    "nn": {"core", "nn"},
    "models": {"core", "nn", "models"},
    "train": {"core", "data", "nn", "models", "metrics", "train"},
    "sim": {"core", "metrics", "sim"},
    "analysis": {"core", "data", "nn", "models", "metrics", "train", "analysis"},
    "stream": {"core", "data", "nn", "models", "metrics", "train", "stream"},
    "explore": {"core", "data", "nn", "models", "metrics", "train", "sim", "explore"},
    "retrieval": {"core", "data", "nn", "models", "metrics", "train", "retrieval"},
    "rerank": {"core", "metrics", "rerank"},
    "serving": {"core", "data", "nn", "models", "metrics", "train", "retrieval", "rerank", "serving"},
    "cli": {"core", "data", "nn", "models", "metrics", "train", "sim", "analysis", "stream", "explore",
            "retrieval", "rerank", "serving", "cli"},
}


def imports_of(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
        else:
            continue
        for n in names:
            parts = n.split(".")
            if parts[0] == "untwine" and len(parts) > 1:
                found.add(parts[1])
    return found


def test_import_direction():
    bad = []
    for path in PKG.rglob("*.py"):
        rel = path.relative_to(PKG)
        if len(rel.parts) == 1:
            continue
        pkg = rel.parts[0]
        assert pkg in ALLOWED, f"new package {pkg!r}: add it to the layering table"
        for dep in imports_of(path) - ALLOWED[pkg]:
            bad.append(f"{rel} imports untwine.{dep}")
    assert not bad, "\n".join(bad)


def test_heavy_optional_libraries_stay_out_of_core_layers():
    for path in (PKG / "core").rglob("*.py"):
        mods = {n.split(".")[0] for n in (a.name for node in ast.walk(ast.parse(path.read_text()))
                                          if isinstance(node, ast.Import) for a in node.names)}
        assert not mods & {"pandas", "polars", "fastapi", "faiss"}, path
