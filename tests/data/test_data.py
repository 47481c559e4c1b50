"""Tests for transferlab.data: robust image decoding and dataset discovery/splitting.

Every image is generated here (PIL/numpy, in tmp_path); the real datasets are only used by the
tests at the end, which skip when ../shared/datasets is absent.
"""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests._helpers import build_image_folder, shared_dataset
from transferlab.data import collect_images, load_dataset, load_image, stratified_split
from transferlab.exceptions import DatasetError, DatasetNotFoundError, ImageLoadError

RED = (255, 0, 0)
BLUE = (0, 0, 255)
WHITE = (255, 255, 255)
IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0


def _close(actual: tuple[int, ...], expected: tuple[int, ...], tol: int = 0) -> bool:
    return len(actual) == len(expected) and all(
        abs(a - e) <= tol for a, e in zip(actual, expected, strict=True)
    )


def _save_png(path: Path, colour: tuple[int, int, int] = (10, 20, 30)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), colour).save(path)
    return path


def _make_tree(root: Path, counts: dict[str, int], *, reverse: bool = False) -> Path:
    """root/<class>/<class>_<i>.png with counts[class] tiny images, optionally created backwards."""
    jobs = [(cls, i) for cls, n in counts.items() for i in range(n)]
    for cls, i in reversed(jobs) if reverse else jobs:
        _save_png(root / cls / f"{cls}_{i:03d}.png", (i * 7 % 256, len(cls) * 20, 100))
    return root


