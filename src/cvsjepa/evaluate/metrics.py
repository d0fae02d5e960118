"""CVS metrics: per-criterion average precision and their mean, as every Endoscapes paper reports.

AP_c is the non-interpolated average precision (sklearn's ``average_precision_score``, computed
here by ``torchmetrics``) of the scores for criterion c against the binary labels, pooled over all
keyframes of a split:  AP = sum_k (R_k - R_{k-1}) * P_k  over descending score thresholds.

Degenerate input policy: a criterion with no positive label in the split has an undefined AP.
torchmetrics returns 0 for it, which would silently drag the mean down; here it is NaN, a warning
names the criterion, and mAP is the mean over the remaining criteria (``nanmean``).

>>> import torch
>>> r = cvs_average_precision(torch.tensor([[.9, .1, .8], [.2, .3, .1]]), torch.tensor([[1, 0, 1], [0, 0, 0]]))
>>> [round(a, 3) if a == a else "nan" for a in r.ap], round(r.map, 3)
([1.0, 'nan', 1.0], 1.0)
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import torch
from torchmetrics.functional.classification import multilabel_average_precision

from ..criteria import CRITERIA


@dataclass(frozen=True)
class APResult:
    ap: tuple[float, ...]  # per criterion; NaN where the split has no positive
    map: float  # nanmean of ap; NaN if every criterion is undefined

    def as_dict(self, prefix: str = "", names: tuple[str, ...] = CRITERIA) -> dict[str, float]:
        out = {f"{prefix}map": self.map}
        out.update({f"{prefix}ap_{n}": a for n, a in zip(names, self.ap)})
        return out


def _check(scores: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    scores = torch.as_tensor(scores, dtype=torch.float32)
    labels = torch.as_tensor(labels)
    if scores.ndim != 2 or scores.shape != labels.shape:
        raise ValueError(f"scores {tuple(scores.shape)} and labels {tuple(labels.shape)} must both be [N, C]")
    if not torch.isfinite(scores).all():
        raise ValueError("scores contain NaN or inf")
    labels = labels.round().long()  # hard labels; soft rater means are rounded (majority of 3)
    if ((labels != 0) & (labels != 1)).any():
        raise ValueError("labels must be 0/1 (or rater means in [0, 1])")
    return scores, labels


def cvs_average_precision(scores: torch.Tensor, labels: torch.Tensor,
                          names: tuple[str, ...] = CRITERIA, where: str = "") -> APResult:
    """Per-criterion AP and mAP. ``scores`` [N, C] (probabilities or logits; AP only uses the
    order), ``labels`` [N, C] in {0, 1}. ``where``: the split's name, for the warning."""
    scores, labels = _check(scores, labels)
    num_labels = scores.shape[1]
    if scores.shape[0] == 0:
        return APResult(tuple([math.nan] * num_labels), math.nan)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*No positive samples.*")
        ap = multilabel_average_precision(scores, labels, num_labels=num_labels, average=None,
                                          thresholds=None)
    ap_list = [float(a) for a in ap]
    for c in range(num_labels):
        if labels[:, c].sum() == 0:
            name = names[c] if c < len(names) else str(c)
            warnings.warn(f"criterion {name} has no positive label in {split_phrase(where)}: its AP is "
                          f"undefined (NaN) and left out of the mAP", stacklevel=2)
            ap_list[c] = math.nan
    valid = [a for a in ap_list if not math.isnan(a)]
    return APResult(tuple(ap_list), sum(valid) / len(valid) if valid else math.nan)


def split_phrase(where: str) -> str:
    """``"val"`` -> ``"the val split"``; ``""`` -> ``"this split"`` (warning texts name the split)."""
    return f"the {where} split" if where else "this split"


def prevalence(labels: torch.Tensor) -> list[float]:
    """Fraction of positives per criterion: the AP of a constant (uninformative) score."""
    labels = torch.as_tensor(labels).round().float()
    return [float(x) for x in labels.mean(0)]
