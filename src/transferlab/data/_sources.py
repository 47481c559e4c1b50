"""Where labelled images come from: a folder of class folders, train/ and val/ (test/) folders,
or a CSV of paths and labels; `load_dataset` reads any of them into a checked `Dataset`."""

from __future__ import annotations

import csv
import logging
import os
from collections import defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path

from transferlab.data._datasets import Dataset, Sample, stratified_split
from transferlab.data._images import IMAGE_EXTENSIONS, is_image_file
from transferlab.exceptions import DatasetError, DatasetNotFoundError

__all__ = ["collect_images", "labelled_images", "list_images", "load_dataset"]

logger = logging.getLogger(__name__)

#: Names tried, in order, for the validation and test splits of an ImageFolder tree.
VAL_SPLIT_NAMES = ("val", "valid", "validation")
TEST_SPLIT_NAMES = ("test",)
TRAIN_SPLIT_NAMES = ("train", "training")


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
        explicit = bool(val)  # the split column names validation rows: the user's held-out set
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
        explicit = True  # a train/ folder names the split, even when val/ is drawn here
    else:
        samples, ignored = _read_class_tree(root, what="dataset folder")
        train, val = stratified_split(samples, val_fraction, seed)
        note = f"stratified split here: val_fraction={val_fraction}, seed={seed}"
        source = "imagefolder"
        explicit = False
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
        split_explicit=explicit,
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


def labelled_images(path: str | os.PathLike[str]) -> list[Sample]:
    """Every labelled image at `path`, whatever split it is in: the forms `load_dataset`
    reads, but a class may hold a single image (nothing is held out), as when labelling starts.

    Raises:
        DatasetNotFoundError: `path` does not exist.
        DatasetError: no class folders, an empty class folder, or a CSV without the needed columns.
    """
    root = Path(path).expanduser()
    if not root.exists():
        raise DatasetNotFoundError(f"dataset path does not exist: {root}")
    if root.is_file():
        unsplit, splits, _ = _read_csv(root)
        return [*unsplit, *(s for rows in splits.values() for s in rows)]
    named = [
        d
        for names in (TRAIN_SPLIT_NAMES, VAL_SPLIT_NAMES, TEST_SPLIT_NAMES)
        if (d := _find_split(root, names)) is not None
    ]
    if named:
        return [s for d in named for s in _read_class_tree(d, what=f"{d.name} folder")[0]]
    return _read_class_tree(root, what="dataset folder")[0]
