"""Where a dataset's files are and how to read them: the ``dataset.yaml`` every recipe writes.

Layout of a ``dataset.yaml``::

    name: p1-frappe
    format: parquet            # csv | tsv | parquet | libfm
    header: true               # csv/tsv only
    column_names: null         # csv/tsv without header, or libfm: names for the columns in order
    train: [train.parquet]     # paths relative to the yaml file, or absolute
    valid: [valid.parquet]
    test: [test.parquet]
    schema: {features: [...], labels: [...], group_key: user_id}
    extra: {}                  # free-form provenance (protocol, seed, row counts)
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator

from untwine.core.schema import Schema

SPLITS = ("train", "valid", "test")


class DatasetSpec(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    format: Literal["csv", "tsv", "parquet", "libfm"] = "parquet"
    header: bool = True
    column_names: list[str] | None = None
    train: list[str]
    valid: list[str] = Field(default_factory=list)
    test: list[str] = Field(default_factory=list)
    schema_: Schema = Field(alias="schema")
    extra: dict[str, Any] = Field(default_factory=dict)
    root: str | None = None  # directory relative paths resolve against (set when loaded from a file)

    @field_validator("train", "valid", "test", mode="before")
    @classmethod
    def _as_list(cls, v: Any) -> Any:
        return [v] if isinstance(v, str) else v

    @property
    def schema(self) -> Schema:  # noqa: D401 - a plain accessor
        return self.schema_

    def resolve(self, path: str | Path) -> Path:
        """A path from the spec, relative to its folder (``root``, else the working directory)."""
        p = Path(path)
        return p if p.is_absolute() else (Path(self.root) if self.root else Path.cwd()) / p

    def files(self, split: str) -> list[Path]:
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
        return [self.resolve(p) for p in getattr(self, split)]

    @classmethod
    def from_yaml(cls, path: str | Path) -> "DatasetSpec":
        path = Path(path)
        with open(path) as fh:
            raw = yaml.safe_load(fh)
        raw.setdefault("root", str(path.parent.resolve()))
        return cls.model_validate(raw)

    def to_yaml(self, path: str | Path) -> None:
        data = self.model_dump(mode="json", by_alias=True, exclude={"root"})
        data["schema"] = self.schema.to_dict()
        from untwine.core.io import atomic_write_text

        atomic_write_text(path, yaml.safe_dump(data, sort_keys=False))
