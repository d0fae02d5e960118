"""MixUp and CutMix for a batch dict, in pixel space (``video`` [B, T, 3, H, W]) when the backbone is
in the loop, or in token space (``tokens`` [B, N, D]) when training from a feature store.

MixUp: x = lam * x_a + (1 - lam) * x_b,  y = lam * y_a + (1 - lam) * y_b,  lam ~ Beta(a, a).
CutMix (pixels): a box of area fraction (1 - lam) is pasted from x_b into every frame of x_a.
CutMix (tokens): a random (1 - lam) fraction of token positions is taken from x_b.
The targets are mixed by the fraction actually replaced.
"""

from __future__ import annotations

import math

import numpy as np
import torch


def _beta(alpha: float, gen: torch.Generator) -> float:
    """lam ~ Beta(alpha, alpha), drawn reproducibly from the loop's torch generator."""
    seed = int(torch.randint(0, 2**31 - 1, (1,), generator=gen))
    return float(np.random.default_rng(seed).beta(alpha, alpha))


def mix_batch(batch: dict, mixup_alpha: float, cutmix_alpha: float, prob: float,
              gen: torch.Generator) -> dict:
    if (mixup_alpha <= 0 and cutmix_alpha <= 0) or torch.rand(1, generator=gen).item() >= prob:
        return batch
    key = "video" if "video" in batch else "tokens"
    x, y = batch[key], batch["target"]
    perm = torch.randperm(len(x), generator=gen).to(x.device)
    use_cutmix = cutmix_alpha > 0 and (mixup_alpha <= 0 or torch.rand(1, generator=gen).item() < 0.5)
    if not use_cutmix:
        lam = _beta(mixup_alpha, gen)
        x = lam * x + (1 - lam) * x[perm]
    elif key == "video":
        x, lam = _cutmix_pixels(x, perm, _beta(cutmix_alpha, gen), gen)
    else:
        x, lam = _cutmix_tokens(x, perm, _beta(cutmix_alpha, gen), gen)
    out = dict(batch)
    out[key] = x
    out["target"] = lam * y + (1 - lam) * y[perm]
    return out


def _cutmix_pixels(x: torch.Tensor, perm: torch.Tensor, lam: float, gen: torch.Generator):
    h, w = x.shape[-2:]
    cut = math.sqrt(1 - lam)
    bh, bw = int(h * cut), int(w * cut)
    cy = int(torch.randint(0, h, (1,), generator=gen))
    cx = int(torch.randint(0, w, (1,), generator=gen))
    y0, y1 = max(cy - bh // 2, 0), min(cy + bh // 2, h)
    x0, x1 = max(cx - bw // 2, 0), min(cx + bw // 2, w)
    x = x.clone()
    x[..., y0:y1, x0:x1] = x[perm][..., y0:y1, x0:x1]
    return x, 1 - (y1 - y0) * (x1 - x0) / (h * w)


def _cutmix_tokens(x: torch.Tensor, perm: torch.Tensor, lam: float, gen: torch.Generator):
    n = x.shape[1]
    k = int(round((1 - lam) * n))
    idx = torch.randperm(n, generator=gen)[:k].to(x.device)
    x = x.clone()
    x[:, idx] = x[perm][:, idx]
    return x, 1 - k / n
