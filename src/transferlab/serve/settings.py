"""Service settings: environment variables ``TRANSFERLAB_*``, overridden by CLI flags."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["Settings"]


def _default_data_dir() -> Path:
    import platformdirs

    return Path(platformdirs.user_data_dir("transferlab")) / "service"


class Settings(BaseSettings):
    """Everything the service reads at startup; limits keep a hostile client from exhausting it.

    Each field reads ``TRANSFERLAB_<NAME>`` (e.g. ``TRANSFERLAB_DB_URL``).
    """

    model_config = SettingsConfigDict(env_prefix="TRANSFERLAB_", extra="ignore")

    data_dir: Path = Field(default_factory=_default_data_dir)
    db_url: str | None = Field(
        default=None, description="SQLAlchemy URL; default SQLite in data_dir"
    )
    backbone: str = "efficientnet_lite0"
    layer: str = Field(default="pre_logits", description="default layer of new collections")
    weights: str = "default"
    device: str = "auto"
    precision: Literal["auto", "fp32", "bf16", "int8"] = Field(
        default="auto",
        description="feature precision; int8 (CPU) quantises the ONNX export, calibrated on "
        "calibration_dir's images the first time (stored in the cache folder after that)",
    )
    calibration_dir: Path | None = Field(
        default=None, description="a folder of your own images, to calibrate precision=int8"
    )
    max_upload_bytes: int = Field(default=10 * 1024 * 1024, ge=1)
    max_pixels: int = Field(default=40_000_000, ge=1)
    max_images_per_request: int = Field(default=32, ge=1)
    max_request_bytes: int = Field(
        default=64 * 1024 * 1024, ge=1, description="whole request body at most"
    )
    max_inflight: int = Field(
        default=32, ge=1, description="/v1 requests handled at once; more get 503 at once"
    )
    queue_size: int = Field(default=8, ge=1, description="training jobs waiting at most")
    max_jobs_per_key: int = Field(
        default=2,
        ge=1,
        description="training jobs one key may have queued or running; more get 429, so one "
        "key cannot fill the queue (jobs of different keys also run in turn)",
    )
    setup_token: str | None = Field(
        default=None,
        description="first run: a one-time token with which the web page creates the first "
        "API key (POST /v1/setup); `transferlab serve` makes one and prints the link when "
        "the database has no key",
    )
    max_collections_per_key: int = Field(default=100, ge=1, description="collections per key")
    rate_limit_per_minute: int = Field(
        default=600, ge=0, description="requests per key per minute (bursts up to this); 0: off"
    )
    feature_queue_size: int = Field(default=64, ge=1, description="feature requests waiting")
    batch_size: int = Field(default=32, ge=1)
    batch_wait_ms: float = Field(default=5.0, ge=0)
    request_timeout_s: float = Field(default=120.0, gt=0)
    auto_budget_s: float = Field(
        default=600.0, gt=0, description="kind='auto': seconds when a request names no budget_s"
    )
    max_auto_budget_s: float = Field(
        default=3600.0, gt=0, description="kind='auto': the largest budget_s a request may ask"
    )
    auto_backbones: list[str] = Field(
        default_factory=list,
        description="kind='auto': the backbones it ranks (a JSON list in the environment); "
        "empty: the collection's own backbone only, whose probe predictions then share the "
        "server's batched extractor",
    )
    auto_weights: str | None = Field(
        default=None, description="kind='auto': those backbones' weights (default: `weights`)"
    )
    log_level: str = "INFO"