def _write_csv(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _rel(samples: list, root: Path) -> list[tuple[str, str | None]]:
    return sorted((os.path.relpath(s.path, root), s.label) for s in samples)


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


# --------------------------------------------------------------------------------------------
# stratified_split
# --------------------------------------------------------------------------------------------


def test_stratified_split_rejects_bad_fraction():
    from transferlab.data import Sample

    samples = [Sample(f"/x/{i}.png", "a") for i in range(4)]
    for bad in (0.0, 1.0, -0.1, 1.5):
        with pytest.raises(DatasetError, match="val_fraction"):
            stratified_split(samples, bad, 0)


def test_stratified_split_per_class_counts_and_order_independence():
    from transferlab.data import Sample

    samples = [Sample(f"/d/a/{i:02d}.png", "a") for i in range(10)]
    samples += [Sample(f"/d/b/{i:02d}.png", "b") for i in range(3)]
    samples += [Sample("/d/c/only.png", "c")]
    train, val = stratified_split(samples, 0.3, seed=5)
    assert set(train) | set(val) == set(samples)
    assert not set(train) & set(val)
    val_counts = Counter(s.label for s in val)
    assert val_counts == {"a": 3, "b": 1}  # round(10*0.3), at least 1 for b, none from c
    assert [s.label for s in train].count("c") == 1
    train2, val2 = stratified_split(list(reversed(samples)), 0.3, seed=5)
    assert train2 == train
    assert val2 == val


# --------------------------------------------------------------------------------------------
# load_dataset: one tree of class folders
# --------------------------------------------------------------------------------------------


def test_load_dataset_single_tree_stratified_and_deterministic(tmp_path):
    root = _make_tree(tmp_path / "ds", {"cats": 20, "dogs": 20, "owls": 10})
    ds = load_dataset(root, val_fraction=0.2, seed=0)
    assert ds.source == "imagefolder"
    assert ds.root == str(root)
    assert ds.classes == ["cats", "dogs", "owls"]
    assert ds.test == []
    all_paths = {str(p) for p in root.rglob("*.png")}
    assert {s.path for s in ds.train} | {s.path for s in ds.val} == all_paths
    assert not {s.path for s in ds.train} & {s.path for s in ds.val}
    for s in ds.train + ds.val:
        assert Path(s.path).parent.name == s.label
    assert Counter(s.label for s in ds.val) == {"cats": 4, "dogs": 4, "owls": 2}
    assert Counter(s.label for s in ds.train) == {"cats": 16, "dogs": 16, "owls": 8}
    assert len(ds.val) == pytest.approx(0.2 * 50, abs=1)
    assert "seed=0" in ds.split_note

    again = load_dataset(root, val_fraction=0.2, seed=0)
    assert again.train == ds.train
    assert again.val == ds.val

    other = load_dataset(root, val_fraction=0.2, seed=1)
    assert {s.path for s in other.val} != {s.path for s in ds.val}
    assert Counter(s.label for s in other.val) == Counter(s.label for s in ds.val)


@pytest.mark.parametrize("val_fraction", [0.1, 0.25, 0.5])
def test_load_dataset_val_fraction_respected(tmp_path, val_fraction):
    root = _make_tree(tmp_path / "ds", {"a": 20, "b": 20})
    ds = load_dataset(root, val_fraction=val_fraction)
    assert len(ds.val) == pytest.approx(40 * val_fraction, abs=1)
    assert {s.label for s in ds.val} == {"a", "b"}
    assert {s.label for s in ds.train} == {"a", "b"}


def test_load_dataset_split_ignores_file_creation_order(tmp_path):
    counts = {"a": 15, "b": 12}
    first = _make_tree(tmp_path / "one", counts)
    second = _make_tree(tmp_path / "two", counts, reverse=True)
    ds1 = load_dataset(first, seed=3)
    ds2 = load_dataset(second, seed=3)
    assert _rel(ds1.val, first) == _rel(ds2.val, second)
    assert _rel(ds1.train, first) == _rel(ds2.train, second)


def test_load_dataset_with_conftest_fixture(tiny_image_folder):
    ds = load_dataset(tiny_image_folder, val_fraction=0.2)
    assert ds.classes == ["hstripes", "vstripes"]
    assert len(ds.train) + len(ds.val) == 12
    assert Counter(s.label for s in ds.val) == {"hstripes": 1, "vstripes": 1}


def test_load_dataset_accepts_str_and_nested_images(tmp_path):
    root = tmp_path / "ds"
    _make_tree(root, {"a": 3, "b": 3})
    _save_png(root / "a" / "sub" / "deep.png")
    ds = load_dataset(str(root))
    paths = {s.path: s.label for s in ds.train + ds.val}
    assert paths[str(root / "a" / "sub" / "deep.png")] == "a"
    assert len(paths) == 7


def test_load_dataset_ignores_non_images_and_hidden_files(tmp_path):
    root = _make_tree(tmp_path / "ds", {"a": 5, "b": 5})
    (root / "a" / "README.md").write_text("about class a\n")
    (root / "b" / "notes.txt").write_text("x\n")
    (root / "a" / ".DS_Store").write_bytes(b"\x00\x01")
    _save_png(root / "b" / ".hidden.png")
    _save_png(root / "a" / ".ipynb_checkpoints" / "copy.png")
    _save_png(root / ".cache" / "c.png")  # hidden folder at the top is not a class
    ds = load_dataset(root)
    assert ds.classes == ["a", "b"]
    used = {s.path for s in ds.train + ds.val}
    assert len(used) == 10
    assert all(".hidden" not in p and ".ipynb" not in p and ".cache" not in p for p in used)
    assert sorted(ds.ignored) == sorted(
        [str(root / "a" / "README.md"), str(root / "b" / "notes.txt")]
    )
    assert "ignored 2 non-image files" in ds.summary()


def test_load_dataset_image_extensions_case_insensitive(tmp_path):
    root = tmp_path / "ds"
    for cls in ("a", "b"):
        for i, ext in enumerate((".PNG", ".JPG", ".jpeg")):
            p = root / cls / f"{i}{ext}"
            p.parent.mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (8, 8)).save(p, format="PNG" if ext == ".PNG" else "JPEG")
    ds = load_dataset(root)
    assert len(ds.train) + len(ds.val) == 6
    assert ds.ignored == []


