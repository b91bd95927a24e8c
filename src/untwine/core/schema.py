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
from typing import Any, Literal, Union

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


class _Encoding(_Frozen):
    """Base of the per-kind encoder choices; a bare string is shorthand for ``{name: <string>}``."""

    @model_validator(mode="before")
    @classmethod
    def _from_name(cls, v: Any) -> Any:
        return {"name": v} if isinstance(v, str) else v


class NumericEncoding(_Encoding):
    """How a numeric feature becomes a field vector.

    - ``scaled``: the normalised value times a learned vector (FuxiCTR's numeric embedding);
    - ``bucket``: equal-frequency bins fitted on train (``buckets`` of them), one vector per bin;
    - ``mnse``: the value mapped to an integer in [0, ``max_value``] by ``transform`` (``identity``: shift
      by the train minimum, scaled down only if the range exceeds M; ``log1p``; ``quantile``: M times the
      train CDF), written in every base of ``bases``, one learned vector per (base, position, digit),
      summed within a base, bases combined by ``sum`` or ``concat`` + linear.

    Every encoding gives a missing value (NaN) its own learned vector.
    """

    name: Literal["scaled", "bucket", "mnse"]
    buckets: int = Field(20, ge=2)
    max_value: int = Field(1000, ge=1)
    bases: tuple[int, ...] = (2, 3, 10)
    transform: Literal["identity", "log1p", "quantile"] = "quantile"
    combine: Literal["sum", "concat"] = "sum"

    @model_validator(mode="after")
    def _check_bases(self) -> "NumericEncoding":
        if not self.bases or any(b < 2 for b in self.bases):
            raise ValueError(f"mnse bases must be integers >= 2, got {list(self.bases)}")
        return self


class SequenceEncoding(_Encoding):
    """How a behaviour sequence becomes fields (one per embedded part: item, then each side field).

    - ``pool``: masked mean or sum (the feature's ``pooling``);
    - ``din``: DIN's unnormalised attention, an MLP (``attention_hidden``) over [b, a, b - a, b * a];
    - ``tim``: the Temporal Interest Module: target-aware temporal encoding (a learned vector per
      bucket of t_target - t_i, buckets log-spaced: bucket k covers gaps up to
      ``time_unit`` * (``time_base``^k - 1), ``time_buckets`` in all; relative position when the
      sequence has no timestamps), combined with the behaviour by ``time_combine`` (``sum``, or
      ``concat`` which adds one field), scaled dot-product target attention over non-padded
      behaviours, and the target-aware representation (sum_i alpha_i b~_i) * a~.
      ``temporal_encoding: false`` and ``target_aware_representation: false`` are the ablations.
      Two measured refinements are on by default: ``attention_norm`` (layer-normalised query/key
      inputs, so the attention is not stuck near uniform while embeddings are small) and
      ``keep_history`` (the attended history sum_i alpha_i b~_i is output beside the product, as the
      TIN authors' code feeds its MLP); with both off the module is exactly SPEC 2.1's formula.

    ``target``: the categorical feature the attention compares against (default: ``vocab_from``).

    ``similarity`` adds, with any of the three, the similarity between the target and each history
    item through pre-trained item vectors (the schema's ``vector_tables`` keyed by the sequence's
    vocabulary; ``similarity_tables`` picks them, default all): s_i = cos(vec(target), vec(item_i)) over
    the non-padded items, then ``mnse`` (s_i mapped from [-1, 1] to [0, ``similarity_max_value``],
    MNSE-encoded and mean-pooled over the history; an empty history or a missing vector is the missing
    code) or ``simtier`` (the histogram of s_i over ``similarity_bins`` equal bins of [-1, 1], as
    fractions of the history, through a linear layer). One field per table.
    """

    name: Literal["pool", "din", "tim"]
    target: str | None = None
    similarity: Literal["none", "mnse", "simtier"] = "none"
    similarity_tables: tuple[str, ...] | None = None
    similarity_bins: int = Field(10, ge=2)
    similarity_max_value: int = Field(100, ge=1)
    attention_hidden: tuple[int, ...] = (80, 40)
    temporal_encoding: bool = True
    target_aware_representation: bool = True
    time_combine: Literal["sum", "concat"] = "sum"
    time_buckets: int = Field(32, ge=2)
    time_base: float = Field(2.0, gt=1)
    time_unit: float = Field(1.0, gt=0)  # seconds
    # measured best on P5 and P6 (benchmarks/results/encoders/sequence.md); both false is SPEC 2.1's formula
    attention_norm: bool = True  # layer-normalise query and key inputs (scale-free attention logits)
    keep_history: bool = True  # also output sum_i alpha_i b~_i beside the target-aware product (TIN's code)


