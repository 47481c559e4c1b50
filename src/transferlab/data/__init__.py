"""Images in, clean RGB images and labelled samples out.

Two jobs, kept apart:

* `load_image` decodes one file robustly: EXIF orientation, every common mode (greyscale, palette,
  RGBA/LA, CMYK, 16-bit, float) made RGB, and every way a file can be broken turned into an
  `ImageLoadError` that names the path and the reason.
* `load_dataset` turns a folder tree or a CSV into train/val(/test) lists of `Sample`, with the
  checks a user needs before spending minutes on extraction (missing path, empty or single class,
  val labels unknown to train, CSV columns).
"""

from __future__ import annotations

import csv
import logging
import os
import random
import threading
import warnings
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from transferlab.exceptions import DatasetError, DatasetNotFoundError, ImageLoadError

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "IMAGE_EXTENSIONS",
    "Dataset",
    "Sample",
    "collect_images",
    "is_image_file",
    "label_matrix",
    "list_images",
    "load_dataset",
    "load_image",
]

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".jpe", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
)
#: Pillow's own default limit (~89 Mpx); above it a file is treated as a decompression bomb.
DEFAULT_MAX_PIXELS = 89_478_485
#: Names tried, in order, for the validation and test splits of an ImageFolder tree.
VAL_SPLIT_NAMES = ("val", "valid", "validation")
TEST_SPLIT_NAMES = ("test",)
TRAIN_SPLIT_NAMES = ("train", "training")

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


def load_image(
    path: str | os.PathLike[str],
    *,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    draft_size: int | None = None,
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
                if max_pixels is not None and w * h > max_pixels:
                    raise ImageLoadError(
                        p,
                        f"{w}x{h} = {w * h:,} pixels exceeds the limit of {max_pixels:,} "
                        "(possible decompression bomb; raise max_pixels if the image is genuine)",
                    )
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


# struct.error escapes some Pillow plugins on malformed headers.
from struct import error as struct_error  # noqa: E402


@dataclass(frozen=True)
class Sample:
    """One labelled image. `label` is None for unlabelled images (prediction).

    For multi-label data `labels` holds the image's labels (possibly none) and `label` their
    ``;``-joined text, kept for display.
    """

    path: str
    label: str | None = None
    labels: tuple[str, ...] = ()


@dataclass
class Dataset:
    """Train/validation(/test) samples and the class list, as `load_dataset` found them.

    Attributes:
        train: training samples.
        val: validation samples (held out from training; metrics are reported on them).
        test: optional test samples (a `test/` folder or CSV split), reported separately.
        classes: sorted class names; a model's outputs follow this order.
        source: where the samples came from: ``"imagefolder-split"`` (train/ and val/ folders),
            ``"imagefolder"`` (one tree, split here), or ``"csv"``.
        root: the dataset path given.
        ignored: files skipped because their extension is not an image's (e.g. README.md).
        split_note: a sentence saying how the split was made, for summaries and reports.
    """

    train: list[Sample]
    val: list[Sample]
    classes: list[str]
    source: str
    root: str
    test: list[Sample] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)
    split_note: str = ""
    multi_label: bool = False

    def label_matrix(self, samples: Sequence[Sample]) -> np.ndarray:
        """(n, n_classes) 0/1 matrix of `samples`' labels (multi-label data)."""
        return label_matrix(samples, self.classes)

    def summary(self) -> str:
        """A short multi-line description: counts per split and class (like fastai's summary)."""
        kind = "labels (multi-label)" if self.multi_label else "classes"
        lines = [
            f"dataset {self.root} ({self.source}): {len(self.classes)} {kind}; {self.split_note}"
        ]
        for name, samples in (("train", self.train), ("val", self.val), ("test", self.test)):
            if samples:
                counts = Counter(
                    lab for s in samples for lab in (s.labels if self.multi_label else [s.label])
                )
                per = ", ".join(f"{c}={counts.get(c, 0)}" for c in self.classes)
                lines.append(f"  {name}: {len(samples)} images ({per})")
        if self.ignored:
            lines.append(f"  ignored {len(self.ignored)} non-image files")
        return "\n".join(lines)


def label_matrix(samples: Sequence[Sample], classes: Sequence[str]) -> np.ndarray:
    """(n, n_classes) 0/1 int matrix: row i marks the labels of samples[i]."""
    index = {c: j for j, c in enumerate(classes)}
    y = np.zeros((len(samples), len(classes)), dtype=np.int64)
    for i, s in enumerate(samples):
        for lab in s.labels:
            if lab in index:
                y[i, index[lab]] = 1
    return y


