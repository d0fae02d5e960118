"""A light segmentation decoder on the backbone's patch tokens of the keyframe's time step.

tokens [B, N, D] -> the last time step's H' x W' tokens (the keyframe ends the causal clip; with
multilevel tokens, the last level) -> 1x1 conv to ``dim`` -> two (x2 upsample, 3x3 conv, GELU)
stages -> 1x1 conv to K classes -> bilinear to the input resolution: logits [B, K, crop, crop].
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class SegDecoder(nn.Module):
    def __init__(self, embed_dim: int, num_classes: int, grid: tuple[int, int, int], out_size: int,
                 dim: int = 256):
        super().__init__()
        self.grid, self.out_size = tuple(grid), out_size
        self.norm = nn.LayerNorm(embed_dim)
        self.proj = nn.Conv2d(embed_dim, dim, 1)
        self.up = nn.Sequential(
            nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False), nn.Conv2d(dim, dim // 2, 3, padding=1),
            nn.GELU(),
            nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False),
            nn.Conv2d(dim // 2, dim // 4, 3, padding=1), nn.GELU())
        self.classifier = nn.Conv2d(dim // 4, num_classes, 1)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        t, h, w = self.grid
        n = t * h * w
        if tokens.shape[1] % n:
            raise ValueError(f"{tokens.shape[1]} tokens do not fill the token grid {self.grid}")
        x = tokens[:, -n:].to(self.norm.weight.dtype)  # the last level of multilevel tokens
        x = self.norm(x).view(-1, t, h, w, x.shape[-1])[:, -1]  # keyframe = last time step
        x = self.up(F.gelu(self.proj(x.permute(0, 3, 1, 2))))
        return F.interpolate(self.classifier(x), size=(self.out_size, self.out_size), mode="bilinear",
                             align_corners=False)


def masked_seg_loss(seg_logits: torch.Tensor, mask: torch.Tensor, has_mask: torch.Tensor) -> torch.Tensor:
    """Cross-entropy over the samples that have a mask (255 ignored); exactly 0 with no gradient path
    through the other samples when none has one."""
    has_mask = has_mask.bool()
    if not has_mask.any():
        return seg_logits.sum() * 0.0
    return F.cross_entropy(seg_logits[has_mask], mask[has_mask], ignore_index=255)
