"""Request and response bodies (pydantic), in Create/Public families."""

from __future__ import annotations

import datetime as dt
from collections import Counter
from collections.abc import Sequence
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

__all__ = [
    "CollectionCreate",
    "CollectionPublic",
    "ExamplePublic",
    "FeatureImage",
    "FeaturesJSON",
    "FeaturesResponse",
    "HealthResponse",
    "JobPublic",
    "PredictResponse",
    "TrainRequest",
]


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


class FeatureVector(BaseModel):
    name: str | None
    dim: int
    vector: list[float]


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

    multi_label: bool = False
    backbone: str | None = Field(default=None, description="default: the server's backbone")
    layer: str | None = Field(default=None, description="default: the server's layer")


class _CollectionRow(BaseModel):
    """A collection's stored fields, read from its ORM row as the other Public models are."""

    id: str
    name: str
    multi_label: bool
    backbone: str
    layer: str
    created: dt.datetime


class CollectionPublic(_CollectionRow):
    n_examples: int
    labels: dict[str, int] = Field(description="label -> number of examples")
    model: dict[str, Any] | None = Field(description="latest trained model, if any")

    @classmethod
    def of(
        cls, coll: Any, example_labels: Sequence[Sequence[str]], model: Any | None
    ) -> CollectionPublic:
        """The response for the ORM row `coll`, given its examples' labels and its latest
        trained model (a `StoredModel` row, or None)."""
        counts = Counter(lab for labels in example_labels for lab in labels)
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
                "created": model.created.isoformat(),
                "accuracy": model.metrics.get("accuracy"),
            },
        )


class ExamplePublic(BaseModel):
    id: str
    labels: list[str]
    image_sha256: str
    dim: int
    created: dt.datetime


class TrainRequest(BaseModel):
    """``linear_probe`` (default: seconds, on the stored features) or ``finetune`` (minutes:
    the backbone itself is trained on the stored images; the other fields apply to it only)."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["linear_probe", "finetune"] = "linear_probe"
    epochs: int | None = Field(default=None, ge=1, le=50, description="finetune: default 3")
    image_size: int | None = Field(
        default=None, ge=32, le=512, description="finetune: input size (default: the backbone's)"
    )


class JobPublic(BaseModel):
    id: str
    collection_id: str
    kind: str
    status: str
    progress: float
    message: str | None
    error: str | None
    created: dt.datetime
    updated: dt.datetime


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
