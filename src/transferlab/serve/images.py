"""Upload checks: size, type sniffed from the bytes (never the name or Content-Type), pixel count.

An upload that passes is written content-addressed by the `Store`, then fully decoded by
`transferlab.data.load_image` (the library's own robust reader) before anything else uses it.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path
from typing import BinaryIO

from PIL import Image, UnidentifiedImageError

from transferlab.data import DEFAULT_MAX_ASPECT, check_image_shape, load_image
from transferlab.exceptions import ImageLoadError
from transferlab.serve.errors import ApiError
from transferlab.serve.store import IMAGE_FORMATS, Store

__all__ = ["read_limited", "sniff_image", "store_image", "temp_image"]


def read_limited(fh: BinaryIO, limit: int, name: str) -> bytes:
    """Read at most `limit` bytes; 413 when there are more, 400 when there are none."""
    data = fh.read(limit + 1)
    if len(data) > limit:
        raise ApiError(413, f"{name}: upload exceeds the limit of {limit:,} bytes")
    if not data:
        raise ApiError(400, f"{name}: empty file (0 bytes)", "bad_image")
    return data


def sniff_image(data: bytes, name: str, max_pixels: int) -> str:
    """The extension to store the image under, from its content; raises 413/415 otherwise."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as img:
                fmt, (w, h) = img.format, img.size
    except Image.DecompressionBombError as exc:
        raise ApiError(413, f"{name}: too many pixels ({exc})", "too_many_pixels") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError):
        raise ApiError(
            415,
            f"{name}: not an image in a supported format ({', '.join(IMAGE_FORMATS)})",
            "unsupported_image",
        ) from None
    if fmt not in IMAGE_FORMATS:
        raise ApiError(
            415,
            f"{name}: image format {fmt} is not accepted; use one of {', '.join(IMAGE_FORMATS)}",
            "unsupported_image",
        )
    if w * h > max_pixels:
        raise ApiError(
            413,
            f"{name}: {w}x{h} = {w * h:,} pixels exceeds the limit of {max_pixels:,}",
            "too_many_pixels",
        )
    # the work a network input asks for, not only the input: a thin strip is small on disk
    # and in pixels, but its resize to the model's size is not (issue 21)
    why = check_image_shape(w, h, max_pixels=None, max_aspect=DEFAULT_MAX_ASPECT)
    if why is not None:
        raise ApiError(413, f"{name}: {why}", "too_many_pixels")
    return IMAGE_FORMATS[fmt]


def store_image(store: Store, data: bytes, name: str, max_pixels: int) -> tuple[str, str, Path]:
    """Check, store content-addressed and decode once; returns (sha256, ext, path)."""
    ext = sniff_image(data, name, max_pixels)
    sha, path = store.put_image(data, ext)
    try:
        load_image(path, max_pixels=max_pixels)
    except ImageLoadError as exc:
        store.drop_image_if_unused(sha, ext)
        raise ApiError(400, f"{name}: image cannot be decoded: {exc.reason}", "bad_image") from None
    return sha, ext, path


def temp_image(store: Store, data: bytes, name: str, max_pixels: int) -> Path:
    """Check and write a throw-away copy (for /v1/features); the caller deletes it."""
    import uuid

    ext = sniff_image(data, name, max_pixels)
    path = store.data_dir / "tmp" / f"{uuid.uuid4().hex}.{ext}"
    path.write_bytes(data)
    return path