def test_dataset_summary_mentions_each_class_count(tmp_path):
    root = tmp_path / "ds"
    _make_tree(root / "train", {"ants": 7, "bees": 5})
    _make_tree(root / "val", {"ants": 3, "bees": 4})
    _make_tree(root / "test", {"ants": 2, "bees": 1})
    ds = load_dataset(root)
    text = ds.summary()
    assert str(root) in text
    assert "2 classes" in text
    lines = text.splitlines()
    train_line = next(line for line in lines if line.strip().startswith("train:"))
    val_line = next(line for line in lines if line.strip().startswith("val:"))
    test_line = next(line for line in lines if line.strip().startswith("test:"))
    assert "12 images" in train_line and "ants=7" in train_line and "bees=5" in train_line
    assert "7 images" in val_line and "ants=3" in val_line and "bees=4" in val_line
    assert "3 images" in test_line and "ants=2" in test_line and "bees=1" in test_line


# --------------------------------------------------------------------------------------------
# load_dataset: train/ + val/ layouts
# --------------------------------------------------------------------------------------------


def test_load_dataset_train_val_folders(tiny_split_folder):
    ds = load_dataset(tiny_split_folder)
    assert ds.source == "imagefolder-split"
    assert ds.classes == ["hstripes", "vstripes"]
    assert len(ds.train) == 12
    assert len(ds.val) == 6
    assert all(Path(s.path).parts[-3] == "train" for s in ds.train)
    assert all(Path(s.path).parts[-3] == "val" for s in ds.val)
    assert ds.test == []


@pytest.mark.parametrize("val_name", ["val", "valid", "validation"])
def test_load_dataset_val_folder_names(tmp_path, val_name):
    root = tmp_path / "ds"
    _make_tree(root / "train", {"a": 4, "b": 4})
    _make_tree(root / val_name, {"a": 2, "b": 1})
    ds = load_dataset(root)
    assert len(ds.train) == 8
    assert len(ds.val) == 3
    assert all(f"{os.sep}{val_name}{os.sep}" in s.path for s in ds.val)
    assert ds.test == []
    assert val_name in ds.split_note


def test_load_dataset_train_and_test_only_uses_test_as_val(tmp_path):
    root = tmp_path / "ds"
    _make_tree(root / "train", {"a": 4, "b": 4})
    _make_tree(root / "test", {"a": 2, "b": 2})
    ds = load_dataset(root)
    assert len(ds.train) == 8
    assert len(ds.val) == 4
    assert all(f"{os.sep}test{os.sep}" in s.path for s in ds.val)
    assert ds.test == []
    assert "validation" in ds.split_note


def test_load_dataset_train_val_test_keeps_test_apart(tmp_path):
    root = tmp_path / "ds"
    _make_tree(root / "train", {"a": 4, "b": 4})
    _make_tree(root / "val", {"a": 2, "b": 2})
    _make_tree(root / "test", {"a": 3, "b": 1})
    ds = load_dataset(root)
    assert (len(ds.train), len(ds.val), len(ds.test)) == (8, 4, 4)
    assert all(f"{os.sep}val{os.sep}" in s.path for s in ds.val)
    assert all(f"{os.sep}test{os.sep}" in s.path for s in ds.test)
    assert Counter(s.label for s in ds.test) == {"a": 3, "b": 1}


def test_load_dataset_train_only_is_split_here(tmp_path):
    root = tmp_path / "ds"
    _make_tree(root / "train", {"a": 10, "b": 10})
    ds = load_dataset(root, val_fraction=0.2)
    assert ds.source == "imagefolder-split"
    assert Counter(s.label for s in ds.val) == {"a": 2, "b": 2}
    assert all(f"{os.sep}train{os.sep}" in s.path for s in ds.train + ds.val)


def test_load_dataset_val_may_lack_a_class(tmp_path):
    root = tmp_path / "ds"
    _make_tree(root / "train", {"a": 3, "b": 3, "c": 3})
    _make_tree(root / "val", {"a": 1, "b": 1})
    ds = load_dataset(root)
    assert ds.classes == ["a", "b", "c"]


