"""Decoding one image file robustly: EXIF orientation, every common mode (greyscale, palette,
RGBA/LA, CMYK, 16-bit, float) made RGB, and every way a file can be broken turned into an
`ImageLoadError` that names the path and the reason."""

from __future__ import annotations

import os
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from struct import error as struct_error  # escapes some Pillow plugins on malformed headers

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from transferlab.exceptions import ImageLoadError

__all__ = [
    "DEFAULT_MAX_ASPECT",
    "DEFAULT_MAX_PIXELS",
    "IMAGE_EXTENSIONS",
    "check_image_shape",
    "is_image_file",
    "load_image",
]

IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".jpe", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
)
#: Pillow's own default limit (~89 Mpx); above it a file is treated as a decompression bomb.
DEFAULT_MAX_PIXELS = 89_478_485
#: Longest side / shortest side beyond which an image is refused before decoding: every
#: network input resizes the short side to about 256 px, which multiplies the long side by the
#: aspect ratio. A 4 x 9,999,999 PNG is 72 KB and 40 M pixels, yet its resize asks for
#: 256 x 640 M pixels (issue 21); at 100:1 the resize stays under 256 x 25,600 (6.6 M pixels,
#: 20 MB), while panoramas (about 10:1) and long scans (about 30:1) pass.
DEFAULT_MAX_ASPECT = 100.0
#: Names tried, in order, for the validation and test splits of an ImageFolder tree.

# Truncated files must fail loudly, not decode as half-grey pictures.
ImageFile.LOAD_TRUNCATED_IMAGES = False


def is_image_file(path: str | os.PathLike[str]) -> bool:
    """True when the file name has an image extension we decode (the content is checked later)."""
    name = os.path.basename(os.fspath(path))
    return not name.startswith(".") and os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def _to_rgb(img: Image.Image) -> Image.Image:
    """Make any Pillow mode RGB, the way a person looking at the picture would expect."""
    mode = img.mode
    if mode in ("L", "RGB") and "transparency" in img.info:
        img = img.convert("RGBA")  # a tRNS colour key: transparent pixels turn white like RGBA's
        mode = "RGBA"
    if mode == "RGB":
        return img
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        # 16-bit and float images: scale by the type's range (16-bit) or the data's range (float,
        # 32-bit int), so a 0..65535 x-ray does not saturate to white.
        arr = np.asarray(img, dtype=np.float64)
        if mode.startswith("I;16") or (
            mode == "I" and arr.max(initial=0) <= 65535 and arr.min(initial=0) >= 0
        ):
            hi = 65535.0 if arr.max(initial=0) > 255 else 255.0
            arr = arr / hi * 255.0
        else:
            lo, hi = float(np.nanmin(arr)), float(np.nanmax(arr))
            arr = (arr - lo) / (hi - lo) * 255.0 if hi > lo else np.zeros_like(arr)
        return Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8), "L").convert("RGB")
    if mode == "P":
        img = img.convert("RGBA") if "transparency" in img.info else img.convert("RGB")
        mode = img.mode
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        # Transparent pixels become white, as in a viewer, rather than whatever colour they hide.
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if mode == "1":
        return img.convert("L").convert("RGB")
    # L, CMYK, YCbCr, LAB, HSV and friends: Pillow knows the conversion.
    return img.convert("RGB")


_PIL_LIMIT_LOCK = threading.Lock()


@contextmanager
def _pil_pixel_limit(max_pixels: int | None) -> Iterator[None]:
    """Let Pillow open images up to `max_pixels` (None: any size); our own check runs right after.

    Pillow refuses images above its global ``MAX_IMAGE_PIXELS`` inside ``Image.open``. When the
    caller allows more, lift that global for this call only (under a lock) and restore it.
    """
    current = Image.MAX_IMAGE_PIXELS
    if current is None or (max_pixels is not None and max_pixels <= current):
        yield
        return
    with _PIL_LIMIT_LOCK:
        Image.MAX_IMAGE_PIXELS = max_pixels
        try:
            yield
        finally:
            Image.MAX_IMAGE_PIXELS = current


