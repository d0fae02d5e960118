"""Segmentation metrics: IoU per class from a confusion matrix accumulated over a split.

IoU_k = TP_k / (TP_k + FP_k + FN_k) over all labelled pixels (255 = ignore). A class absent from
both ground truth and prediction has an undefined IoU (NaN) and is left out of the mean.
"""

from __future__ import annotations

import math

import torch


class ConfusionMatrix:
    def __init__(self, num_classes: int):
        self.k = num_classes
        self.m = torch.zeros(num_classes, num_classes, dtype=torch.long)

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        """pred, target: long [..., H, W]; target 255 ignored."""
        keep = target != 255
        idx = target[keep] * self.k + pred[keep]
        self.m += torch.bincount(idx.flatten().cpu(), minlength=self.k * self.k).view(self.k, self.k)

    def iou(self) -> list[float]:
        tp = self.m.diag().double()
        denom = self.m.sum(0).double() + self.m.sum(1).double() - tp
        return [float(tp[i] / denom[i]) if denom[i] > 0 else math.nan for i in range(self.k)]

    def miou(self) -> float:
        vals = [v for v in self.iou() if not math.isnan(v)]
        return sum(vals) / len(vals) if vals else math.nan

    @property
    def pixels(self) -> int:
        return int(self.m.sum())


def constant_prediction_miou(cm: ConfusionMatrix) -> float:
    """mIoU of predicting the most frequent ground-truth class everywhere: the floor to beat."""
    gt = cm.m.sum(1)
    if gt.sum() == 0:
        return math.nan
    const = ConfusionMatrix(cm.k)
    c = int(gt.argmax())
    const.m[:, c] = gt
    return const.miou()