def list_images(root: str | os.PathLike[str]) -> tuple[list[str], list[str]]:
    """All image files below `root` (sorted) and the other, ignored, files."""
    images: list[str] = []
    ignored: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            full = os.path.join(dirpath, name)
            if is_image_file(name):
                images.append(full)
            elif not name.startswith("."):
                ignored.append(full)
    return images, ignored


def _class_folders(root: Path) -> list[Path]:
    return sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def _read_class_tree(root: Path, *, what: str) -> tuple[list[Sample], list[str]]:
    """Samples from `root/<class>/**/<image>`; errors name the folder that is wrong."""
    folders = _class_folders(root)
    if not folders:
        raise DatasetError(
            f"{what} {root} has no class folders: expected one sub-folder per class "
            f"(e.g. {root}/cats/1.jpg, {root}/dogs/2.jpg), or a CSV file with path,label columns"
        )
    samples: list[Sample] = []
    ignored: list[str] = []
    empty: list[str] = []
    for folder in folders:
        images, other = list_images(folder)
        ignored.extend(other)
        if not images:
            empty.append(str(folder))
        samples.extend(Sample(path, folder.name) for path in images)
    if empty:
        raise DatasetError(
            f"empty class folder{'s' if len(empty) > 1 else ''} (no image files with extensions "
            f"{', '.join(sorted(IMAGE_EXTENSIONS))}): {', '.join(empty)}. "
            "Add images or remove the folder."
        )
    return samples, ignored


def _label_set(samples: Sequence[Sample], multi_label: bool) -> set[str]:
    if multi_label:
        return {lab for s in samples for lab in s.labels}
    return {s.label for s in samples if s.label is not None}


def _check_classes(
    train: Sequence[Sample],
    others: dict[str, Sequence[Sample]],
    root: str,
    multi_label: bool = False,
) -> list[str]:
    classes = sorted(_label_set(train, multi_label))
    if len(classes) < 2:
        found = f"only {classes[0]!r}" if classes else "none"
        raise DatasetError(
            f"{root}: a classifier needs at least 2 classes in the training data, found {found}"
        )
    for name, samples in others.items():
        unknown = sorted(_label_set(samples, multi_label) - set(classes))
        if unknown:
            raise DatasetError(
                f"{root}: {name} has classes that train does not: {', '.join(unknown)} "
                f"(train classes: {', '.join(classes)})"
            )
    return classes


def stratified_split(
    samples: Sequence[Sample], val_fraction: float, seed: int
) -> tuple[list[Sample], list[Sample]]:
    """Split per class, deterministically: the same files, fraction and seed give the same split.

    Each class keeps at least one training image; a class with 2+ images gives at least one to
    validation. File order does not matter (samples are sorted by path first).
    """
    if not 0.0 < val_fraction < 1.0:
        raise DatasetError(f"val_fraction must be between 0 and 1 (exclusive), got {val_fraction}")
    if any(s.labels for s in samples):  # multi-label: label sets rarely repeat, split at random
        items = sorted(samples, key=lambda s: s.path)
        random.Random(f"{seed}-multilabel").shuffle(items)
        n_val = min(max(round(len(items) * val_fraction), 1), len(items) - 1)
        return items[n_val:], items[:n_val]
    by_class: dict[str | None, list[Sample]] = defaultdict(list)
    for s in sorted(samples, key=lambda s: s.path):
        by_class[s.label].append(s)
    train: list[Sample] = []
    val: list[Sample] = []
    for label in sorted(by_class, key=str):
        items = by_class[label]
        rng = random.Random(f"{seed}-{label}")
        rng.shuffle(items)
        n_val = round(len(items) * val_fraction)
        n_val = min(max(n_val, 1 if len(items) >= 2 else 0), len(items) - 1)
        val.extend(items[:n_val])
        train.extend(items[n_val:])
    return train, val


def _find_split(root: Path, names: Iterable[str]) -> Path | None:
    for name in names:
        if (root / name).is_dir():
            return root / name
    return None


