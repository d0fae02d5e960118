"""Segmentation metrics: IoU per class from a confusion matrix accumulated over a split.

``IoU_k = TP_k / (TP_k + FP_k + FN_k)`` over all labelled pixels (255 = ignore), for every class
*present in the split's ground truth*; a class with no ground-truth pixel has no IoU (NaN: its
false positives are in the matrix, but a score of 0 would say "missed" about a class nobody drew).

``mIoU`` = the mean IoU over those present classes, background (class index 0) included, **only
when at least one foreground class is present**. A split whose masks hold only background (or no
labelled pixel) gets NaN and :meth:`ConfusionMatrix.undefined_reason` says why: averaging the
background's IoU alone reads as 1.0 for a model that predicts background everywhere (and ~0.5 for
one that does not), a number that looks like a result and says nothing about the anatomy.

    >>> cm = ConfusionMatrix(3)
    >>> cm.update(torch.tensor([[0, 1], [1, 1]]), torch.tensor([[0, 1], [1, 0]]))
    >>> [round(x, 3) for x in cm.iou()[:2]], round(cm.miou(), 3)
    ([0.5, 0.667], 0.583)
    >>> only_bg = ConfusionMatrix(3)
    >>> only_bg.update(torch.zeros(2, 2, dtype=torch.long), torch.zeros(2, 2, dtype=torch.long))
    >>> only_bg.miou(), only_bg.undefined_reason()
    (nan, 'the ground-truth masks hold only background (4 labelled pixels)')
"""

from __future__ import annotations

import logging
import math

import torch

log = logging.getLogger("cvsjepa")


class ConfusionMatrix:
    """``m[t, p]``: pixels of ground-truth class index ``t`` predicted as ``p`` (index 0 = background)."""

    def __init__(self, num_classes: int):
        self.k = num_classes
        self.m = torch.zeros(num_classes, num_classes, dtype=torch.long)

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        """pred, target: long [..., H, W]; target 255 ignored."""
        keep = target != 255
        idx = target[keep] * self.k + pred[keep]
        self.m += torch.bincount(idx.flatten().cpu(), minlength=self.k * self.k).view(self.k, self.k)

    def present(self) -> list[bool]:
        """Per class: has ground-truth pixels in the split."""
        return [bool(x) for x in self.m.sum(1) > 0]

    def iou(self) -> list[float]:
        """Per class; NaN for a class absent from the ground truth."""
        tp = self.m.diag().double()
        denom = self.m.sum(0).double() + self.m.sum(1).double() - tp
        return [float(tp[i] / denom[i]) if here else math.nan for i, here in enumerate(self.present())]

    def undefined_reason(self) -> str | None:
        """Why :meth:`miou` is NaN (no labelled pixel, or only background), else None."""
        if self.pixels == 0:
            return "the split has no labelled mask pixel"
        if not any(self.present()[1:]):
            return f"the ground-truth masks hold only background ({self.pixels} labelled pixels)"
        return None

    def miou(self) -> float:
        if self.undefined_reason() is not None:
            return math.nan
        vals = [v for v in self.iou() if not math.isnan(v)]
        return sum(vals) / len(vals)

    @property
    def pixels(self) -> int:
        return int(self.m.sum())


def constant_prediction_miou(cm: ConfusionMatrix) -> float:
    """mIoU of predicting the most frequent ground-truth class everywhere: the floor to beat
    (same rules, so NaN exactly when ``cm.miou()`` is)."""
    gt = cm.m.sum(1)
    if gt.sum() == 0:
        return math.nan
    const = ConfusionMatrix(cm.k)
    c = int(gt.argmax())
    const.m[:, c] = gt
    return const.miou()


def seg_report(cm: ConfusionMatrix, names: list[str], role: str) -> dict:
    """The summary.json entry of a split's segmentation (mIoU, its floor, per-class IoU, which classes
    the ground truth holds), with a logged warning naming the reason when mIoU is undefined."""
    reason = cm.undefined_reason()
    if reason:
        log.warning("%s: segmentation mIoU is NaN (not a result): %s", role, reason)
    return {"miou": cm.miou(), "constant_miou": constant_prediction_miou(cm), "iou": dict(zip(names, cm.iou())),
            "pixels": cm.pixels, "present": dict(zip(names, cm.present())), "miou_undefined": reason}