# --------------------------------------------------------------------------------------------
# load_dataset: CSV
# --------------------------------------------------------------------------------------------


def _csv_images(folder: Path, counts: dict[str, int]) -> list[tuple[str, str]]:
    rows = []
    for cls, n in counts.items():
        for i in range(n):
            rel = f"imgs/{cls}_{i:02d}.png"
            _save_png(folder / rel)
            rows.append((rel, cls))
    return rows


def test_load_dataset_csv_relative_paths_without_split(tmp_path):
    rows = _csv_images(tmp_path, {"cat": 10, "dog": 10})
    csv_path = _write_csv(tmp_path / "labels.csv", ["path,label", *[f"{p},{c}" for p, c in rows]])
    ds = load_dataset(csv_path, val_fraction=0.2, seed=0)
    assert ds.source == "csv"
    assert ds.classes == ["cat", "dog"]
    assert Counter(s.label for s in ds.val) == {"cat": 2, "dog": 2}
    expected = {(str(tmp_path / p), c) for p, c in rows}
    assert {(s.path, s.label) for s in ds.train + ds.val} == expected
    assert all(os.path.isfile(s.path) for s in ds.train + ds.val)
    assert load_dataset(csv_path, val_fraction=0.2, seed=0).val == ds.val


def test_load_dataset_csv_paths_resolved_from_csv_folder_not_cwd(tmp_path, monkeypatch):
    data = tmp_path / "data"
    rows = _csv_images(data, {"cat": 3, "dog": 3})
    csv_path = _write_csv(data / "labels.csv", ["path,label", *[f"{p},{c}" for p, c in rows]])
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    ds = load_dataset(csv_path)
    assert all(s.path.startswith(str(data)) for s in ds.train + ds.val)
    assert all(os.path.isfile(s.path) for s in ds.train + ds.val)


def test_load_dataset_csv_absolute_paths_kept(tmp_path):
    rows = _csv_images(tmp_path / "imgdir", {"a": 3, "b": 3})
    sub = tmp_path / "meta"
    sub.mkdir()
    lines = ["path,label", *[f"{tmp_path / 'imgdir' / p},{c}" for p, c in rows]]
    ds = load_dataset(_write_csv(sub / "l.csv", lines))
    assert {s.path for s in ds.train + ds.val} == {str(tmp_path / "imgdir" / p) for p, _ in rows}


def test_load_dataset_csv_case_insensitive_header_and_split_column(tmp_path):
    rows = _csv_images(tmp_path, {"cat": 6, "dog": 6})
    lines = ["Path,Label,Split"]
    expected: dict[str, set[str]] = {"train": set(), "val": set(), "test": set()}
    for i, (p, c) in enumerate(rows):
        split = ("Train", "train", "VAL", "test")[i % 4]
        lines.append(f"{p},{c},{split}")
        expected[split.lower()].add(str(tmp_path / p))
    ds = load_dataset(_write_csv(tmp_path / "labels.csv", lines))
    assert ds.source == "csv"
    assert {s.path for s in ds.train} == expected["train"]
    assert {s.path for s in ds.val} == expected["val"]
    assert {s.path for s in ds.test} == expected["test"]
    assert ds.classes == ["cat", "dog"]


def test_load_dataset_csv_split_column_with_blank_split_goes_to_train(tmp_path):
    rows = _csv_images(tmp_path, {"a": 4, "b": 4})
    lines = ["path,label,split"]
    for i, (p, c) in enumerate(rows):
        lines.append(f"{p},{c},{'valid' if i % 4 == 0 else ''}")
    ds = load_dataset(_write_csv(tmp_path / "l.csv", lines))
    assert len(ds.val) == 2
    assert len(ds.train) == 6


def test_load_dataset_csv_with_bom_and_alternative_column_names(tmp_path):
    rows = _csv_images(tmp_path, {"a": 3, "b": 3})
    p = tmp_path / "l.csv"
    text = "filename,class\n" + "\n".join(f"{r},{c}" for r, c in rows) + "\n"
    p.write_bytes(b"\xef\xbb\xbf" + text.encode("utf-8"))
    ds = load_dataset(p)
    assert ds.classes == ["a", "b"]
    assert len(ds.train) + len(ds.val) == 6


