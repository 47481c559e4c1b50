"""Diagnosis of transfer: where and why it works or fails.

Layer-wise probing, transferability scores (LogME, LEEP/N-LEEP, NCE, H-score, kNN), domain gap to
a reference set, BatchNorm statistics shift and AdaBN, preprocessing checks, and the findings with
advice built from them, the fine-tuning recipe each kind of shift calls for, duplicates
within and across splits, and likely label errors. Public names are re-exported here; the code lives in private modules.
"""

from __future__ import annotations

from transferlab.diagnose._advice import IMBALANCE as IMBALANCE
from transferlab.diagnose._advice import SEVERITIES as SEVERITIES
from transferlab.diagnose._advice import Finding as Finding
from transferlab.diagnose._advice import advise as advise
from transferlab.diagnose._advice import significant_peak as significant_peak
from transferlab.diagnose._advice import stage_after as stage_after
from transferlab.diagnose._bn import BNShift as BNShift
from transferlab.diagnose._bn import adapt_bn as adapt_bn
from transferlab.diagnose._bn import bn_layers as bn_layers
from transferlab.diagnose._bn import bn_shift as bn_shift
from transferlab.diagnose._bn import image_batches as image_batches
from transferlab.diagnose._bn import save_backbone_weights as save_backbone_weights
from transferlab.diagnose._domain import DomainGap as DomainGap
from transferlab.diagnose._domain import ImageStats as ImageStats
from transferlab.diagnose._domain import default_reference as default_reference
from transferlab.diagnose._domain import domain_classifier_accuracy as domain_classifier_accuracy
from transferlab.diagnose._domain import domain_gap as domain_gap
from transferlab.diagnose._domain import image_statistics as image_statistics
from transferlab.diagnose._domain import mmd_rbf as mmd_rbf
from transferlab.diagnose._duplicates import NEAR_DUPLICATE_SIMILARITY as NEAR_DUPLICATE_SIMILARITY
from transferlab.diagnose._duplicates import THUMBNAIL_SIMILARITY as THUMBNAIL_SIMILARITY
from transferlab.diagnose._duplicates import TWIN_SIMILARITY as TWIN_SIMILARITY
from transferlab.diagnose._duplicates import DuplicateGroup as DuplicateGroup
from transferlab.diagnose._duplicates import cross_split_twins as cross_split_twins
from transferlab.diagnose._duplicates import exact_duplicates as exact_duplicates
from transferlab.diagnose._duplicates import leakage_line as leakage_line
from transferlab.diagnose._duplicates import near_duplicates as near_duplicates
from transferlab.diagnose._duplicates import thumbnails as thumbnails
from transferlab.diagnose._labels import LABEL_ISSUE_C_TIMES_N as LABEL_ISSUE_C_TIMES_N
from transferlab.diagnose._labels import LabelIssue as LabelIssue
from transferlab.diagnose._labels import label_issue_C as label_issue_C
from transferlab.diagnose._labels import label_issues as label_issues
from transferlab.diagnose._layers import LayerProbeResult as LayerProbeResult
from transferlab.diagnose._layers import LayerProfileDisplay as LayerProfileDisplay
from transferlab.diagnose._layers import cv_probe_accuracy as cv_probe_accuracy
from transferlab.diagnose._layers import layer_probe as layer_probe
from transferlab.diagnose._outliers import OUTLIER_NEIGHBOURS as OUTLIER_NEIGHBOURS
from transferlab.diagnose._outliers import Outliers as Outliers
from transferlab.diagnose._outliers import outliers as outliers
from transferlab.diagnose._preprocess import PreprocessingIssue as PreprocessingIssue
from transferlab.diagnose._preprocess import check_input_tensors as check_input_tensors
from transferlab.diagnose._preprocess import check_preprocessing as check_preprocessing
from transferlab.diagnose._recipes import Recipe as Recipe
from transferlab.diagnose._recipes import Shift as Shift
from transferlab.diagnose._recipes import larger_size as larger_size
from transferlab.diagnose._recipes import locate_shift as locate_shift
from transferlab.diagnose._recipes import recipes_for as recipes_for
from transferlab.diagnose._scan import EXTREME_ASPECT as EXTREME_ASPECT
from transferlab.diagnose._scan import TINY_SIDE as TINY_SIDE
from transferlab.diagnose._scan import ImageScan as ImageScan
from transferlab.diagnose._scan import image_problems as image_problems
from transferlab.diagnose._scan import scan_images as scan_images
from transferlab.diagnose._scores import SCORES as SCORES
from transferlab.diagnose._scores import hscore as hscore
from transferlab.diagnose._scores import kendall_tau as kendall_tau
from transferlab.diagnose._scores import knn_accuracy as knn_accuracy
from transferlab.diagnose._scores import leep as leep
from transferlab.diagnose._scores import logme as logme
from transferlab.diagnose._scores import nce as nce
from transferlab.diagnose._scores import pseudo_source_probs as pseudo_source_probs
from transferlab.diagnose._scores import softmax as softmax
from transferlab.diagnose._suggest import COLD_START_PER_CLASS as COLD_START_PER_CLASS
from transferlab.diagnose._suggest import STRATEGIES as STRATEGIES
from transferlab.diagnose._suggest import Suggestions as Suggestions
from transferlab.diagnose._suggest import suggest_labels as suggest_labels

__all__ = [
    "COLD_START_PER_CLASS",
    "EXTREME_ASPECT",
    "IMBALANCE",
    "LABEL_ISSUE_C_TIMES_N",
    "NEAR_DUPLICATE_SIMILARITY",
    "OUTLIER_NEIGHBOURS",
    "SCORES",
    "SEVERITIES",
    "STRATEGIES",
    "THUMBNAIL_SIMILARITY",
    "TINY_SIDE",
    "TWIN_SIMILARITY",
    "BNShift",
    "DomainGap",
    "DuplicateGroup",
    "Finding",
    "ImageScan",
    "ImageStats",
    "LabelIssue",
    "LayerProbeResult",
    "LayerProfileDisplay",
    "Outliers",
    "PreprocessingIssue",
    "Recipe",
    "Shift",
    "Suggestions",
    "adapt_bn",
    "advise",
    "bn_layers",
    "bn_shift",
    "check_input_tensors",
    "check_preprocessing",
    "cross_split_twins",
    "cv_probe_accuracy",
    "default_reference",
    "domain_classifier_accuracy",
    "domain_gap",
    "exact_duplicates",
    "hscore",
    "image_batches",
    "image_problems",
    "image_statistics",
    "kendall_tau",
    "knn_accuracy",
    "label_issue_C",
    "label_issues",
    "larger_size",
    "layer_probe",
    "leakage_line",
    "leep",
    "locate_shift",
    "logme",
    "mmd_rbf",
    "nce",
    "near_duplicates",
    "outliers",
    "pseudo_source_probs",
    "recipes_for",
    "save_backbone_weights",
    "scan_images",
    "significant_peak",
    "softmax",
    "stage_after",
    "suggest_labels",
    "thumbnails",
]
