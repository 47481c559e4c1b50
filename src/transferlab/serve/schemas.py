"""Request and response bodies (pydantic), in Create/Public families."""

from __future__ import annotations

import datetime as dt
from collections import Counter
from collections.abc import Sequence
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    StrictBool,
    Tag,
    field_validator,
)

__all__ = [
    "AuditResponse",
    "ChosenCandidate",
    "CollectionCreate",
    "CollectionPublic",
    "ExamplePublic",
    "FeatureImage",
    "FeaturesJSON",
    "FeaturesResponse",
    "HealthResponse",
    "JobPublic",
    "JobResult",
    "PoolImagePublic",
    "PoolLabel",
    "PredictResponse",
    "Suggestion",
    "SuggestionsResponse",
    "TrainRequest",
]


def _utc(value: dt.datetime) -> dt.datetime:
    """The database keeps UTC without a zone; answers say so (RFC 3339 needs the offset)."""
    return value.replace(tzinfo=dt.timezone.utc) if value.tzinfo is None else value


#: a date-time in UTC, with its zone in the answer ("...Z")
UtcDateTime = Annotated[dt.datetime, AfterValidator(_utc)]


class HealthResponse(BaseModel):
    status: Literal["ok"] = "ok"
    version: str
    backbone: str
    layers: list[str]
    schema_version: int


class FeatureImage(BaseModel):
    name: str | None = Field(default=None, max_length=200, description="echoed back")
    data: str = Field(description="the image file's bytes, base64-encoded")


class FeaturesJSON(BaseModel):
    images: list[FeatureImage] = Field(min_length=1)
    layer: str | None = None
    backbone: str | None = None


class ItemError(BaseModel):
    """Why one image of a request has no result; the other images are not affected."""

    status: int = Field(description="the HTTP status this image alone would have got")
    error: str = Field(description="machine code: bad_image, too_many_pixels, unsupported_image")
    detail: str


class FeatureVector(BaseModel):
    name: str | None
    dim: int | None = Field(description="null when this image failed (see error)")
    vector: list[float] | None = Field(description="null when this image failed (see error)")
    error: ItemError | None = Field(default=None, description="set when this image failed")


class FeaturesResponse(BaseModel):
    backbone: str
    layer: str
    features: list[FeatureVector]


class CollectionCreate(BaseModel):
    name: str = Field(min_length=1, max_length=200)

    @field_validator("name")
    @classmethod
    def _printable(cls, v: str) -> str:
        # control characters (NUL above all) are refused by PostgreSQL and garble the page
        if not v.isprintable():
            raise ValueError("must contain printable characters only")
        return v

    #: strictly true or false: "yes" or 1 is a client's mistake to name, not to guess at
    multi_label: StrictBool = False
    backbone: str | None = Field(default=None, description="default: the server's backbone")
    layer: str | None = Field(default=None, description="default: the server's layer")


class _CollectionRow(BaseModel):
    """A collection's stored fields, read from its ORM row as the other Public models are."""

    id: str
    name: str
    multi_label: bool
    backbone: str
    layer: str
    created: UtcDateTime


class CollectionPublic(_CollectionRow):
    n_examples: int
    labels: dict[str, int] = Field(description="label -> number of examples")
    model: dict[str, Any] | None = Field(description="latest trained model, if any")

    @classmethod
    def of(
        cls,
        coll: Any,
        example_labels: Sequence[Sequence[str]],
        model: Any | None,
        example_ids: Sequence[str] | None = None,
    ) -> CollectionPublic:
        """The response for the ORM row `coll`, given its examples' labels (and ids) and its
        latest trained model (a `StoredModel` row, or None)."""
        counts = Counter(lab for labels in example_labels for lab in labels)
        trained_on = (model.metrics or {}).get("examples_digest") if model is not None else None
        return cls(
            **dict(_CollectionRow.model_validate(coll, from_attributes=True)),
            n_examples=len(example_labels),
            labels=dict(sorted(counts.items())),
            model=None
            if model is None
            else {
                "id": model.id,
                "job_id": model.job_id,
                "classes": model.classes,
                "created": _utc(model.created).isoformat(),
                "accuracy": model.metrics.get("accuracy"),
                "chosen": _chosen(model.metrics),
                # examples were added, relabelled or deleted since it was trained
                "out_of_date": bool(
                    trained_on
                    and example_ids is not None
                    and trained_on != examples_digest(example_ids, example_labels)
                ),
            },
        )


def examples_digest(ids: Sequence[str], labels: Sequence[Sequence[str]]) -> str:
    """What a model was trained on, in one string: the examples' ids with their labels."""
    import hashlib
    import json

    rows = sorted([str(i), sorted(lab)] for i, lab in zip(ids, labels, strict=True))
    return hashlib.sha256(json.dumps(rows).encode()).hexdigest()


class ExamplePublic(BaseModel):
    id: str
    labels: list[str]
    image_sha256: str
    dim: int
    created: UtcDateTime


