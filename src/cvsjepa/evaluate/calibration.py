"""Calibration: Brier score, expected calibration error (ECE) and the reliability-diagram bins.

Each criterion is a binary problem on its own probability ``p`` (not the top-label confidence):

    Brier_c = mean_i (p_ic - y_ic)^2
    ECE_c   = sum_b (n_b / N) * | mean_{i in b} y_ic - mean_{i in b} p_ic |

over ``n_bins`` equal-width bins of ``p`` on [0, 1]: bin b holds ``b/n <= p < (b+1)/n``; the last
bin also holds ``p == 1``. With that edge rule the ECE equals torchmetrics'
``binary_calibration_error(p, y, n_bins, norm="l1")`` whenever no probability is exactly 1
(checked in the tests). Empty bins contribute nothing.

>>> import torch
>>> p, y = torch.tensor([0.1, 0.1, 0.9, 0.9]), torch.tensor([0, 1, 1, 1])
>>> round(brier_score(p, y), 4), round(expected_calibration_error(p, y, n_bins=10), 4)
(0.21, 0.25)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

ECE_BINS = 15


@dataclass(frozen=True)
class ReliabilityBins:
    """Per bin (``n_bins`` entries): edges [lo, hi), count, mean probability, fraction positive
    (NaN for an empty bin)."""

    lo: list[float]
    hi: list[float]
    count: list[int]
    mean_prob: list[float]
    frac_pos: list[float]

    def ece(self) -> float:
        n = sum(self.count)
        if n == 0:
            return float("nan")
        return sum(c / n * abs(f - m) for c, f, m in zip(self.count, self.frac_pos, self.mean_prob) if c)

    def as_dict(self) -> dict:
        return {"lo": self.lo, "hi": self.hi, "count": self.count, "mean_prob": self.mean_prob,
                "frac_pos": self.frac_pos}


def _flat(probs, labels) -> tuple[torch.Tensor, torch.Tensor]:
    p = torch.as_tensor(probs, dtype=torch.float64).reshape(-1)
    y = torch.as_tensor(labels, dtype=torch.float64).reshape(-1).round()
    if p.shape != y.shape:
        raise ValueError(f"probs {tuple(p.shape)} and labels {tuple(y.shape)} differ in size")
    if p.numel() and (p.min() < 0 or p.max() > 1):
        raise ValueError("probabilities must lie in [0, 1]")
    return p, y


def reliability_bins(probs, labels, n_bins: int = ECE_BINS) -> ReliabilityBins:
    """Bin ``probs`` (any shape, values in [0, 1]) against 0/1 ``labels`` of the same size."""
    p, y = _flat(probs, labels)
    idx = (p * n_bins).floor().long().clamp_(0, n_bins - 1)  # p == 1 goes to the last bin
    count = torch.bincount(idx, minlength=n_bins).double()
    psum = torch.zeros(n_bins, dtype=torch.float64).index_add_(0, idx, p)
    ysum = torch.zeros(n_bins, dtype=torch.float64).index_add_(0, idx, y)
    nan = torch.full_like(count, float("nan"))
    mean_p = torch.where(count > 0, psum / count.clamp(min=1), nan)
    frac = torch.where(count > 0, ysum / count.clamp(min=1), nan)
    edges = [b / n_bins for b in range(n_bins + 1)]
    return ReliabilityBins(edges[:-1], edges[1:], [int(c) for c in count], mean_p.tolist(), frac.tolist())


def expected_calibration_error(probs, labels, n_bins: int = ECE_BINS) -> float:
    """ECE (L1, equal-width bins) of binary probabilities; NaN for empty input."""
    return reliability_bins(probs, labels, n_bins).ece()


def brier_score(probs, labels) -> float:
    """Mean squared difference between probability and 0/1 label; NaN for empty input."""
    p, y = _flat(probs, labels)
    return float(((p - y) ** 2).mean()) if p.numel() else float("nan")
