"""Images in, clean RGB images, labelled samples and model-ready tensors out.

* `load_image` (`_images`) decodes one file robustly: EXIF orientation, every common mode made
  RGB, and every way a file can be broken turned into an `ImageLoadError` naming the path and why.
* `load_dataset` (`_sources`) turns a folder tree or a CSV into a checked `Dataset` of `Sample`
  lists, with the checks a user needs before spending minutes on extraction.
* `stratified_split` / `stratified_subsample` (`_datasets`): the one way the package divides or
  thins labelled data.
* `eval_transform` / `train_transform` (`_transforms`): the one preprocessing, from the backbone's
  timm data config; `ImageFileDataset` (`_loading`) feeds a `DataLoader`, skipping broken files.
* `make_texture_dataset` (`_samples`): the built-in demo data.
* `render_styles` / `colourfulness` (`_styles`): line and greyscale renderings of photos (the
  ``style`` remedy for drawings and greyscale targets) and the saturation the remedy rule reads.
"""

from __future__ import annotations

from transferlab._internal.lazy import lazy_namespace

# name -> the private module that defines it (imported on first use: see _internal.lazy)
_NAMES = {
    "Dataset": "_datasets",
    "Sample": "_datasets",
    "label_matrix": "_datasets",
    "stratified_split": "_datasets",
    "stratified_split_indices": "_datasets",
    "stratified_subsample": "_datasets",
    "DEFAULT_MAX_PIXELS": "_images",
    "DEFAULT_MAX_ASPECT": "_images",
    "check_image_shape": "_images",
    "IMAGE_EXTENSIONS": "_images",
    "is_image_file": "_images",
    "load_image": "_images",
    "ImageFileDataset": "_loading",
    "collate_skipping_failures": "_loading",
    "TEXTURE_CLASSES": "_samples",
    "make_texture_dataset": "_samples",
    "TEST_SPLIT_NAMES": "_sources",
    "TRAIN_SPLIT_NAMES": "_sources",
    "VAL_SPLIT_NAMES": "_sources",
    "collect_images": "_sources",
    "labelled_images": "_sources",
    "list_images": "_sources",
    "load_dataset": "_sources",
    "COLOURLESS_SATURATION": "_styles",
    "STYLES": "_styles",
    "colourfulness": "_styles",
    "render_style": "_styles",
    "render_styles": "_styles",
    "eval_transform": "_transforms",
    "train_transform": "_transforms",
}

__all__ = [
    "COLOURLESS_SATURATION",
    "DEFAULT_MAX_ASPECT",
    "DEFAULT_MAX_PIXELS",
    "IMAGE_EXTENSIONS",
    "STYLES",
    "TEST_SPLIT_NAMES",
    "TEXTURE_CLASSES",
    "TRAIN_SPLIT_NAMES",
    "VAL_SPLIT_NAMES",
    "Dataset",
    "ImageFileDataset",
    "Sample",
    "check_image_shape",
    "collate_skipping_failures",
    "collect_images",
    "colourfulness",
    "eval_transform",
    "is_image_file",
    "label_matrix",
    "labelled_images",
    "list_images",
    "load_dataset",
    "load_image",
    "make_texture_dataset",
    "render_style",
    "render_styles",
    "stratified_split",
    "stratified_split_indices",
    "stratified_subsample",
    "train_transform",
]

__getattr__, __dir__ = lazy_namespace(__name__, _NAMES)