def _read_csv(
    path: Path, multi_label: bool = False
) -> tuple[list[Sample], dict[str, list[Sample]], list[str]]:
    """Rows `path,label[,split]`; relative paths are taken from the CSV's folder.

    With `multi_label`, the label cell holds ``;``-separated labels (an empty cell: none).
    """
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            first = fh.readline()
            fh.seek(0)
            # Comma by default; a .tsv file, or a header with tabs/semicolons and no comma, says otherwise.
            delimiter = ","
            if path.suffix.lower() == ".tsv" or ("\t" in first and "," not in first):
                delimiter = "\t"
            elif ";" in first and "," not in first:
                delimiter = ";"
            reader = csv.DictReader(fh, delimiter=delimiter, skipinitialspace=True)
            header = [h.strip() for h in (reader.fieldnames or [])]
            reader.fieldnames = header  # rows are then keyed by the stripped names
            lower = {h.lower(): h for h in header}
            path_col = next(
                (lower[c] for c in ("path", "file", "filename", "image") if c in lower), None
            )
            label_col = next((lower[c] for c in ("label", "class", "labels") if c in lower), None)
            if path_col is None or label_col is None:
                missing = [n for n, c in (("path", path_col), ("label", label_col)) if c is None]
                raise DatasetError(
                    f"{path}: CSV needs columns 'path' and 'label' (a header row); missing "
                    f"{' and '.join(repr(m) for m in missing)}; found columns: "
                    f"{', '.join(repr(h) for h in header) or 'none (empty file?)'}"
                )
            split_col = lower.get("split")
            rows = list(reader)
    except UnicodeDecodeError as exc:
        raise DatasetError(f"{path}: not a UTF-8 text CSV ({exc.reason})") from None
    except csv.Error as exc:
        raise DatasetError(f"{path}: malformed CSV ({exc})") from None
    base = path.parent
    unsplit: list[Sample] = []
    splits: dict[str, list[Sample]] = defaultdict(list)
    for lineno, row in enumerate(rows, start=2):
        rel = (row.get(path_col) or "").strip()
        label = (row.get(label_col) or "").strip()
        if not rel or (not label and not multi_label):
            raise DatasetError(f"{path}, line {lineno}: empty {'path' if not rel else 'label'}")
        full = rel if os.path.isabs(rel) else str(base / rel)
        if multi_label:
            labels = tuple(sorted({x.strip() for x in label.split(";") if x.strip()}))
            sample = Sample(full, ";".join(labels), labels)
        elif ";" in label:
            raise DatasetError(
                f"{path}, line {lineno}: label {label!r} holds several labels separated by ';'; "
                "for multi-label data pass --multi-label (multi_label=True)"
            )
        else:
            sample = Sample(full, label)
        split = (row.get(split_col) or "").strip().lower() if split_col else ""
        if split:
            splits[split].append(sample)
        else:
            unsplit.append(sample)
    if not rows:
        raise DatasetError(f"{path}: CSV has a header but no rows")
    return unsplit, splits, []


