"""The wire contract of ``untwine serve``: request/response models and the :class:`Funnel` protocol.

The HTTP app (:mod:`untwine.serving.app`) depends only on this module, never on the concrete funnel,
so the service, its tests and the load-test harness work with any object that has this shape.

Every request model is strict (``extra="forbid"``, no str->int coercion) and bounded: id strings,
list lengths and the number of user features are capped, so a request cannot make the funnel
allocate without limit. The body-size middleware of the app bounds the total bytes before parsing.
"""
from __future__ import annotations

from typing import Annotated, Any, Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from untwine.data.readers import BadInputError

__all__ = [
    "BadInputError", "Funnel", "MAX_CANDIDATES", "MAX_EXCLUDE", "MAX_HISTORY", "MAX_K", "RecommendRequest",
    "RecommendResponse", "RecommendedItem", "ReloadRequest", "ScoreRequest", "ScoreResponse",
]

MAX_HISTORY = 500
MAX_K = 200
MAX_CANDIDATES = 2000
MAX_EXCLUDE = 2000
MAX_USER_FEATURES = 256
MAX_FEATURE_LIST = 1000
MAX_ID_CHARS = 256

ItemId = Annotated[str, StringConstraints(min_length=1, max_length=MAX_ID_CHARS)]
# A raw feature value as it arrives in JSON: the funnel's encoder decides whether "3" and 3 are the same
# category, so the contract keeps what the client sent (smart-mode union: a JSON string stays a str).
FeatureScalar = Annotated[str, StringConstraints(max_length=4096)] | int | float | bool | None
FeatureValue = FeatureScalar | Annotated[list[FeatureScalar], Field(max_length=MAX_FEATURE_LIST)]
UserFeatures = Annotated[dict[Annotated[str, StringConstraints(min_length=1, max_length=MAX_ID_CHARS)],
                              FeatureValue], Field(max_length=MAX_USER_FEATURES)]


class _Strict(BaseModel):
    # strict: "k": "20" is a client bug worth a 422, not something to paper over
    model_config = ConfigDict(extra="forbid", strict=True)


class RecommendRequest(_Strict):
    """Ask for the top ``k`` items for one user, through recall -> prerank -> rank -> re-rank."""

    user: UserFeatures = Field(description="raw user/context feature values keyed by column name")
    history: Annotated[list[ItemId], Field(max_length=MAX_HISTORY)] = Field(
        description="recent item ids, most recent last")
    k: int = Field(default=20, ge=1, le=MAX_K)
    exclude: Annotated[list[ItemId], Field(max_length=MAX_EXCLUDE)] = Field(default_factory=list)
    debug: bool = False


class ScoreRequest(_Strict):
    """Score caller-chosen candidates with the ranking model only (no recall, no re-rank)."""

    user: UserFeatures
    history: Annotated[list[ItemId], Field(max_length=MAX_HISTORY)]
    items: Annotated[list[ItemId], Field(min_length=1, max_length=MAX_CANDIDATES)]


class ReloadRequest(_Strict):
    """Body of ``POST /admin/reload``; without it the current bundle path is loaded again."""

    path: Annotated[str, StringConstraints(min_length=1, max_length=4096)] | None = None


class RecommendedItem(BaseModel):
    item_id: str
    score: float
    channel: str = Field(description="recall channel that proposed the item, e.g. 'two_tower', 'itemcf'")


class RecommendResponse(BaseModel):
    items: list[RecommendedItem]
    timings_ms: dict[str, float] = Field(
        default_factory=dict, description="per stage: recall, prerank, rank, rerank, total (the app adds queue)")
    bundle: str = Field(description="id/version of the bundle that served the request")
    request_id: str = Field(default="", description="filled by the app from X-Request-ID or a fresh id")
    debug: dict[str, Any] | None = Field(default=None, description="per-stage details when the request set debug")


class ScoreResponse(BaseModel):
    scores: list[float] = Field(description="aligned with the request's items")
    unknown_items: list[str] = Field(default_factory=list, description="ids scored through the OOV embedding")
    bundle: str
    timings_ms: dict[str, float] = Field(default_factory=dict)


@runtime_checkable
class Funnel(Protocol):
    """What the app needs from a loaded bundle. Implementations must be safe to call from many threads.

    ``recommend`` and ``score`` raise :class:`BadInputError` (``untwine.data.readers``) for input that
    passes the schema but is semantically wrong (a feature value of the wrong type, an unknown column):
    the app answers 422 with its message. Any other exception is a 500.

    ``describe()`` feeds ``/health`` and the ``untwine_bundle_items`` gauge; it is called once per load,
    so it should describe the bundle, not live state. Conventional keys: ``items`` (int, number of
    servable items), ``channels`` (list of recall channel names), ``models`` (model names per stage).
    """

    bundle_id: str

    def recommend(self, req: RecommendRequest) -> RecommendResponse: ...

    def score(self, req: ScoreRequest) -> ScoreResponse: ...

    def describe(self) -> dict[str, Any]: ...