def test_load_dataset_csv_header_with_spaces_after_commas(tmp_path):
    rows = _csv_images(tmp_path, {"a": 3, "b": 3})
    csv_path = _write_csv(tmp_path / "l.csv", ["path, label", *[f"{p},{c}" for p, c in rows]])
    ds = load_dataset(csv_path)
    assert ds.classes == ["a", "b"]


def test_load_dataset_tsv_file(tmp_path):
    rows = _csv_images(tmp_path, {"a": 3, "b": 3})
    tsv = _write_csv(tmp_path / "l.tsv", ["path\tlabel", *[f"{p}\t{c}" for p, c in rows]])
    ds = load_dataset(tsv)
    assert ds.classes == ["a", "b"]


# --------------------------------------------------------------------------------------------
# load_dataset: errors
# --------------------------------------------------------------------------------------------


def test_load_dataset_missing_path(tmp_path):
    missing = tmp_path / "no_such_dataset"
    with pytest.raises(DatasetNotFoundError) as info:
        load_dataset(missing)
    assert isinstance(info.value, FileNotFoundError)
    assert isinstance(info.value, DatasetError)
    assert str(missing) in str(info.value)
    assert "does not exist" in str(info.value)


def test_load_dataset_missing_path_suggests_close_match(tmp_path):
    _make_tree(tmp_path / "flowers", {"a": 2, "b": 2})
    with pytest.raises(DatasetNotFoundError, match="Did you mean") as info:
        load_dataset(tmp_path / "flowres")
    assert str(tmp_path / "flowers") in str(info.value)


def test_load_dataset_missing_path_is_catchable_as_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_dataset(tmp_path / "gone")


def test_load_dataset_empty_class_folder(tmp_path):
    root = _make_tree(tmp_path / "ds", {"a": 3, "b": 3})
    (root / "empty_cls").mkdir()
    (root / "empty_cls" / "README.md").write_text("nothing here\n")
    with pytest.raises(DatasetError, match="empty class folder") as info:
        load_dataset(root)
    assert str(root / "empty_cls") in str(info.value)


def test_load_dataset_empty_class_folder_in_val(tmp_path):
    root = tmp_path / "ds"
    _make_tree(root / "train", {"a": 3, "b": 3})
    _make_tree(root / "val", {"a": 1})
    (root / "val" / "b").mkdir()
    with pytest.raises(DatasetError) as info:
        load_dataset(root)
    assert str(root / "val" / "b") in str(info.value)


def test_load_dataset_single_class(tmp_path):
    root = _make_tree(tmp_path / "ds", {"only": 6})
    with pytest.raises(DatasetError, match="at least 2 classes") as info:
        load_dataset(root)
    assert "'only'" in str(info.value)
    assert str(root) in str(info.value)


def test_load_dataset_no_class_folders(tmp_path):
    root = tmp_path / "loose"
    for i in range(3):
        _save_png(root / f"{i}.png")
    with pytest.raises(DatasetError, match="no class folders") as info:
        load_dataset(root)
    assert str(root) in str(info.value)


def test_load_dataset_val_class_unknown_to_train(tmp_path):
    root = tmp_path / "ds"
    _make_tree(root / "train", {"ants": 3, "bees": 3})
    _make_tree(root / "val", {"ants": 1, "bees": 1, "wasps": 1})
    with pytest.raises(DatasetError) as info:
        load_dataset(root)
    msg = str(info.value)
    assert "wasps" in msg
    assert "val" in msg
    assert "ants" in msg and "bees" in msg  # lists the train classes for comparison


