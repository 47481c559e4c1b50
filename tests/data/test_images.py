"""load_image: every format and mode decodes to RGB; every broken file is an ImageLoadError."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.data._files import BLUE, IS_ROOT, RED, WHITE, _close, _save_png
from transferlab.data import load_image
from transferlab.exceptions import ImageLoadError

# --------------------------------------------------------------------------------------------
# load_image: formats and modes
# --------------------------------------------------------------------------------------------

COLOUR = (200, 40, 90)


@pytest.mark.parametrize(
    ("ext", "save_kwargs", "tol"),
    [
        (".jpg", {"quality": 95}, 12),
        (".png", {}, 0),
        (".bmp", {}, 0),
        (".gif", {}, 10),
        (".webp", {"lossless": True}, 0),
        (".tif", {}, 0),
    ],
    ids=["jpeg", "png", "bmp", "gif", "webp", "tiff"],
)
def test_load_image_formats_decode_to_rgb(tmp_path, ext, save_kwargs, tol):
    p = tmp_path / f"img{ext}"
    Image.new("RGB", (24, 16), COLOUR).save(p, **save_kwargs)
    img = load_image(p)
    assert isinstance(img, Image.Image)
    assert img.mode == "RGB"
    assert img.size == (24, 16)
    assert _close(img.getpixel((12, 8)), COLOUR, tol), img.getpixel((12, 8))


def test_load_image_accepts_str_path(tmp_path):
    p = _save_png(tmp_path / "a.png", RED)
    img = load_image(str(p))
    assert img.mode == "RGB"
    assert img.getpixel((0, 0)) == RED


def test_load_image_animated_gif_gives_first_frame(tmp_path):
    p = tmp_path / "anim.gif"
    frames = [Image.new("RGB", (10, 6), c) for c in (RED, BLUE, (0, 255, 0))]
    frames[0].save(p, save_all=True, append_images=frames[1:], duration=50, loop=0)
    with Image.open(p) as check:
        assert check.n_frames >= 2  # the test is only meaningful on a real animation
    img = load_image(p)
    assert img.mode == "RGB"
    assert img.size == (10, 6)
    assert _close(img.getpixel((5, 3)), RED, 10), img.getpixel((5, 3))


def test_load_image_animated_gif_first_frame_even_if_later_frames_differ_in_size(tmp_path):
    p = tmp_path / "anim2.gif"
    first = Image.new("RGB", (12, 8), BLUE)
    second = Image.new("RGB", (12, 8), RED)
    second.paste(Image.new("RGB", (4, 4), (0, 255, 0)), (0, 0))
    first.save(p, save_all=True, append_images=[second], duration=50)
    img = load_image(p)
    assert img.size == (12, 8)
    assert _close(img.getpixel((1, 1)), BLUE, 10)
    assert _close(img.getpixel((10, 6)), BLUE, 10)


def test_load_image_greyscale_L(tmp_path):
    p = tmp_path / "grey.png"
    arr = np.array([[0, 77, 255]], dtype=np.uint8)
    Image.fromarray(arr, "L").save(p)
    img = load_image(p)
    assert img.mode == "RGB"
    assert img.size == (3, 1)
    assert [img.getpixel((x, 0)) for x in range(3)] == [(0, 0, 0), (77, 77, 77), WHITE]


def _palette_image() -> Image.Image:
    img = Image.new("P", (4, 2), 0)
    palette = [0, 0, 255, 255, 0, 0] + [0] * (256 * 3 - 6)  # index 0 blue, index 1 red
    img.putpalette(palette)
    img.putpixel((1, 0), 1)
    return img


def test_load_image_palette_without_transparency(tmp_path):
    p = tmp_path / "pal.png"
    _palette_image().save(p)
    with Image.open(p) as check:
        assert check.mode == "P"
        assert "transparency" not in check.info
    img = load_image(p)
    assert img.mode == "RGB"
    assert img.size == (4, 2)
    assert img.getpixel((0, 0)) == BLUE
    assert img.getpixel((1, 0)) == RED


@pytest.mark.parametrize("ext", [".png", ".gif"])
def test_load_image_palette_with_transparency_is_white(tmp_path, ext):
    p = tmp_path / f"pal_t{ext}"
    _palette_image().save(p, transparency=0)
    with Image.open(p) as check:
        assert check.mode == "P"
        assert "transparency" in check.info
    img = load_image(p)
    assert img.mode == "RGB"
    assert img.size == (4, 2)
    assert img.getpixel((0, 0)) == WHITE  # transparent index, was blue underneath
    assert img.getpixel((1, 0)) == RED


def test_load_image_rgba_transparent_becomes_white_opaque_stays(tmp_path):
    p = tmp_path / "rgba.png"
    img = Image.new("RGBA", (3, 2), (0, 0, 255, 0))  # fully transparent blue
    img.putpixel((1, 0), (255, 0, 0, 255))  # opaque red
    img.putpixel((2, 0), (0, 0, 0, 128))  # half-transparent black over white -> mid grey
    img.save(p)
    out = load_image(p)
    assert out.mode == "RGB"
    assert out.size == (3, 2)
    assert out.getpixel((0, 0)) == WHITE
    assert out.getpixel((0, 1)) == WHITE
    assert out.getpixel((1, 0)) == RED
    assert _close(out.getpixel((2, 0)), (127, 127, 127), 2)


def test_load_image_la_transparent_becomes_white(tmp_path):
    p = tmp_path / "la.png"
    img = Image.new("LA", (2, 2), (0, 0))  # transparent black
    img.putpixel((1, 0), (80, 255))  # opaque grey
    img.save(p)
    with Image.open(p) as check:
        assert check.mode == "LA"
    out = load_image(p)
    assert out.mode == "RGB"
    assert out.size == (2, 2)
    assert out.getpixel((0, 0)) == WHITE
    assert out.getpixel((1, 0)) == (80, 80, 80)


@pytest.mark.parametrize("ext", [".jpg", ".tif"])
def test_load_image_cmyk(tmp_path, ext):
    p = tmp_path / f"cmyk{ext}"
    img = Image.new("CMYK", (10, 6), (0, 255, 255, 0))  # red
    img.paste((0, 0, 0, 0), (5, 0, 10, 6))  # right half white
    img.save(p)
    with Image.open(p) as check:
        assert check.mode == "CMYK"
    out = load_image(p)
    assert out.mode == "RGB"
    assert out.size == (10, 6)
    tol = 12 if ext == ".jpg" else 0
    assert _close(out.getpixel((1, 3)), RED, tol), out.getpixel((1, 3))
    assert _close(out.getpixel((8, 3)), WHITE, tol), out.getpixel((8, 3))


def test_load_image_16bit_greyscale_scaled_not_saturated(tmp_path):
    p = tmp_path / "x16.png"
    arr = np.array([[0, 32768, 65535, 1000]], dtype=np.uint16)
    Image.fromarray(arr).save(p)
    with Image.open(p) as check:
        assert check.mode.startswith("I;16")
    out = load_image(p)
    assert out.mode == "RGB"
    assert out.size == (4, 1)
    assert out.getpixel((0, 0)) == (0, 0, 0)
    assert _close(out.getpixel((1, 0)), (128, 128, 128), 1)
    assert out.getpixel((2, 0)) == WHITE
    assert _close(out.getpixel((3, 0)), (4, 4, 4), 1)  # 1000/65535*255, not saturated to 255


def test_load_image_1bit(tmp_path):
    p = tmp_path / "bw.png"
    img = Image.new("1", (5, 3), 0)
    img.putpixel((2, 1), 1)
    img.save(p)
    with Image.open(p) as check:
        assert check.mode == "1"
    out = load_image(p)
    assert out.mode == "RGB"
    assert out.size == (5, 3)
    assert out.getpixel((0, 0)) == (0, 0, 0)
    assert out.getpixel((2, 1)) == WHITE


def test_load_image_float_tiff_scaled_by_data_range(tmp_path):
    p = tmp_path / "f.tif"
    arr = np.array([[-2.0, 0.0, 2.0], [1.0, -1.0, 0.0]], dtype=np.float32)
    Image.fromarray(arr).save(p)
    with Image.open(p) as check:
        assert check.mode == "F"
    out = load_image(p)
    assert out.mode == "RGB"
    assert out.size == (3, 2)
    assert out.getpixel((0, 0)) == (0, 0, 0)
    assert _close(out.getpixel((1, 0)), (128, 128, 128), 1)
    assert out.getpixel((2, 0)) == WHITE


def test_load_image_constant_float_tiff_does_not_divide_by_zero(tmp_path):
    p = tmp_path / "flat.tif"
    Image.fromarray(np.full((3, 4), 7.5, dtype=np.float32)).save(p)
    out = load_image(p)
    assert out.mode == "RGB"
    assert out.size == (4, 3)
    assert np.unique(np.asarray(out)).size == 1


def test_load_image_applies_exif_orientation(tmp_path):
    p = tmp_path / "rot.jpg"
    img = Image.new("RGB", (40, 20), RED)
    img.paste(BLUE, (20, 0, 40, 20))  # left half red, right half blue as stored
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    img.save(p, exif=exif, quality=95)
    with Image.open(p) as check:
        assert check.size == (40, 20)
        assert check.getexif().get(0x0112) == 6
    out = load_image(p)
    assert out.mode == "RGB"
    assert out.size == (20, 40)
    # After a clockwise quarter turn the stored left half (red) is on top.
    assert _close(out.getpixel((10, 5)), RED, 30), out.getpixel((10, 5))
    assert _close(out.getpixel((10, 35)), BLUE, 30), out.getpixel((10, 35))


def test_load_image_without_exif_keeps_size(tmp_path):
    p = tmp_path / "plain.jpg"
    Image.new("RGB", (40, 20), RED).save(p)
    assert load_image(p).size == (40, 20)


# --------------------------------------------------------------------------------------------
# load_image: broken files
# --------------------------------------------------------------------------------------------


def _expect_load_error(p: Path, **kwargs) -> ImageLoadError:
    with pytest.raises(ImageLoadError) as info:
        load_image(p, **kwargs)
    err = info.value
    assert err.path == str(p)
    assert str(p) in str(err)
    assert err.reason
    assert err.reason in str(err)
    return err


def test_image_load_error_is_an_oserror(tmp_path):
    err = _expect_load_error(tmp_path / "missing.png")
    assert isinstance(err, OSError)


def test_load_image_missing_file(tmp_path):
    err = _expect_load_error(tmp_path / "nope.jpg")
    assert "not found" in err.reason


def test_load_image_zero_byte_file(tmp_path):
    p = tmp_path / "empty.png"
    p.write_bytes(b"")
    err = _expect_load_error(p)
    assert "empty" in err.reason
    assert "0 bytes" in err.reason


def test_load_image_text_file_with_image_name(tmp_path):
    p = tmp_path / "x.jpg"
    p.write_text("this is not a picture\n")
    err = _expect_load_error(p)
    assert "not an image" in err.reason


def _random_jpeg(path: Path) -> bytes:
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(path, quality=90)
    return path.read_bytes()


def test_load_image_truncated_jpeg(tmp_path):
    data = _random_jpeg(tmp_path / "full.jpg")
    p = tmp_path / "half.jpg"
    p.write_bytes(data[: len(data) // 2])
    err = _expect_load_error(p)
    assert "truncated" in err.reason or "corrupt" in err.reason


def test_load_image_truncated_png(tmp_path):
    rng = np.random.default_rng(1)
    full = tmp_path / "full.png"
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(full)
    data = full.read_bytes()
    p = tmp_path / "half.png"
    p.write_bytes(data[: len(data) // 2])
    err = _expect_load_error(p)
    assert "truncated" in err.reason or "corrupt" in err.reason


def test_load_image_png_header_then_garbage(tmp_path):
    full = _save_png(tmp_path / "ok.png", RED)
    data = full.read_bytes()
    p = tmp_path / "corrupt.png"
    rng = np.random.default_rng(2)
    p.write_bytes(data[:8] + rng.integers(0, 256, 300, dtype=np.uint8).tobytes())
    err = _expect_load_error(p)
    assert "corrupt" in err.reason or "not an image" in err.reason


def test_load_image_png_with_corrupted_pixel_data(tmp_path):
    full = _save_png(tmp_path / "ok.png", RED)
    data = bytearray(full.read_bytes())
    i = data.find(b"IDAT")
    assert i > 0
    data[i + 4 : i + 16] = b"\x00" * 12  # destroy the zlib stream, keep the chunk structure
    p = tmp_path / "bad_idat.png"
    p.write_bytes(bytes(data))
    err = _expect_load_error(p)
    assert "corrupt" in err.reason


def test_load_image_directory_with_image_name(tmp_path):
    p = tmp_path / "d.jpg"
    p.mkdir()
    err = _expect_load_error(p)
    assert "not a regular file" in err.reason


def test_load_image_broken_symlink(tmp_path):
    p = tmp_path / "link.png"
    p.symlink_to(tmp_path / "target-that-does-not-exist.png")
    err = _expect_load_error(p)
    assert "not found" in err.reason or "broken" in err.reason


def test_load_image_symlink_to_image_loads(tmp_path):
    target = _save_png(tmp_path / "real.png", RED)
    p = tmp_path / "link.png"
    p.symlink_to(target)
    assert load_image(p).getpixel((0, 0)) == RED


@pytest.mark.skipif(IS_ROOT, reason="running as root: root can read a chmod 000 file")
def test_load_image_unreadable_file(tmp_path):
    p = _save_png(tmp_path / "secret.png", RED)
    p.chmod(0)
    try:
        err = _expect_load_error(p)
    finally:
        p.chmod(0o644)
    assert "cannot read" in err.reason or "permission" in err.reason.lower()


def test_load_image_decompression_bomb_limit(tmp_path):
    p = tmp_path / "big.png"
    Image.new("L", (2000, 2000)).save(p)
    err = _expect_load_error(p, max_pixels=1_000_000)
    assert "decompression bomb" in err.reason
    assert "4,000,000" in err.reason
    assert "1,000,000" in err.reason
    img = load_image(p, max_pixels=None)
    assert img.mode == "RGB"
    assert img.size == (2000, 2000)
    assert load_image(p, max_pixels=4_000_000).size == (2000, 2000)


@pytest.mark.parametrize("max_pixels", [None, 200_000_000], ids=["none", "raised"])
def test_load_image_max_pixels_above_pillow_default(tmp_path, max_pixels):
    side = 9460  # 89,491,600 pixels: just over Pillow's default MAX_IMAGE_PIXELS (89,478,485)
    assert side * side > Image.MAX_IMAGE_PIXELS
    p = tmp_path / "huge.png"
    Image.new("1", (side, side)).save(p)  # 1-bit: small to build and to store
    img = load_image(p, max_pixels=max_pixels)
    assert img.size == (side, side)


def test_an_image_too_elongated_to_resize_is_refused_before_decoding(tmp_path: Path) -> None:
    """4 x 9,999,999 is 40 M pixels, under the default limit, and a 72 KB PNG; resized to a
    network's 256-pixel short side it would need 640 M pixels (issue 21)."""
    from PIL import Image

    from transferlab.data import DEFAULT_MAX_ASPECT, check_image_shape, load_image
    from transferlab.exceptions import ImageLoadError

    p = tmp_path / "strip.png"
    Image.new("L", (4, 400_000)).save(p)
    with pytest.raises(ImageLoadError, match=r"aspect ratio of 100,000:1 exceeds 100:1"):
        load_image(p)
    assert load_image(p, max_aspect=None).size == (4, 400_000)
    assert check_image_shape(4, 9_999_999, max_pixels=None, max_aspect=DEFAULT_MAX_ASPECT)
    assert check_image_shape(3000, 300, max_pixels=None, max_aspect=DEFAULT_MAX_ASPECT) is None
    assert "pixels exceeds" in str(check_image_shape(10, 10, max_pixels=99, max_aspect=None))
