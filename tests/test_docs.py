"""The user docs stay in step with the code: model table, command names, TrainConfig fields."""
import re
from pathlib import Path

import typer

from untwine.cli.main import app
from untwine.models import MODELS
from untwine.train.config import TrainConfig

DOCS = Path(__file__).resolve().parents[1] / "docs"


def model_table(text: str) -> dict[str, tuple[str, str]]:
    """Rows of the ``| name | paper | inputs |`` table: name -> (paper, inputs)."""
    lines = text.splitlines()
    header = next(i for i, line in enumerate(lines)
                  if [c.strip() for c in line.strip().strip("|").split("|")] == ["name", "paper", "inputs"])
    rows: dict[str, tuple[str, str]] = {}
    for line in lines[header + 2:]:  # skip the |---| separator
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        assert len(cells) == 3, f"models.md table row has {len(cells)} cells: {line!r}"
        name = cells[0].strip("`")
        assert name not in rows, f"models.md lists {name!r} twice"
        rows[name] = (cells[1], cells[2])
    return rows


def test_models_table_matches_registry():
    rows = model_table((DOCS / "models.md").read_text())
    assert set(rows) == set(MODELS.names()), (
        f"docs/models.md lists {sorted(rows)}, the registry has {MODELS.names()}")
    for e in MODELS.entries():
        paper, inputs = rows[e.name]
        assert paper == e.paper, f"{e.name}: paper {paper!r} in docs/models.md, {e.paper!r} in the registry"
        assert inputs == e.inputs, f"{e.name}: inputs {inputs!r} in docs/models.md, {e.inputs!r} in the registry"


def test_every_model_has_a_section():
    text = (DOCS / "models.md").read_text()
    for name in MODELS.names():
        assert re.search(rf"^## {re.escape(name)}$", text, re.M), f"docs/models.md has no '## {name}' section"


def code_spans(text: str) -> list[str]:
    """Contents of fenced code blocks and inline code spans."""
    blocks = re.findall(r"^```[^\n]*\n(.*?)^```", text, re.S | re.M)
    rest = re.sub(r"^```[^\n]*\n.*?^```", "", text, flags=re.S | re.M)
    return blocks + re.findall(r"`([^`\n]+)`", rest)


def cli_tree(group) -> dict[str, dict]:
    """Command names of a (typer/click) group; sub-groups map to their own trees, commands to {}."""
    return {name: (cli_tree(cmd) if getattr(cmd, "commands", None) else {}) for name, cmd in group.commands.items()}


def test_commands_in_docs_exist():
    tree = cli_tree(typer.main.get_command(app))
    assert "data" in tree and tree["data"], "the data sub-app is missing"
    named = []
    for code in code_spans((DOCS / "commands.md").read_text()):
        named += re.findall(r"(?<![\w.\-])untwine ((?:[a-z][\w-]*)(?: [a-z][\w-]*)?)", code)
    assert named, "docs/commands.md names no untwine command"
    for words in named:
        first, *rest = words.split()
        assert first in tree, f"docs/commands.md names `untwine {first}`, which the CLI does not have"
        if tree[first]:  # a sub-app: its sub-command must exist
            assert rest and rest[0] in tree[first], (
                f"docs/commands.md names `untwine {words}`; `untwine {first}` has {sorted(tree[first])}")
    # and every command of the CLI is documented
    documented = {w.split()[0] for w in named} | {" ".join(w.split()[:2]) for w in named}
    for name, sub in tree.items():
        for full in ([f"{name} {s}" for s in sub] if sub else [name]):
            assert full in documented, f"`untwine {full}` is not documented in docs/commands.md"


def test_train_config_fields_documented():
    text = (DOCS / "config.md").read_text()
    for name in TrainConfig.model_fields:
        assert re.search(rf"`{re.escape(name)}`", text), f"TrainConfig.{name} is not documented in docs/config.md"