def test_load_dataset_test_class_unknown_to_train(tmp_path):
    root = tmp_path / "ds"
    _make_tree(root / "train", {"ants": 3, "bees": 3})
    _make_tree(root / "val", {"ants": 1, "bees": 1})
    _make_tree(root / "test", {"ants": 1, "hornets": 1})
    with pytest.raises(DatasetError, match="hornets") as info:
        load_dataset(root)
    assert "test" in str(info.value)


def test_load_dataset_too_few_images_for_validation(tmp_path):
    root = _make_tree(tmp_path / "ds", {"a": 1, "b": 1})
    with pytest.raises(DatasetError, match="no validation images"):
        load_dataset(root)


def test_load_dataset_bad_val_fraction(tmp_path):
    root = _make_tree(tmp_path / "ds", {"a": 3, "b": 3})
    with pytest.raises(DatasetError, match="val_fraction") as info:
        load_dataset(root, val_fraction=1.5)
    assert "1.5" in str(info.value)


def test_load_dataset_csv_missing_label_column(tmp_path):
    rows = _csv_images(tmp_path, {"a": 2, "b": 2})
    csv_path = _write_csv(tmp_path / "l.csv", ["path,category", *[f"{p},{c}" for p, c in rows]])
    with pytest.raises(DatasetError) as info:
        load_dataset(csv_path)
    msg = str(info.value)
    assert str(csv_path) in msg
    assert "missing 'label'" in msg
    assert "'path'" in msg and "'category'" in msg  # the columns found


def test_load_dataset_csv_missing_both_columns(tmp_path):
    csv_path = _write_csv(tmp_path / "l.csv", ["a,b", "1,2"])
    with pytest.raises(DatasetError, match="missing 'path' and 'label'") as info:
        load_dataset(csv_path)
    assert "'a', 'b'" in str(info.value)


def test_load_dataset_empty_csv_file(tmp_path):
    csv_path = tmp_path / "empty.csv"
    csv_path.write_text("")
    with pytest.raises(DatasetError, match="empty file"):
        load_dataset(csv_path)


def test_load_dataset_csv_header_only(tmp_path):
    csv_path = _write_csv(tmp_path / "l.csv", ["path,label"])
    with pytest.raises(DatasetError, match="no rows"):
        load_dataset(csv_path)


@pytest.mark.parametrize(("bad_line", "what"), [("imgs/x.png,", "label"), (",b", "path")])
def test_load_dataset_csv_empty_cell_gives_line_number(tmp_path, bad_line, what):
    rows = _csv_images(tmp_path, {"a": 2, "b": 2})
    lines = ["path,label", *[f"{p},{c}" for p, c in rows]]
    lines.insert(3, bad_line)  # header is line 1, so this is line 4
    csv_path = _write_csv(tmp_path / "l.csv", lines)
    with pytest.raises(DatasetError) as info:
        load_dataset(csv_path)
    msg = str(info.value)
    assert "line 4" in msg
    assert f"empty {what}" in msg
    assert str(csv_path) in msg


def test_load_dataset_csv_unknown_split_value(tmp_path):
    rows = _csv_images(tmp_path, {"a": 2, "b": 2})
    lines = ["path,label,split", *[f"{p},{c},train" for p, c in rows], "imgs/a_00.png,a,holdout"]
    csv_path = _write_csv(tmp_path / "l.csv", lines)
    with pytest.raises(DatasetError, match="holdout") as info:
        load_dataset(csv_path)
    assert "split" in str(info.value)


def test_load_dataset_csv_not_utf8(tmp_path):
    p = tmp_path / "l.csv"
    p.write_bytes(b"path,label\n\xff\xfe\xfa,a\n")
    with pytest.raises(DatasetError, match="UTF-8"):
        load_dataset(p)


@pytest.mark.parametrize("name", ["photo.png", "labels.json"])
def test_load_dataset_non_csv_file(tmp_path, name):
    p = tmp_path / name
    if name.endswith(".png"):
        _save_png(p)
    else:
        p.write_text("{}")
    with pytest.raises(DatasetError, match="not a CSV") as info:
        load_dataset(p)
    assert str(p) in str(info.value)


