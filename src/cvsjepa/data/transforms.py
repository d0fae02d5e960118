"""The one preprocessing path, shared by training, extraction, evaluation and video inference.

A frame is resized (bilinear, antialiased), one or more ``crop x crop`` windows are cut from it
(``data.view``), scaled to [0, 1] and normalised with the ImageNet mean and std. Small differences
here are amplified over 24-40 layers, so nothing else may resize or normalise.

``data.view`` (the field of view the model sees; Endoscapes frames are 854x480):

=============  ==========================================================  =================
view           geometry                                                    share of frame
=============  ==========================================================  =================
center         V-JEPA 2's evaluation transform: short side resized to      43 % (crop 256:
               ``int(crop * 256 / 224)``, the central ``crop x crop``      519x292 -> 256)
letterbox      the whole frame, long side resized to ``crop``, padded to   100 %, at 56 %
               a square with the ImageNet mean (= exactly 0 after          of the pixels
               normalisation, what the network sees as "no signal")        center has
three_crops    short side resized to ``crop``, three windows along the     100 % (3 views,
               long side: start, middle, end (left, centre, right)         overlapping)
=============  ==========================================================  =================

A single-view clip is ``[T, 3, crop, crop]``; a ``three_crops`` clip is ``[3, T, 3, crop, crop]``
(views first, left/centre/right). The model runs the backbone on each view and concatenates the
views' tokens along the token axis (view-major), so the head *pools* over all three: the evidence
for a criterion may lie in one view only, and averaging per-view predictions would dilute it. The
same holds in training, extraction, evaluation and prediction (one code path: this module). The
official V-JEPA 2 probe averages the predictions of 3 views at test time and resizes the short side
to ``crop * 256 / 224`` first (losing 12 % of the height); here the short side is resized to
``crop`` so the three windows cover the whole frame.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import get_args

import numpy as np
import torch
import torch.nn.functional as F

from ..config import DataView
from .masks import IGNORE  # mask value outside a view's frame content (letterbox padding)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
VIEWS = get_args(DataView)


def resize_short_side(crop: int) -> int:
    """Short-side length before the center crop: 292 for 256, 438 for 384."""
    return int(crop * 256 / 224)


def crop_box(height: int, width: int, crop: int) -> tuple[int, int, int, int, int, int]:
    """Geometry of the ``center`` view for a frame of ``height x width``.

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


@dataclass(frozen=True)
class Window:
    """A ``size x size`` window at ``(top, left)`` of a frame resized to ``new_h x new_w``. The window
    may reach outside the resized frame (letterbox); what lies outside is padding."""
    new_h: int
    new_w: int
    top: int
    left: int
    size: int

    def inside(self) -> tuple[slice, slice, slice, slice]:
        """(rows, cols) of the resized frame inside the window, and where they go in the window."""
        y0, y1 = max(self.top, 0), min(self.top + self.size, self.new_h)
        x0, x1 = max(self.left, 0), min(self.left + self.size, self.new_w)
        return (slice(y0, y1), slice(x0, x1),
                slice(y0 - self.top, y1 - self.top), slice(x0 - self.left, x1 - self.left))


def check_view(view: str) -> str:
    if view not in VIEWS:
        raise ValueError(f"view must be one of {', '.join(VIEWS)}, got {view!r}")
    return view


def view_count(view: str) -> int:
    """Spatial views per clip: 3 for ``three_crops``, else 1."""
    return 3 if check_view(view) == "three_crops" else 1