def load_dataset(
    path: str | os.PathLike[str],
    *,
    val_fraction: float = 0.2,
    seed: int = 0,
    multi_label: bool = False,
) -> Dataset:
    """Find the labelled images at `path` and split them into train/val(/test).

    Accepted layouts, tried in this order:

    * a CSV file with a header ``path,label`` (optionally ``split`` with train/val/test); rows
      without a split are split here;
    * an ImageFolder tree with ``train/`` and ``val/`` (or ``valid/``, ``validation/``, or only
      ``test/``), each holding one folder per class; a ``test/`` beside ``val/`` is kept apart;
    * one tree of class folders, split here per class (stratified) by `val_fraction` and `seed`.

    With ``multi_label=True`` the data must be a CSV whose label cell lists an image's labels
    separated by ``;`` (``path,labels``); rows without a split are split at random.

    Raises:
        DatasetNotFoundError: `path` does not exist.
        DatasetError: no class folders, an empty class folder, fewer than 2 classes, val/test
            classes that train lacks, or a CSV without the needed columns.

    Example:
        >>> import tempfile, os
        >>> from PIL import Image
        >>> root = tempfile.mkdtemp()
        >>> for c in ("cat", "dog"):
        ...     os.makedirs(f"{root}/{c}")
        ...     for i in range(5):
        ...         Image.new("RGB", (8, 8)).save(f"{root}/{c}/{i}.png")
        >>> ds = load_dataset(root, val_fraction=0.2)
        >>> ds.classes, len(ds.train), len(ds.val)
        (['cat', 'dog'], 8, 2)
    """
    root = Path(path).expanduser()
    if not root.exists():
        hint = ""
        parent = root.parent
        if parent.is_dir():
            import difflib

            close = difflib.get_close_matches(root.name, [p.name for p in parent.iterdir()], n=3)
            if close:
                hint = f" Did you mean: {', '.join(str(parent / c) for c in close)}?"
        raise DatasetNotFoundError(f"dataset path does not exist: {root}.{hint}")
    test: list[Sample] = []
    ignored: list[str] = []
    if root.is_file():
        if root.suffix.lower() not in (".csv", ".tsv", ".txt"):
            raise DatasetError(
                f"{root} is a file but not a CSV: give a folder of class folders, a folder with "
                "train/ and val/, or a CSV with path,label columns"
            )
        unsplit, splits, ignored = _read_csv(root, multi_label)
        unknown_splits = sorted(set(splits) - {"train", "val", "valid", "validation", "test"})
        if unknown_splits:
            raise DatasetError(
                f"{root}: column 'split' has values {unknown_splits}; accepted: train, val, test"
            )
        train = splits.get("train", [])
        val = [*splits.get("val", []), *splits.get("valid", []), *splits.get("validation", [])]
        test = splits.get("test", [])
        if unsplit:
            if train or val:
                train.extend(unsplit)
                note = "CSV split column (rows without a split were used for training)"
            else:
                train, val = stratified_split(unsplit, val_fraction, seed)
                note = f"stratified split here: val_fraction={val_fraction}, seed={seed}"
        else:
            note = "CSV split column"
        if not val:
            train, val = stratified_split(train, val_fraction, seed)
            note = f"stratified split here: val_fraction={val_fraction}, seed={seed}"
        source = "csv"
    elif multi_label:
        raise DatasetError(
            f"{root}: multi-label data comes as a CSV with columns path,labels (labels separated by "
            "';'); a folder tree gives one class per image"
        )
    elif (train_dir := _find_split(root, TRAIN_SPLIT_NAMES)) is not None:
        val_dir = _find_split(root, VAL_SPLIT_NAMES)
        test_dir = _find_split(root, TEST_SPLIT_NAMES)
        train, ign = _read_class_tree(train_dir, what="training folder")
        ignored += ign
        if val_dir is None and test_dir is None:
            train, val = stratified_split(train, val_fraction, seed)
            note = f"{train_dir.name}/ only: stratified split here, val_fraction={val_fraction}, seed={seed}"
        elif val_dir is None:
            assert test_dir is not None
            val, ign = _read_class_tree(test_dir, what="test folder")
            ignored += ign
            note = f"folders {train_dir.name}/ and {test_dir.name}/ (used as validation)"
        else:
            val, ign = _read_class_tree(val_dir, what="validation folder")
            ignored += ign
            note = f"folders {train_dir.name}/ and {val_dir.name}/"
            if test_dir is not None:
                test, ign = _read_class_tree(test_dir, what="test folder")
                ignored += ign
                note += f" (+ {test_dir.name}/ reported separately)"
        source = "imagefolder-split"
    else:
        samples, ignored = _read_class_tree(root, what="dataset folder")
        train, val = stratified_split(samples, val_fraction, seed)
        note = f"stratified split here: val_fraction={val_fraction}, seed={seed}"
        source = "imagefolder"
    others = {"val": val, **({"test": test} if test else {})}
    classes = _check_classes(train, others, str(root), multi_label)
    if not val:
        raise DatasetError(f"{root}: no validation images (each class needs at least 2 images)")
    if ignored:
        logger.info("ignored %d non-image files under %s", len(ignored), root)
    return Dataset(
        train=list(train),
        val=list(val),
        test=list(test),
        classes=classes,
        source=source,
        root=str(root),
        ignored=ignored,
        split_note=note,
        multi_label=multi_label,
    )


def collect_images(
    path: str | os.PathLike[str], *, val_fraction: float = 0.2, seed: int = 0
) -> tuple[list[Sample], list[str]]:
    """Every image to extract from `path`, with its split name.

    A labelled dataset (see `load_dataset`) gives its train/val/test samples; a folder that is not
    one (images with no class folders, or a single class) gives all its images, unlabelled, with
    split ``""``. A single image file is accepted too.
    """
    p = Path(path).expanduser()
    if p.is_file() and is_image_file(p):
        return [Sample(str(p))], [""]
    try:
        ds = load_dataset(p, val_fraction=val_fraction, seed=seed)
    except DatasetNotFoundError:
        raise
    except DatasetError:
        if not p.is_dir():
            raise
        images, _ = list_images(p)
        if not images:
            raise DatasetError(
                f"{p} holds no image files ({', '.join(sorted(IMAGE_EXTENSIONS))})"
            ) from None
        return [Sample(i) for i in images], [""] * len(images)
    samples = [*ds.train, *ds.val, *ds.test]
    splits = ["train"] * len(ds.train) + ["val"] * len(ds.val) + ["test"] * len(ds.test)
    return samples, splits
