"""The feature space: a schema plus what fitting on training data learned (vocabulary sizes, numeric stats).

It is everything a model needs to size its parameters, and it is saved with every run and bundle.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

from untwine.core.schema import Feature, FeatureKind, Schema


@dataclass(frozen=True)
class NumericStats:
    transform: str
    mean: float
    std: float
    min: float
    max: float
    count: int
    missing: int
    # values at probabilities 0, 1/Q, ..., 1 (Q = len - 1) of the raw training values (missing excluded), from a
    # bounded uniform sample: equal-frequency bins and the quantile transform of MNSE read them
    quantiles: tuple[float, ...] = ()
    integer: bool = False  # every training value is a whole number (ordinal / count feature)


@dataclass(frozen=True)
class FeatureSpace:
    schema: Schema
    vocab_sizes: dict[str, int] = field(default_factory=dict)  # per feature name (shared vocabularies repeated)
    numeric_stats: dict[str, NumericStats] = field(default_factory=dict)

    def vocab_size(self, f: Feature | str) -> int:
        name = f if isinstance(f, str) else f.name
        if name not in self.vocab_sizes:
            raise KeyError(f"feature {name!r} has no vocabulary (kind {self.schema.feature(name).kind.value})")
        return self.vocab_sizes[name]

    @property
    def num_tasks(self) -> int:
        return len(self.schema.labels)

    def sparse_features(self) -> list[Feature]:
        """Features that own an embedding table slot range, in table order."""
        return [f for f in self.schema.features
                if f.kind in (FeatureKind.CATEGORICAL, FeatureKind.MULTI_CATEGORICAL, FeatureKind.SEQUENCE)]

    def to_dict(self) -> dict:
        return {"schema": self.schema.to_dict(), "vocab_sizes": dict(self.vocab_sizes),
                "numeric_stats": {k: asdict(v) for k, v in self.numeric_stats.items()}}

    @classmethod
    def from_dict(cls, d: dict) -> "FeatureSpace":
        return cls(schema=Schema.model_validate(d["schema"]), vocab_sizes=dict(d["vocab_sizes"]),
                   numeric_stats={k: NumericStats(**{**v, "quantiles": tuple(v.get("quantiles", ()))})
                                  for k, v in d["numeric_stats"].items()})