# --------------------------------------------------------------------------------------------
# collect_images
# --------------------------------------------------------------------------------------------


def test_collect_images_loose_folder(tmp_path):
    root = tmp_path / "loose"
    paths = [_save_png(root / f"img_{i}.png") for i in range(4)]
    (root / "notes.txt").write_text("x")
    samples, splits = collect_images(root)
    assert sorted(s.path for s in samples) == sorted(str(p) for p in paths)
    assert all(s.label is None for s in samples)
    assert splits == [""] * 4


def test_collect_images_single_class_folder_is_unlabelled(tmp_path):
    root = _make_tree(tmp_path / "one", {"only": 3})
    samples, splits = collect_images(root)
    assert len(samples) == 3
    assert all(s.label is None for s in samples)
    assert splits == ["", "", ""]


def test_collect_images_single_file(tmp_path):
    p = _save_png(tmp_path / "one.png")
    samples, splits = collect_images(p)
    assert [s.path for s in samples] == [str(p)]
    assert samples[0].label is None
    assert splits == [""]


def test_collect_images_dataset_gives_split_names(tmp_path):
    root = tmp_path / "ds"
    _make_tree(root / "train", {"a": 4, "b": 3})
    _make_tree(root / "val", {"a": 2, "b": 2})
    samples, splits = collect_images(root)
    assert len(samples) == len(splits) == 11
    assert Counter(splits) == {"train": 7, "val": 4}
    for s, split in zip(samples, splits, strict=True):
        assert f"{os.sep}{split}{os.sep}" in s.path
        assert s.label in ("a", "b")


def test_collect_images_single_tree_matches_load_dataset(tmp_path):
    root = _make_tree(tmp_path / "ds", {"a": 10, "b": 10})
    samples, splits = collect_images(root, val_fraction=0.3, seed=4)
    ds = load_dataset(root, val_fraction=0.3, seed=4)
    assert [s for s, sp in zip(samples, splits, strict=True) if sp == "val"] == ds.val
    assert [s for s, sp in zip(samples, splits, strict=True) if sp == "train"] == ds.train


def test_collect_images_missing_path(tmp_path):
    with pytest.raises(DatasetNotFoundError):
        collect_images(tmp_path / "absent")


def test_collect_images_folder_without_images(tmp_path):
    root = tmp_path / "docs"
    root.mkdir()
    (root / "README.md").write_text("x")
    with pytest.raises(DatasetError, match="no image files"):
        collect_images(root)


def test_build_image_folder_images_load(tmp_path):
    root = build_image_folder(tmp_path / "gen", n_per_class=2, ext=".jpg")
    samples, _ = collect_images(root)
    for s in samples:
        img = load_image(s.path)
        assert img.mode == "RGB"
        assert img.size == (64, 64)


# --------------------------------------------------------------------------------------------
# real datasets (skip when ../shared/datasets is absent)
# --------------------------------------------------------------------------------------------


def test_real_hymenoptera_layout():
    root = shared_dataset("hymenoptera")
    ds = load_dataset(root)
    assert ds.source == "imagefolder-split"
    assert ds.classes == ["ants", "bees"]
    assert len(ds.train) == 244
    assert len(ds.val) == 153
    assert ds.test == []
    for s in (ds.train[0], ds.val[-1]):
        img = load_image(s.path)
        assert img.mode == "RGB"


def test_real_pneumoniamnist_test_split_and_greyscale_to_rgb():
    root = shared_dataset("pneumoniamnist")
    ds = load_dataset(root)
    assert ds.classes == ["normal", "pneumonia"]
    assert len(ds.test) == 468
    assert Counter(s.label for s in ds.test) == {"normal": 234, "pneumonia": 234}
    assert len(ds.train) == 2428
    assert len(ds.val) == 270
    for s in ds.test[:3] + ds.test[-3:]:
        with Image.open(s.path) as raw:
            assert raw.mode == "L"
        img = load_image(s.path)
        assert img.mode == "RGB"
        assert img.size == (28, 28)