class PoolImagePublic(BaseModel):
    """An unlabelled image waiting in a collection's pool."""

    id: str
    name: str
    image_sha256: str
    dim: int
    created: UtcDateTime


class PoolLabel(BaseModel):
    """The label(s) a person gave a pool image: it becomes an example."""

    model_config = ConfigDict(extra="forbid")

    labels: list[Annotated[str, Field(min_length=1, max_length=100)]] = Field(
        min_length=1, max_length=50
    )


class Suggestion(BaseModel):
    rank: int
    pool_image_id: str
    name: str
    score: float | None = Field(description="the probe's margin (lower: less sure), or typicality")
    predicted: str | None = Field(description="the probe's guess, to pre-fill the label")


class SuggestionsResponse(BaseModel):
    strategy: str
    why: str
    n_examples: int
    n_pool: int
    suggestions: list[Suggestion]


class AuditResponse(BaseModel):
    """What `transferlab audit` finds, on a collection's stored features: copies of one image,
    near-identical examples, likely label errors and outliers, worst first."""

    n_examples: int
    label_counts: dict[str, int]
    imbalance_ratio: float | None
    duplicates: list[dict[str, Any]] = Field(
        description="groups of examples of the same file or near-identical features"
    )
    pool_already_labelled: list[str] = Field(description="pool image ids that are examples too")
    label_issues: list[dict[str, Any]]
    label_issues_note: str
    outliers: list[dict[str, Any]]


class ProbeTrain(BaseModel):
    """``linear_probe`` (the default): seconds, on the stored features."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["linear_probe"] = "linear_probe"


class FinetuneTrain(BaseModel):
    """``finetune``: minutes; the backbone itself is trained on the stored images."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["finetune"]
    epochs: int | None = Field(default=None, ge=1, le=50, description="default 3")
    image_size: int | None = Field(
        default=None, ge=32, le=512, description="input size (default: the backbone's)"
    )


class AutoTrain(BaseModel):
    """``auto`` (`transferlab auto`): ranks backbone layers, tries the fine-tune recipes that
    fit `budget_s`, keeps the best on held-out images; single-label, 3+ images of each label."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["auto"]
    budget_s: float | None = Field(
        default=None,
        gt=0,
        allow_inf_nan=False,
        description="wall-clock seconds for the whole run (default: the server's "
        "auto_budget_s, 600; at most its max_auto_budget_s, 3600, else 422)",
    )


def _train_kind(value: Any) -> str:
    kind = (
        value.get("kind", "linear_probe")
        if isinstance(value, dict)
        else getattr(value, "kind", None)
    )
    return kind if kind in ("linear_probe", "finetune", "auto") else "linear_probe"


#: what ``POST .../train`` takes: one shape per kind, each with only its own fields, so a
#: field of another kind is refused by the schema itself (`kind` left out: a linear probe)
TrainRequest = Annotated[
    Annotated[ProbeTrain, Tag("linear_probe")]
    | Annotated[FinetuneTrain, Tag("finetune")]
    | Annotated[AutoTrain, Tag("auto")],
    Discriminator(_train_kind),
]


class ChosenCandidate(BaseModel):
    name: str = Field(description="e.g. 'probe efficientnet_lite0/stage5'")
    kind: Literal["probe", "finetune"]


class JobResult(BaseModel):
    """The model a succeeded job trained (the collection's model until the next one)."""

    model_id: int
    accuracy: float | None = Field(description="validation (or cross-validated) accuracy")
    chosen: ChosenCandidate | None = Field(default=None, description="auto: what it kept")


class JobPublic(BaseModel):
    id: str
    collection_id: str
    kind: str
    status: str
    progress: float
    message: str | None
    error: str | None
    created: UtcDateTime
    updated: UtcDateTime
    result: JobResult | None = Field(default=None, description="when succeeded")

    @classmethod
    def of(cls, job: Any, model: Any | None = None) -> JobPublic:
        """The response for the ORM row `job`, with the `StoredModel` row it trained, if any."""
        out = cls.model_validate(job, from_attributes=True)
        if model is not None:
            chosen = _chosen(model.metrics)
            out.result = JobResult(
                model_id=model.id,
                accuracy=model.metrics.get("accuracy"),
                chosen=ChosenCandidate.model_validate(chosen) if chosen else None,
            )
        return out


def _chosen(metrics: dict[str, Any]) -> dict[str, str] | None:
    """An auto model's chosen candidate (name and kind) from its metrics; None for the others."""
    chosen = metrics.get("chosen")
    if not isinstance(chosen, dict):
        return None
    return {"name": str(chosen.get("name")), "kind": str(chosen.get("kind"))}


class LabelProbability(BaseModel):
    label: str
    probability: float


class PredictResponse(BaseModel):
    label: str | None = Field(description="top label, 'uncertain' under the threshold")
    probability: float | None
    uncertain: bool
    labels: list[str] | None = Field(default=None, description="multi-label: labels that are on")
    top: list[LabelProbability]
    model_id: int
