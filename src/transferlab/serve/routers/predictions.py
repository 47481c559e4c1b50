"""A collection's trained model: predictions for an uploaded image, and the model as a zip."""

from __future__ import annotations

import json
import shutil
import threading
import uuid
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import APIRouter, File, Form, Query, UploadFile
from fastapi.responses import FileResponse
from starlette.background import BackgroundTask

from transferlab.serve.batcher import BatchedExtractor
from transferlab.serve.deps import OwnedCollection, Services, ServicesDep
from transferlab.serve.errors import ApiError
from transferlab.serve.images import read_limited, temp_image
from transferlab.serve.routers._common import check_backbone, latest_model, one_file
from transferlab.serve.schemas import PredictResponse
from transferlab.serve.store import StoredModel

__all__ = ["router"]

router = APIRouter(prefix="/v1/collections", tags=["collections"])

MAX_LOADED_MODELS = 16


def _load_model(services: Services, row: StoredModel, layer: str) -> Any:
    """A predictor for a stored model (LRU-cached): a probe on the server's backbone shares
    the batched extractor; a fine-tune, or a probe on another backbone, loads its own."""
    from transferlab.exceptions import TransferlabError
    from transferlab.models import TransferModel, load_model, read_probe

    with services.models_lock:
        if row.id in services.models:
            services.models.move_to_end(row.id)
            return services.models[row.id]
    root = Path(row.path)
    model: Any
    try:
        meta = json.loads((root / "model.json").read_text())
        if meta.get("kind") == "finetuned":
            # a whole network of its own: it runs in the request's thread, not the batcher
            model = load_model(root, device=services.settings.device, progress=False)
        elif not _reads_batcher(meta, services):
            # a probe on another backbone, precision or pool (kind='auto' may pick one): its
            # own extractor, one request at a time (its layer hooks are not thread-safe)
            model = _OneAtATime(load_model(root, device=services.settings.device, progress=False))
        else:
            probe = read_probe(root / meta["probe"]["file"])  # never a pickle
            timeout = services.settings.request_timeout_s
            shared = BatchedExtractor(services.batcher, meta.get("layer", layer), timeout)
            model = TransferModel(
                shared,  # type: ignore[arg-type]
                probe,
                row.metrics,
                classes=meta["classes"],
            )
            model.temperature = float(meta.get("calibration", {}).get("temperature", 1.0))
    except (OSError, ValueError, KeyError, TransferlabError) as exc:
        raise ApiError(
            409, f"the trained model's files are missing or damaged ({exc}); train again"
        ) from None
    model.collection_id = row.collection_id
    with services.models_lock:
        services.models[row.id] = model
        while len(services.models) > MAX_LOADED_MODELS:
            services.models.popitem(last=False)
    return model


def _reads_batcher(meta: dict[str, Any], services: Services) -> bool:
    """Whether a saved probe reads exactly the vectors the server's batched extractor computes
    (same backbone and weights, precision and pool; any of its layers): then it shares it."""
    fx = services.batcher.extractor
    card = fx._card()
    bb = meta.get("backbone", {})
    return (
        bb.get("name") == card.name
        and bb.get("weights_sha256") == card.weights_sha256
        and meta.get("precision", "fp32") == fx._precision()
        and meta.get("pool") == fx.pool
    )


class _OneAtATime:
    """A loaded model whose `predict_paths` runs for one request at a time."""

    def __init__(self, model: Any) -> None:
        self.model = model
        self._lock = threading.Lock()

    def predict_paths(self, *args: Any, **kwargs: Any) -> Any:
        with self._lock:
            return self.model.predict_paths(*args, **kwargs)


@router.post("/{collection_id}/predict", response_model=PredictResponse)
def predict(
    coll: OwnedCollection,
    services: ServicesDep,
    file: Annotated[list[UploadFile], File(description="the image (exactly one)")],
    top_k: Annotated[int, Form(ge=1, le=100)] = 3,
    threshold: Annotated[float | None, Form(ge=0, le=1)] = None,
) -> PredictResponse:
    """Top-k labels with calibrated probabilities; ``uncertain`` when the best is under
    `threshold`."""
    upload = one_file(file)
    with services.store.session() as s:
        row = latest_model(s, coll.id)
    if row is None:
        raise ApiError(
            409,
            "this collection has no trained model yet; POST /v1/collections/{id}/train first",
            "not_trained",
        )
    check_backbone(services, coll)
    model = _load_model(services, row, coll.layer)
    settings = services.settings
    name = upload.filename or "file"
    data = read_limited(upload.file, settings.max_upload_bytes, name)
    path = temp_image(services.store, data, name, settings.max_pixels)
    try:
        (pred,) = model.predict_paths([str(path)], top_k=top_k, threshold=threshold)
    finally:
        path.unlink(missing_ok=True)
    if pred.error:
        raise ApiError(400, f"{name}: image cannot be decoded: {pred.error}", "bad_image")
    return PredictResponse(
        label=pred.label,
        probability=pred.probability,
        uncertain=pred.uncertain,
        labels=pred.labels,
        top=[{"label": c, "probability": p} for c, p in pred.top],  # type: ignore[misc]
        model_id=row.id,
    )


@router.get("/{collection_id}/model", response_class=FileResponse)
def export_model(
    coll: OwnedCollection,
    services: ServicesDep,
    format: Annotated[Literal["dir", "onnx"], Query(description="dir or onnx")] = "dir",
) -> FileResponse:
    """The latest trained model as a zip: ``dir``, the model directory (loadable with
    `transferlab predict`); ``onnx``, ``model.onnx`` (image tensor in, probabilities out) and
    ``preprocessing.json``, for any ONNX runtime."""
    with services.store.session() as s:
        row = latest_model(s, coll.id)
    if row is None or not Path(row.path).is_dir():
        raise ApiError(409, "this collection has no trained model yet", "not_trained")
    base = services.store.data_dir / "tmp" / uuid.uuid4().hex
    root = row.path
    if format == "onnx":
        from transferlab.models import export_onnx, load_model

        root = str(base) + "-onnx"
        export_onnx(load_model(row.path, device="cpu", progress=False), root)
    try:
        archive = Path(shutil.make_archive(str(base), "zip", root_dir=root))
    finally:
        if format == "onnx":
            shutil.rmtree(root, ignore_errors=True)
    return FileResponse(
        archive,
        media_type="application/zip",
        filename=f"model-{coll.id}-{row.id}{'-onnx' if format == 'onnx' else ''}.zip",
        background=BackgroundTask(archive.unlink, missing_ok=True),
    )