class VectorEncoding(_Encoding):
    """How pre-trained vector features become fields.

    - ``project``: the raw vector through a linear layer (one field per vector feature);
    - ``similarity``: for a vector feature with a ``pair``, s = cos(vector, pair) mapped from [-1, 1] to
      an integer in [0, ``max_value``] and MNSE-encoded (``bases``, ``combine``); a zero vector on
      either side is missing and gets its own vector; one field per pair, unpaired vectors projected;
    - ``drop``: vector features are ignored (the baseline without them).
    """

    name: Literal["project", "similarity", "drop"]
    max_value: int = Field(100, ge=1)
    bases: tuple[int, ...] = (2, 3, 10)
    combine: Literal["sum", "concat"] = "sum"


class VectorTable(_Frozen):
    """Pre-trained vectors keyed by the values of a categorical feature (e.g. one text embedding per item),
    read from a parquet side file with a key column and a list<float> vector column. Encoding aligns it
    with the key's vocabulary (a row per id; PAD, OOV and values without a vector are zero rows, which
    similarity encoders treat as missing). Sequences sharing the key's vocabulary can use it
    (``SequenceEncoding.similarity``)."""

    name: str
    key: str  # the categorical feature whose vocabulary indexes the table
    file: str  # parquet file, relative to the dataset.yaml's folder
    dim: int = Field(ge=1)
    key_column: str | None = None  # default: the key feature's source column name
    vector_column: str = "vector"


class Feature(_Frozen):
    """One input feature.

    - ``categorical``: one id per row (string or integer), mapped through a vocabulary.
    - ``multi_categorical``: several ids in one cell separated by ``delimiter``; padded to ``max_len``.
    - ``numeric``: a float; missing values allowed; ``transform`` fitted on the training split.
    - ``sequence``: a behaviour history, ids separated by ``delimiter`` in time order (oldest first),
      the ``max_len`` most recent kept; shares the vocabulary of ``vocab_from`` (the target's field);
      optional ``timestamps`` column (same delimiter, same length) and ``side_fields``
      (name of the sequence of side values -> the categorical feature whose vocabulary it uses).
    - ``vector``: a pre-trained embedding of width ``dim``, stored as a list column or delimited text;
      ``pair`` names the vector on the other side (user vs item) for similarity encoding.

    ``encoding`` chooses this feature's encoder (numeric, sequence and vector kinds; see
    :class:`NumericEncoding`, :class:`SequenceEncoding`, :class:`VectorEncoding`); when unset the
    model config's default for the kind applies.
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
    pair: str | None = None
    # encoder override (else the model's default for this kind)
    encoding: Union[NumericEncoding, SequenceEncoding, VectorEncoding, None] = Field(None, union_mode="left_to_right")

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
        if self.pair is not None and k is not FeatureKind.VECTOR:
            raise ValueError(f"feature {self.name!r}: pair only applies to vector features")
        wanted = {FeatureKind.NUMERIC: NumericEncoding, FeatureKind.SEQUENCE: SequenceEncoding,
                  FeatureKind.VECTOR: VectorEncoding}
        if self.encoding is not None and not isinstance(self.encoding, wanted.get(k, ())):
            raise ValueError(f"feature {self.name!r}: encoding {self.encoding.name!r} does not apply to kind {k.value}")
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
    timestamp: str | None = None  # the sample's event time (int seconds): the target time of sequences
    vector_tables: list[VectorTable] = Field(default_factory=list)

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
            if f.pair is not None:
                other = by_name.get(f.pair)
                if other is None or other.kind is not FeatureKind.VECTOR or other.dim != f.dim:
                    raise ValueError(f"feature {f.name!r}: pair={f.pair!r} must name a vector feature of dim {f.dim}")
            enc = f.encoding
            if isinstance(enc, SequenceEncoding) and enc.target is not None and enc.target not in by_name:
                raise ValueError(f"feature {f.name!r}: encoding target {enc.target!r} is not a feature")
        tables = [t.name for t in self.vector_tables]
        if len(set(tables)) != len(tables):
            raise ValueError(f"duplicate vector table names: {tables}")
        for t in self.vector_tables:
            key = by_name.get(t.key)
            if key is None or key.kind is not FeatureKind.CATEGORICAL or key.vocab_from is not None:
                raise ValueError(f"vector table {t.name!r}: key={t.key!r} must name a categorical feature that owns "
                                 f"its vocabulary")
        return self

    def tables_for(self, owner: str, names: tuple[str, ...] | None = None) -> list[VectorTable]:
        """The vector tables keyed by vocabulary ``owner`` (those in ``names`` when given, in that order)."""
        mine = {t.name: t for t in self.vector_tables if t.key == owner}
        if names is None:
            return list(mine.values())
        unknown = [n for n in names if n not in mine]
        if unknown:
            raise ValueError(f"vector tables {unknown} are not keyed by {owner!r}; tables keyed by it: {sorted(mine)}")
        return [mine[n] for n in names]

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
        if self.timestamp:
            cols.append(self.timestamp)
        return list(dict.fromkeys(cols))

    # ---- IO ----
    @classmethod
    def from_yaml(cls, path: str | Path) -> "Schema":
        with open(path) as fh:
            return cls.model_validate(yaml.safe_load(fh))

    def to_dict(self) -> dict:
        return self.model_dump(mode="json", exclude_defaults=True)
