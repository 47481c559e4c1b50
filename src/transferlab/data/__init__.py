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
"""

from __future__ import annotations

from transferlab.data._datasets import Dataset as Dataset
from transferlab.data._datasets import Sample as Sample
from transferlab.data._datasets import label_matrix as label_matrix
from transferlab.data._datasets import stratified_split as stratified_split
from transferlab.data._datasets import stratified_split_indices as stratified_split_indices
from transferlab.data._datasets import stratified_subsample as stratified_subsample
from transferlab.data._images import DEFAULT_MAX_PIXELS as DEFAULT_MAX_PIXELS
from transferlab.data._images import IMAGE_EXTENSIONS as IMAGE_EXTENSIONS
from transferlab.data._images import is_image_file as is_image_file
from transferlab.data._images import load_image as load_image
from transferlab.data._loading import ImageFileDataset as ImageFileDataset
from transferlab.data._loading import collate_skipping_failures as collate_skipping_failures
from transferlab.data._samples import TEXTURE_CLASSES as TEXTURE_CLASSES
from transferlab.data._samples import make_texture_dataset as make_texture_dataset
from transferlab.data._sources import TEST_SPLIT_NAMES as TEST_SPLIT_NAMES
from transferlab.data._sources import TRAIN_SPLIT_NAMES as TRAIN_SPLIT_NAMES
from transferlab.data._sources import VAL_SPLIT_NAMES as VAL_SPLIT_NAMES
from transferlab.data._sources import collect_images as collect_images
from transferlab.data._sources import list_images as list_images
from transferlab.data._sources import load_dataset as load_dataset
from transferlab.data._transforms import eval_transform as eval_transform
from transferlab.data._transforms import train_transform as train_transform

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "IMAGE_EXTENSIONS",
    "TEST_SPLIT_NAMES",
    "TEXTURE_CLASSES",
    "TRAIN_SPLIT_NAMES",
    "VAL_SPLIT_NAMES",
    "Dataset",
    "ImageFileDataset",
    "Sample",
    "collate_skipping_failures",
    "collect_images",
    "eval_transform",
    "is_image_file",
    "label_matrix",
    "list_images",
    "load_dataset",
    "load_image",
    "make_texture_dataset",
    "stratified_split",
    "stratified_split_indices",
    "stratified_subsample",
    "train_transform",
]
