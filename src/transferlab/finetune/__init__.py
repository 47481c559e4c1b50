"""Fine-tuning the fastai way, for any timm backbone.

A fresh head sized to the classes; layer groups (stem, each stage, head) from timm's
``group_matcher``; train the head with the body frozen, then unfreeze with discriminative per-group
learning rates on a one-cycle schedule (AdamW, weight decay off for 1-D parameters, label
smoothing, gradient clipping). Checkpoints every epoch and resume from the last completed one with
the same result as an uninterrupted run (per-epoch seeding). MixUp, the weight average (EMA),
early stopping, WiSE-FT and progress are callbacks on the loop's events (`Callback`).

Two choices differ from fastai's defaults, on evidence measured here (see benchmarks/RESULTS.md):

* the head starts from the linear probe fitted on cached features ("LP-FT", Kumar et al. 2022),
  not from timm's random init, whose weights (up to 1/sqrt(k)) make the first predictions wildly
  overconfident; the probe is also the baseline the fine-tune is compared against;
* images are decoded once, downsized, and kept in memory (when they fit), since on a small CPU
  JPEG decoding of large photos would otherwise compete with training for the same cores.

Modules: `_config` (FinetuneConfig, FinetuneResult), `_groups` (layer groups, freezing,
discriminative LRs), `_callbacks`, `_tuner` (the loop), `_checkpoint` (last.pt, best.pt,
resume), `_cost` (a fine-tune's time, measured before it starts), `_lr_find`, `_losses`, `_images` (decode once, in memory), `_predict` (the one TTA
prediction step, which `transferlab.models` uses too), `_precision` (CPU bf16 training keeps
depthwise convolutions in fp32).
"""

from transferlab.backbones import PRECISIONS as PRECISIONS
from transferlab.backbones import use_bf16 as use_bf16
from transferlab.data import eval_transform as eval_transform
from transferlab.data import train_transform as train_transform
from transferlab.finetune._callbacks import EMA as EMA
from transferlab.finetune._callbacks import Callback as Callback
from transferlab.finetune._callbacks import CancelFitException as CancelFitException
from transferlab.finetune._callbacks import Deadline as Deadline
from transferlab.finetune._callbacks import EarlyStopping as EarlyStopping
from transferlab.finetune._callbacks import MixUp as MixUp
from transferlab.finetune._callbacks import Progress as Progress
from transferlab.finetune._callbacks import WiSE as WiSE
from transferlab.finetune._config import BN_POLICIES as BN_POLICIES
from transferlab.finetune._config import CHECKPOINT as CHECKPOINT
from transferlab.finetune._config import FAMILY_DEFAULTS as FAMILY_DEFAULTS
from transferlab.finetune._config import FinetuneConfig as FinetuneConfig
from transferlab.finetune._config import FinetuneResult as FinetuneResult
from transferlab.finetune._cost import StepCost as StepCost
from transferlab.finetune._cost import measure_step_cost as measure_step_cost
from transferlab.finetune._groups import layer_decay_scales as layer_decay_scales
from transferlab.finetune._groups import layer_groups as layer_groups
from transferlab.finetune._lr_find import LRFindResult as LRFindResult
from transferlab.finetune._lr_find import suggest_lr as suggest_lr
from transferlab.finetune._predict import predict_batch as predict_batch
from transferlab.finetune._tuner import FineTuner as FineTuner

__all__ = [
    "BN_POLICIES",
    "CHECKPOINT",
    "EMA",
    "FAMILY_DEFAULTS",
    "PRECISIONS",
    "Callback",
    "CancelFitException",
    "Deadline",
    "EarlyStopping",
    "FineTuner",
    "FinetuneConfig",
    "FinetuneResult",
    "LRFindResult",
    "MixUp",
    "Progress",
    "StepCost",
    "WiSE",
    "eval_transform",
    "layer_decay_scales",
    "layer_groups",
    "measure_step_cost",
    "predict_batch",
    "suggest_lr",
    "train_transform",
    "use_bf16",
]
