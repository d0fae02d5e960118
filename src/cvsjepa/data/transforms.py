"""The one preprocessing path, shared by training, extraction, evaluation and video inference.

V-JEPA 2's evaluation transform, in plain torch (torchvision is not available here):
resize the short side to ``int(crop * 256 / 224)`` (bilinear, antialiased), center-crop
``crop x crop``, scale to [0, 1], normalise with the ImageNet mean and std.
Small differences here are amplified over 24-40 layers, so nothing else may resize or normalise.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def resize_short_side(crop: int) -> int:
    """Short-side length before the center crop: 292 for 256, 438 for 384."""
    return int(crop * 256 / 224)


def crop_box(height: int, width: int, crop: int) -> tuple[int, int, int, int, int, int]:
    """Geometry of the transform for a frame of ``height x width``.

    Returns ``(new_h, new_w, top, left, crop, crop)``: the resized size and the crop window in it.
    Masks and attention overlays use this to map between frame pixels and model pixels.
    """
    short = resize_short_side(crop)
    if height <= width:
        new_h, new_w = short, max(short, round(width * short / height))
    else:
        new_h, new_w = max(short, round(height * short / width)), short
    top = (new_h - crop) // 2
    left = (new_w - crop) // 2
    return new_h, new_w, top, left, crop, crop


def preprocess_frames(frames: torch.Tensor, crop: int) -> torch.Tensor:
    """uint8 frames ``[T, H, W, 3]`` -> float32 ``[T, 3, crop, crop]``, normalised.

    All frames of a clip must share one size (they come from one video).
    """
    if frames.dtype != torch.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"expected uint8 frames [T, H, W, 3], got {tuple(frames.shape)} {frames.dtype}")
    t, h, w, _ = frames.shape
    new_h, new_w, top, left, _, _ = crop_box(h, w, crop)
    x = frames.permute(0, 3, 1, 2).float()
    x = F.interpolate(x, size=(new_h, new_w), mode="bilinear", antialias=True, align_corners=False)
    x = x[:, :, top:top + crop, left:left + crop]
    x = x.clamp_(0, 255).div_(255.0)
    mean = torch.tensor(IMAGENET_MEAN, dtype=x.dtype).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=x.dtype).view(1, 3, 1, 1)
    return (x - mean) / std


def denormalise(x: torch.Tensor) -> torch.Tensor:
    """Inverse of the normalisation, for display: ``[..., 3, H, W]`` -> values in [0, 1]."""
    mean = torch.tensor(IMAGENET_MEAN, dtype=x.dtype, device=x.device).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=x.dtype, device=x.device).view(3, 1, 1)
    return (x * std + mean).clamp(0, 1)
