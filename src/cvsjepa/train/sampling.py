"""Class-balanced sampling weights (exp4); `cvsjepa.distributed.GlobalBatchSampler` draws with them."""

from __future__ import annotations

import torch


def balanced_weights(labels: torch.Tensor) -> torch.Tensor:
    """Per-sample weights for multi-label class balancing.

    Each criterion c contributes 1 / (2 * n_c^y) to a sample with label y on c, where n_c^y counts
    the samples sharing that label (for one criterion alone this gives positives and negatives equal
    total weight); a sample's weight is the mean over the 3 criteria. With several criteria the
    balance is approximate: every criterion's positive share rises toward 1/2, and all-negative
    samples (74 % of Endoscapes train) are drawn less often. labels: [N, 3] in {0, 1}.
    """
    labels = labels.round().float()
    pos = labels.sum(0).clamp(min=1)
    neg = (1 - labels).sum(0).clamp(min=1)
    w = labels / (2 * pos) + (1 - labels) / (2 * neg)
    return w.mean(1)
