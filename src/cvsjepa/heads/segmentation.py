"""A light segmentation decoder on the backbone's patch tokens of the keyframe's time step.

``seg.decoder=coarse`` (the exp8 decoder):
tokens [B, N, D] -> the last time step's H' x W' tokens (the keyframe ends the causal clip; with
multilevel tokens, the last level) -> 1x1 conv to ``dim`` -> two (x2 upsample, 3x3 conv, GELU)
stages -> 1x1 conv to K classes -> bilinear to the input resolution: logits [B, K, crop, crop].
Its logits live on a 4 H' x 4 W' grid: with a 4x4 token grid (tiny backbone) that is 16x16 for a
64-px crop, and a cystic artery 3-4 px wide cannot be drawn.

``seg.decoder=fine``: the last time step of *every* level (``backbone.layers``; earlier layers keep
more of the patch's own pixels) concatenated along channels -> 1x1 conv to ``dim``, GELU -> 3x3
conv (neighbouring tokens), GELU -> 1x1 conv to ``K * r * r`` -> pixel shuffle: each token decodes
its own ``r x r`` patch of pixels (``r = crop / W'``, the patch size), so the logits have the
input's resolution and a structure thinner than a token can appear.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class SegDecoder(nn.Module):
    def __init__(self, embed_dim: int, num_classes: int, grid: tuple[int, int, int], out_size: int,
                 dim: int = 256, levels: int = 1):
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


class FineSegDecoder(nn.Module):
    """``seg.decoder=fine`` (module docstring): ``tokens [B, L T H W, D] -> logits [B, K, crop, crop]``."""

    def __init__(self, embed_dim: int, num_classes: int, grid: tuple[int, int, int], out_size: int,
                 dim: int = 256, levels: int = 1):
        super().__init__()
        t, h, w = self.grid = tuple(grid)
        self.out_size, self.levels, self.num_classes = out_size, levels, num_classes
        self.r = max(1, out_size // w)  # pixels per token side (the patch size at this crop)
        self.norm = nn.LayerNorm(embed_dim)
        self.proj = nn.Conv2d(levels * embed_dim, dim, 1)
        self.context = nn.Conv2d(dim, dim, 3, padding=1)
        self.to_pixels = nn.Conv2d(dim, num_classes * self.r * self.r, 1)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        t, h, w = self.grid
        b, n, d = tokens.shape
        if n != self.levels * t * h * w:
            raise ValueError(f"{n} tokens are not {self.levels} level(s) of the token grid {self.grid}")
        x = self.norm(tokens.to(self.norm.weight.dtype)).view(b, self.levels, t, h, w, d)[:, :, -1]  # keyframe step
        x = x.permute(0, 1, 4, 2, 3).reshape(b, self.levels * d, h, w)
        x = F.gelu(self.context(F.gelu(self.proj(x))))
        x = F.pixel_shuffle(self.to_pixels(x), self.r)  # [B, K, h r, w r]
        if x.shape[-1] != self.out_size or x.shape[-2] != self.out_size:
            x = F.interpolate(x, size=(self.out_size, self.out_size), mode="bilinear", align_corners=False)
        return x


# seg.decoder -> its class; every entry takes (embed_dim, num_classes, grid, out_size, dim, levels)
SEG_DECODERS = {"coarse": SegDecoder, "fine": FineSegDecoder}


def masked_seg_loss(seg_logits: torch.Tensor, mask: torch.Tensor, has_mask: torch.Tensor) -> torch.Tensor:
    """Cross-entropy over the samples that have a mask (255 ignored); exactly 0 with no gradient path
    through the other samples when none has one."""
    has_mask = has_mask.bool()
    if not has_mask.any():
        return seg_logits.sum() * 0.0
    return F.cross_entropy(seg_logits[has_mask], mask[has_mask], ignore_index=255)
