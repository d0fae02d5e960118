"""Classification losses over the 3 CVS criteria. All take logits [B, 3] and targets [B, 3] in
[0, 1] (hard 0/1 labels or soft rater means) and return a scalar mean."""

from __future__ import annotations

import torch
from torch import nn

from ..config import LossConfig


def build_loss(cfg: LossConfig) -> nn.Module:
    if cfg.type == "bce":
        return nn.BCEWithLogitsLoss()
    raise ValueError(f"unknown loss.type {cfg.type!r}")  # config validation lists the choices
