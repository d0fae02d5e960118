"""Decision thresholds per criterion, chosen on **val** by balanced accuracy, applied elsewhere.

Balanced accuracy = (TPR + TNR) / 2 = (TP / P + TN / N) / 2, computed on binary predictions
``prob >= t``. The candidate thresholds are the distinct val probabilities (every achievable
split) plus 0.5; ties in balanced accuracy go to the threshold closest to 0.5.
Thresholds must never see test labels: callers pass val predictions only.
"""

from __future__ import annotations

import torch


def balanced_accuracy(pred: torch.Tensor, label: torch.Tensor) -> float:
    """pred, label: [N] in {0, 1}. NaN when either class is absent."""
    pred, label = pred.bool(), label.round().bool()
    pos, neg = label.sum().item(), (~label).sum().item()
    if pos == 0 or neg == 0:
        return float("nan")
    tpr = (pred & label).sum().item() / pos
    tnr = (~pred & ~label).sum().item() / neg
    return 0.5 * (tpr + tnr)


def choose_thresholds(probs: torch.Tensor, labels: torch.Tensor) -> list[float]:
    """probs, labels: [N, C] (val). Returns one threshold per criterion (0.5 when undefined)."""
    probs, labels = torch.as_tensor(probs).float(), torch.as_tensor(labels).float()
    out = []
    for c in range(probs.shape[1]):
        p, y = probs[:, c], labels[:, c]
        best_t, best_ba = 0.5, -1.0
        for t in sorted(set(p.tolist()) | {0.5}):
            ba = balanced_accuracy(p >= t, y)
            if ba != ba:  # NaN: only one class present
                break
            if ba > best_ba + 1e-12 or (abs(ba - best_ba) <= 1e-12 and abs(t - 0.5) < abs(best_t - 0.5)):
                best_t, best_ba = t, ba
        out.append(float(best_t))
    return out
