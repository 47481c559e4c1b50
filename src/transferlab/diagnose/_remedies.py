"""Which remedy for a shift between the training images and the images to predict (issue 22).

Every remedy was measured before it is advised, in benchmarks/bench_domain_shift.py on
synthetic shifts of ../shared/datasets (lite0 pre_logits, the val images re-rendered as the
other domain; in = the untouched val photos, cross = the re-rendered ones):

======================= ============== ============== ============== ==============
remedy                  hym -> edges   hym -> sketch  hym -> grey    trash -> colour
======================= ============== ============== ============== ==============
plain probe             0.948 / 0.536  0.948 / 0.778  0.948 / 0.876  0.844 / 0.717
style (line + grey)     0.954 / 0.843  0.954 / 0.902  0.954 / 0.928  0.789 / 0.683
coral (routed)          0.948 / 0.680  0.948 / 0.810  0.948 / 0.895  0.844 / 0.778
self-train              0.948 / 0.673  0.941 / 0.837  0.948 / 0.922  0.789 / 0.756
AdaBN on the target     0.948 / 0.686  0.948 / 0.706  0.948 / 0.745  0.844 / 0.517
fine-tune 1+4 ep        0.954 / 0.562  0.954 / 0.778
fine-tune 1+4 ep, style 0.948 / 0.863  0.948 / 0.882
======================= ============== ============== ============== ==============

(in / cross; RESULTS.md has the run, with fine-tuning beside it). The rule that follows: a
colourless target (drawings, edge maps, greyscale) from colour training photos gets the ``style``
remedy, which needs no target images at all and raised in-domain accuracy too; a target that
still has colour gets ``coral``, the one remedy that raised cross-domain accuracy there without
lowering in-domain accuracy; AdaBN lowered cross-domain accuracy on three of the four shifts and
is never advised for this. Without target images and no colour reading, ``style`` is the only
choice (inductive), and it is only advised when the other split is colourless.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from transferlab.data import COLOURLESS_SATURATION

__all__ = ["REMEDIES", "RemedyChoice", "choose_remedy", "remedy_command"]

#: ``--remedy`` values: ``auto`` applies `choose_remedy`; ``none`` the plain probe
REMEDIES = ("none", "auto", "style", "coral", "self-train")

#: the measured figures behind each advice (bench_domain_shift.py), quoted in its text
MEASURED = {
    "style": "hymenoptera photos -> edge maps 0.536 -> 0.843 (in-domain 0.948 -> 0.954)",
    "coral": "trashnet under a colour/contrast shift 0.717 -> 0.778 (in-domain 0.844 -> 0.844)",
}


@dataclass(frozen=True)
class RemedyChoice:
    """What `choose_remedy` picked and why, in words a report can print."""

    remedy: str
    reason: str
    needs_target: bool


def choose_remedy(
    source_saturation: float, target_saturation: float | None, *, have_target: bool
) -> RemedyChoice:
    """The measured-best remedy for a shift, from how colourful each side is (see the module
    docstring for the figures). `target_saturation` None: nothing is known of the other side."""
    colourless = (
        target_saturation is not None
        and not math.isnan(target_saturation)
        and target_saturation < COLOURLESS_SATURATION
        and source_saturation >= 2 * COLOURLESS_SATURATION
    )
    if colourless:
        return RemedyChoice(
            "style",
            f"the other images are colourless (saturation {target_saturation:.3f} vs "
            f"{source_saturation:.3f} for the training images): line and greyscale renderings "
            f"of the training photos, measured {MEASURED['style']}",
            needs_target=False,
        )
    if have_target:
        return RemedyChoice(
            "coral",
            "the other images keep their colour: CORAL aligns their feature statistics to the "
            f"training images', measured {MEASURED['coral']}",
            needs_target=True,
        )
    return RemedyChoice(
        "none",
        "no target images given, and no rendering measured to help a shift that keeps colour",
        needs_target=True,
    )


def remedy_command(data: str, choice: RemedyChoice, target: str | None, backbone: str) -> str:
    """The `fit` command that applies `choice`."""
    cmd = f"transferlab fit {data} --backbone {backbone} --remedy {choice.remedy}"
    if choice.needs_target and target:
        cmd += f" --target {target}"
    return cmd