def view_windows(height: int, width: int, crop: int, view: str = "center") -> tuple[Window, ...]:
    """The windows of ``view`` for a ``height x width`` frame (one per spatial view, in order)."""
    check_view(view)
    if view == "center":
        new_h, new_w, top, left, _, _ = crop_box(height, width, crop)
        return (Window(new_h, new_w, top, left, crop),)
    if view == "letterbox":
        scale = crop / max(height, width)
        new_h, new_w = max(1, round(height * scale)), max(1, round(width * scale))
        return (Window(new_h, new_w, (new_h - crop) // 2, (new_w - crop) // 2, crop),)
    scale = crop / min(height, width)  # three_crops: the short side fills the window
    new_h, new_w = max(crop, round(height * scale)), max(crop, round(width * scale))
    if new_w >= new_h:
        return tuple(Window(new_h, new_w, 0, left, crop) for left in (0, (new_w - crop) // 2, new_w - crop))
    return tuple(Window(new_h, new_w, top, 0, crop) for top in (0, (new_h - crop) // 2, new_h - crop))


def _normalise(x: torch.Tensor) -> torch.Tensor:
    """``[..., 3, h, w]`` in 0..255 -> normalised (clamp, /255, ImageNet mean and std)."""
    x = x.clamp(0, 255).div_(255.0)
    mean = torch.tensor(IMAGENET_MEAN, dtype=x.dtype).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=x.dtype).view(3, 1, 1)
    return (x - mean) / std


def cut_window(resized: torch.Tensor, w: Window) -> torch.Tensor:
    """``[..., 3, new_h, new_w]`` resized pixels (0..255) -> normalised ``[..., 3, size, size]``;
    padding (outside the frame) is exactly 0, i.e. the ImageNet mean."""
    rows, cols, wrows, wcols = w.inside()
    content = _normalise(resized[..., rows, cols])
    if content.shape[-2:] == (w.size, w.size):
        return content
    out = content.new_zeros(*content.shape[:-2], w.size, w.size)
    out[..., wrows, wcols] = content
    return out


def preprocess_frames(frames: torch.Tensor, crop: int, view: str = "center") -> torch.Tensor:
    """uint8 frames ``[T, H, W, 3]`` -> float32 ``[T, 3, crop, crop]`` (``three_crops``:
    ``[3, T, 3, crop, crop]``), normalised. All frames of a clip must share one size (one video).
    Frames are treated independently, so preprocessing frame by frame gives the same clip."""
    if frames.dtype != torch.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"expected uint8 frames [T, H, W, 3], got {tuple(frames.shape)} {frames.dtype}")
    _, h, w, _ = frames.shape
    windows = view_windows(h, w, crop, view)
    x = frames.permute(0, 3, 1, 2).float()
    x = F.interpolate(x, size=(windows[0].new_h, windows[0].new_w), mode="bilinear", antialias=True,
                      align_corners=False)
    views = [cut_window(x, win) for win in windows]
    return views[0] if len(views) == 1 else torch.stack(views)


def preprocess_frame(frame: torch.Tensor, crop: int, view: str = "center") -> torch.Tensor:
    """One uint8 frame ``[H, W, 3]`` -> ``[3, crop, crop]`` (``three_crops``: ``[3, 3, crop, crop]``)."""
    x = preprocess_frames(frame.unsqueeze(0), crop, view)
    return x[0] if x.ndim == 4 else x[:, 0]


def stack_clip(frames: list[torch.Tensor]) -> torch.Tensor:
    """Preprocessed frames of one clip (each from :func:`preprocess_frame`) -> the clip tensor:
    ``[T, 3, crop, crop]``, or ``[V, T, 3, crop, crop]`` for multi-view frames ``[V, 3, crop, crop]``."""
    x = torch.stack(frames)
    return x if x.ndim == 4 else x.transpose(0, 1)


def preprocess_mask(mask: np.ndarray, crop: int, view: str = "center") -> torch.Tensor:
    """uint8 ``[H, W]`` class ids -> long ``[crop, crop]`` (``three_crops``: ``[3, crop, crop]``):
    nearest resize and the windows of :func:`preprocess_frames`; padding is ``IGNORE`` (255)."""
    h, w = mask.shape
    windows = view_windows(h, w, crop, view)
    m = torch.from_numpy(mask.astype(np.int64))[None, None].float()
    m = F.interpolate(m, size=(windows[0].new_h, windows[0].new_w), mode="nearest-exact")[0, 0].long()
    out = []
    for win in windows:
        rows, cols, wrows, wcols = win.inside()
        v = torch.full((crop, crop), IGNORE, dtype=torch.long)
        v[wrows, wcols] = m[rows, cols]
        out.append(v)
    return out[0] if len(out) == 1 else torch.stack(out)


def view_coverage(mask: np.ndarray, crop: int, view: str, class_ids: list[int]) -> dict[int, tuple[int, int]]:
    """Per class id: ``(pixels the view keeps, pixels in the frame)``, counted on the resized mask
    (nearest, as the model's mask); a pixel in several windows (three_crops) counts once."""
    h, w = mask.shape
    windows = view_windows(h, w, crop, view)
    m = torch.from_numpy(mask.astype(np.int64))[None, None].float()
    m = F.interpolate(m, size=(windows[0].new_h, windows[0].new_w), mode="nearest-exact")[0, 0].long()
    kept = torch.zeros_like(m, dtype=torch.bool)
    for win in windows:
        rows, cols, _, _ = win.inside()
        kept[rows, cols] = True
    return {c: (int(((m == c) & kept).sum()), int((m == c).sum())) for c in class_ids}


def denormalise(x: torch.Tensor) -> torch.Tensor:
    """Inverse of the normalisation, for display: ``[..., 3, H, W]`` -> values in [0, 1]."""
    mean = torch.tensor(IMAGENET_MEAN, dtype=x.dtype, device=x.device).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=x.dtype, device=x.device).view(3, 1, 1)
    return (x * std + mean).clamp(0, 1)
