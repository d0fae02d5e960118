"""Classification losses over the 3 CVS criteria.

Every loss takes logits [B, 3] and targets [B, 3] in [0, 1] (hard 0/1 labels, or soft rater means)
and returns the mean over batch and criteria.

- BCE:  l = -w_c * y * log(p) - (1 - y) * log(1 - p),  w_c = pos_weight[c] (exp6: [1, 5, 1]).
- Focal (Lin et al. 2017): l = alpha_t * (1 - p_t)^gamma * BCE,  p_t = p y + (1 - p)(1 - y),
  alpha_t = alpha y + (1 - alpha)(1 - y)  (exp3: alpha 0.25, gamma 2).
- Label smoothing (applied first): y -> y (1 - eps) + eps / 2.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from typing import get_args

from ..config import LossConfig, LossType


class CVSLoss(nn.Module):
    def __init__(self, kind: str = "bce", pos_weight: list[float] | None = None, label_smoothing: float = 0.0,
                 focal_alpha: float = 0.25, focal_gamma: float = 2.0):
        super().__init__()
        self.kind = kind
        self.label_smoothing = label_smoothing
        self.focal_alpha, self.focal_gamma = focal_alpha, focal_gamma
        pw = torch.tensor(pos_weight, dtype=torch.float32) if pos_weight else None
        self.register_buffer("pos_weight", pw, persistent=False)

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        y = targets.float()
        if self.label_smoothing:
            y = y * (1 - self.label_smoothing) + self.label_smoothing / 2
        bce = F.binary_cross_entropy_with_logits(logits, y, pos_weight=self.pos_weight, reduction="none")
        if self.kind == "bce":
            return bce.mean()
        p = torch.sigmoid(logits)
        p_t = p * y + (1 - p) * (1 - y)
        alpha_t = self.focal_alpha * y + (1 - self.focal_alpha) * (1 - y)
        return (alpha_t * (1 - p_t).pow(self.focal_gamma) * bce).mean()


def build_loss(cfg: LossConfig) -> nn.Module:
    if cfg.type not in get_args(LossType):
        raise ValueError(f"unknown loss.type {cfg.type!r}")  # the config refuses it first, naming the choices
    return CVSLoss(cfg.type, cfg.pos_weight or None, cfg.label_smoothing, cfg.focal_alpha, cfg.focal_gamma)
