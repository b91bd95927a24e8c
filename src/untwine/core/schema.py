"""Feature schema: what each column of a dataset is, declared once in YAML or Python.

A schema is an immutable value (pydantic model, frozen, unknown keys rejected). Modules read it to
size their parameters; the data layer reads it to encode files; nothing mutates it.

Example::

    >>> s = Schema(features=[Feature(name="user_id", kind="categorical", group="user"),
    ...                      Feature(name="price", kind="numeric", group="item")],
    ...            labels=[Label(name="click")])
    >>> [f.name for f in s.categorical]
    ['user_id']
"""
from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator


class FeatureKind(str, Enum):
    CATEGORICAL = "categorical"
    MULTI_CATEGORICAL = "multi_categorical"
    NUMERIC = "numeric"
    SEQUENCE = "sequence"
    VECTOR = "vector"


class FieldGroup(str, Enum):
    USER = "user"
    ITEM = "item"
    CONTEXT = "context"


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Feature(_Frozen):
    """One input feature.

    - ``categorical``: one id per row (string or integer), mapped through a vocabulary.
    - ``multi_categorical``: several ids in one cell separated by ``delimiter``; padded to ``max_len``.
    - ``numeric``: a float; missing values allowed; ``transform`` fitted on the training split.
    - ``sequence``: a behaviour history, ids separated by ``delimiter`` in time order (oldest first),
      the ``max_len`` most recent kept; shares the vocabulary of ``vocab_from`` (the target's field);
      optional ``timestamps`` column (same delimiter, same length) and ``side_fields``
      (name of the sequence of side values -> the categorical feature whose vocabulary it uses).
    - ``vector``: a pre-trained embedding of width ``dim``, stored as a list column or delimited text.
    """

    name: str
    kind: FeatureKind
    group: FieldGroup = FieldGroup.CONTEXT
    column: str | None = None  # source column; defaults to name
    # vocabulary (categorical, multi_categorical, sequence)
    min_count: int = Field(1, ge=1)
    hash_buckets: int | None = Field(None, ge=1)  # if set: id = 2 + hash(value) % hash_buckets, no fitting
    vocab_from: str | None = None  # share the vocabulary of another feature (sequence -> target field)
    # multi-valued / sequence
    delimiter: str = "|"
    max_len: int | None = Field(None, ge=1)
    pooling: Literal["mean", "sum"] = "mean"
    timestamps: str | None = None
    side_fields: dict[str, str] = Field(default_factory=dict)
    # numeric
    transform: Literal["none", "standard", "log1p_standard", "minmax"] = "standard"
    # vector
    dim: int | None = Field(None, ge=1)

    @property
    def source(self) -> str:
        return self.column or self.name

    @model_validator(mode="after")
    def _check_kind_fields(self) -> "Feature":
        k = self.kind
        if k in (FeatureKind.MULTI_CATEGORICAL, FeatureKind.SEQUENCE) and self.max_len is None:
            raise ValueError(f"feature {self.name!r}: kind {k.value} needs max_len")
        if k is FeatureKind.VECTOR and self.dim is None:
            raise ValueError(f"feature {self.name!r}: kind vector needs dim")
        if (self.timestamps or self.side_fields) and k is not FeatureKind.SEQUENCE:
            raise ValueError(f"feature {self.name!r}: timestamps/side_fields only apply to sequences")
        return self


class Label(_Frozen):
    """A task's label column: values in {0, 1} (also accepts true/false and -1/1 via ``negative``)."""

    name: str
    column: str | None = None
    weight: float = 1.0  # loss weight of this task
    mask_column: str | None = None  # rows where this column is 0 do not count for this task

    @property
    def source(self) -> str:
        return self.column or self.name


class Schema(_Frozen):
    features: list[Feature]
    labels: list[Label]
    weight: str | None = None  # optional per-sample weight column
    group_key: str | None = None  # user or request id for GAUC / per-group losses

    @model_validator(mode="after")
    def _check_names(self) -> "Schema":
        names = [f.name for f in self.features]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise ValueError(f"duplicate feature names: {sorted(dup)}")
        if not self.labels:
            raise ValueError("schema needs at least one label")
        by_name = {f.name: f for f in self.features}
        for f in self.features:
            if f.vocab_from is not None:
                ref = by_name.get(f.vocab_from)
                if ref is None or ref.kind not in (FeatureKind.CATEGORICAL, FeatureKind.MULTI_CATEGORICAL):
                    raise ValueError(
                        f"feature {f.name!r}: vocab_from={f.vocab_from!r} must name a categorical feature")
            for side, ref_name in f.side_fields.items():
                if ref_name not in by_name:
                    raise ValueError(f"feature {f.name!r}: side field {side!r} uses unknown feature {ref_name!r}")
        return self

    # ---- views by kind, in declaration order (the order of columns in encoded blocks) ----
    def of_kind(self, kind: FeatureKind) -> list[Feature]:
        return [f for f in self.features if f.kind is kind]

    @property
    def categorical(self) -> list[Feature]:
        return self.of_kind(FeatureKind.CATEGORICAL)

    @property
    def numeric(self) -> list[Feature]:
        return self.of_kind(FeatureKind.NUMERIC)

    @property
    def multi_categorical(self) -> list[Feature]:
        return self.of_kind(FeatureKind.MULTI_CATEGORICAL)

    @property
    def sequences(self) -> list[Feature]:
        return self.of_kind(FeatureKind.SEQUENCE)

    @property
    def vectors(self) -> list[Feature]:
        return self.of_kind(FeatureKind.VECTOR)

    @property
    def task_names(self) -> list[str]:
        return [lab.name for lab in self.labels]

    def feature(self, name: str) -> Feature:
        for f in self.features:
            if f.name == name:
                return f
        raise KeyError(f"no feature named {name!r}; schema has {[f.name for f in self.features]}")

    def vocab_owner(self, f: Feature) -> str:
        """Name of the feature whose vocabulary ``f`` uses (itself unless it shares)."""
        return f.vocab_from or f.name

    def source_columns(self) -> list[str]:
        """Every column the schema reads from the raw data."""
        cols: list[str] = []
        for f in self.features:
            cols.append(f.source)
            if f.timestamps:
                cols.append(f.timestamps)
            cols.extend(f.side_fields)
        cols.extend(lab.source for lab in self.labels)
        cols.extend(lab.mask_column for lab in self.labels if lab.mask_column)
        if self.weight:
            cols.append(self.weight)
        if self.group_key:
            cols.append(self.group_key)
        return list(dict.fromkeys(cols))

    # ---- IO ----
    @classmethod
    def from_yaml(cls, path: str | Path) -> "Schema":
        with open(path) as fh:
            return cls.model_validate(yaml.safe_load(fh))

    def to_dict(self) -> dict:
        return self.model_dump(mode="json", exclude_defaults=True)