def check_image_shape(
    width: int, height: int, *, max_pixels: int | None, max_aspect: float | None
) -> str | None:
    """Why an image of this size must not be decoded (None: it may), from its header alone:
    too many pixels (a decompression bomb), or so elongated that resizing it for a network
    would allocate far more than the image itself."""
    if max_pixels is not None and width * height > max_pixels:
        return (
            f"{width}x{height} = {width * height:,} pixels exceeds the limit of {max_pixels:,} "
            "(possible decompression bomb; raise max_pixels if the image is genuine)"
        )
    short, long = sorted((width, height))
    if max_aspect is not None and (short == 0 or long / short > max_aspect):
        return (
            f"{width}x{height}: an aspect ratio of {long / max(short, 1):,.0f}:1 exceeds "
            f"{max_aspect:g}:1; resizing it for a network would need "
            f"{round(256 * long / max(short, 1)):,} pixels on its long side"
        )
    return None


def load_image(
    path: str | os.PathLike[str],
    *,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    draft_size: int | None = None,
    max_aspect: float | None = DEFAULT_MAX_ASPECT,
) -> Image.Image:
    """Decode one image file into an RGB `PIL.Image`, or raise `ImageLoadError` naming it.

    Handles JPEG, PNG, BMP, GIF (first frame), WebP and TIFF; applies the EXIF orientation;
    converts greyscale, palette, RGBA/LA (over white), CMYK, 16-bit and float images to 8-bit RGB.

    Args:
        path: the image file.
        max_pixels: images with more pixels are refused as possible decompression bombs;
            ``None`` disables the check.
        draft_size: when set, JPEGs are decoded at a reduced scale (1/2, 1/4, 1/8) that keeps
            both sides at least this many pixels: much faster for large photos.
        max_aspect: images whose long side exceeds this many times the short one are refused
            before decoding (`DEFAULT_MAX_ASPECT`); ``None`` disables the check.

    Returns:
        A fully loaded RGB image (the file is closed).

    Raises:
        ImageLoadError: the file is missing, unreadable, empty, not an image, truncated or
            corrupt, or too large. ``err.path`` and ``err.reason`` say which and why.

    Example:
        >>> from skimage import data as skdata
        >>> import tempfile, os
        >>> from PIL import Image
        >>> p = os.path.join(tempfile.mkdtemp(), "grey.png")
        >>> Image.fromarray(skdata.camera()).save(p)
        >>> load_image(p).mode
        'RGB'
    """
    p = os.fspath(path)
    try:
        st = os.stat(p)
    except FileNotFoundError:
        raise ImageLoadError(p, "file not found (or a broken link)") from None
    except OSError as exc:
        raise ImageLoadError(p, f"cannot read: {exc.strerror or exc}") from None
    if not os.path.isfile(p):
        raise ImageLoadError(p, "not a regular file")
    if st.st_size == 0:
        raise ImageLoadError(p, "empty file (0 bytes)")
    try:
        with warnings.catch_warnings(), _pil_pixel_limit(max_pixels):
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(p) as img:
                w, h = img.size
                why = check_image_shape(w, h, max_pixels=max_pixels, max_aspect=max_aspect)
                if why is not None:
                    raise ImageLoadError(p, why)
                if draft_size is not None and img.format == "JPEG":
                    img.draft(
                        img.mode if img.mode in ("RGB", "L") else None, (draft_size, draft_size)
                    )
                if getattr(img, "n_frames", 1) > 1:
                    img.seek(0)
                img.load()
                img = ImageOps.exif_transpose(img) or img
                return _to_rgb(img)
    except ImageLoadError:
        raise
    except PermissionError as exc:
        raise ImageLoadError(p, f"cannot read: {exc.strerror or 'permission denied'}") from None
    except UnidentifiedImageError:
        raise ImageLoadError(p, "not an image, or a format Pillow cannot decode") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageLoadError(p, f"possible decompression bomb: {exc}") from None
    except (OSError, SyntaxError, ValueError, EOFError, IndexError, TypeError, struct_error) as exc:
        msg = str(exc) or type(exc).__name__
        if "truncated" in msg.lower():
            msg = f"truncated file ({msg})"
        raise ImageLoadError(p, f"corrupt image: {msg}") from None
    except MemoryError:
        raise ImageLoadError(p, "image too large to decode in memory") from None
