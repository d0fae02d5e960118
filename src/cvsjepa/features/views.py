"""Deterministic spatial views of a clip, for feature extraction with test-time augmentation.

View 0 is the center crop, pixel-identical to :func:`cvsjepa.data.transforms.preprocess_frames`.
The others shift the same ``crop x crop`` window inside the same resized frame (short side resized
to ``crop * 256 / 224``, see :func:`cvsjepa.data.transforms.crop_box`) to its edges and corners:

====  ============  ====================================================
view  name          window (top, left) in the resized ``new_h x new_w`` frame
====  ============  ====================================================
0     center        ``((new_h - crop) // 2, (new_w - crop) // 2)``
1     left          ``(center top, 0)``
2     right         ``(center top, new_w - crop)``
3     top           ``(0, center left)``
4     bottom        ``(new_h - crop, center left)``
5-8   top_left, top_right, bottom_left, bottom_right
====  ============  ====================================================

Endoscapes frames are 854x480: at crop 256 the resized frame is 519x292, so left/right move the
window by 131 px (the views that differ most) and top/bottom by 18 px. No flips: left and right
are not interchangeable in a laparoscopic view. The frame is resized once and every view is cut
from it; resize, clamp and normalisation are the ones of ``transforms.py`` applied in the same
order, so view 0 equals ``preprocess_frames`` bit for bit (tested).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..data.transforms import IMAGENET_MEAN, IMAGENET_STD, crop_box

VIEW_NAMES = ("center", "left", "right", "top", "bottom", "top_left", "top_right", "bottom_left", "bottom_right")
MAX_VIEWS = len(VIEW_NAMES)


def view_box(height: int, width: int, crop: int, view: int) -> tuple[int, int, int, int, int, int]:
    """``(new_h, new_w, top, left, crop, crop)`` of view ``view`` for a ``height x width`` frame
    (the same tuple layout as :func:`cvsjepa.data.transforms.crop_box`)."""
    if not 0 <= view < MAX_VIEWS:
        raise ValueError(f"view must be in 0..{MAX_VIEWS - 1}, got {view}")
    new_h, new_w, top, left, _, _ = crop_box(height, width, crop)
    bottom, right = new_h - crop, new_w - crop
    name = VIEW_NAMES[view]
    if "top" in name:
        top = 0
    elif "bottom" in name:
        top = bottom
    if "left" in name:
        left = 0
    elif "right" in name:
        left = right
    return new_h, new_w, top, left, crop, crop


def preprocess_views(frames: torch.Tensor, crop: int, views: int) -> torch.Tensor:
    """uint8 frames ``[T, H, W, 3]`` -> float32 ``[views, T, 3, crop, crop]``, normalised.

    ``views = 1`` gives exactly ``preprocess_frames(frames, crop)[None]``.
    """
    if frames.dtype != torch.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"expected uint8 frames [T, H, W, 3], got {tuple(frames.shape)} {frames.dtype}")
    if not 1 <= views <= MAX_VIEWS:
        raise ValueError(f"views must be in 1..{MAX_VIEWS}, got {views}")
    _, h, w, _ = frames.shape
    boxes = [view_box(h, w, crop, v) for v in range(views)]
    new_h, new_w = boxes[0][:2]
    x = frames.permute(0, 3, 1, 2).float()
    x = F.interpolate(x, size=(new_h, new_w), mode="bilinear", antialias=True, align_corners=False)
    mean = torch.tensor(IMAGENET_MEAN, dtype=x.dtype).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=x.dtype).view(1, 3, 1, 1)
    out = []
    for _, _, top, left, _, _ in boxes:
        v = x[:, :, top:top + crop, left:left + crop].clamp(0, 255).div_(255.0)
        out.append((v - mean) / std)
    return torch.stack(out)
