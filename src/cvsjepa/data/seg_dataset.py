"""Clips with the keyframe's segmentation mask, mapped through the same resize and crop as the frames.

Samples without a mask get an all-ignore mask (255) and ``has_mask=False``: they contribute nothing
to the segmentation loss (never a zero, i.e. all-background, mask).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .dataset import ClipDataset
from .masks import IGNORE, read_semseg
from .transforms import crop_box


def preprocess_mask(mask: np.ndarray, crop: int) -> torch.Tensor:
    """uint8 [H, W] class ids -> long [crop, crop]: nearest resize of the short side, center crop
    (the geometry of ``transforms.preprocess_frames``)."""
    h, w = mask.shape
    new_h, new_w, top, left, _, _ = crop_box(h, w, crop)
    m = torch.from_numpy(mask.astype(np.int64))[None, None].float()
    m = F.interpolate(m, size=(new_h, new_w), mode="nearest-exact")[0, 0].long()
    return m[top:top + crop, left:left + crop]


def remap_classes(mask: torch.Tensor, classes: list[int]) -> torch.Tensor:
    """Raw ids -> indices into ``classes``; ids not listed -> 0 (background); 255 stays 255."""
    lut = torch.zeros(256, dtype=torch.long)
    for i, c in enumerate(classes):
        lut[c] = i
    lut[IGNORE] = IGNORE
    return lut[mask]


class SegClipDataset(ClipDataset):
    def __init__(self, samples, crop: int, mask_dir: Path, classes: list[int], **kwargs):
        super().__init__(samples, crop=crop, **kwargs)
        self.mask_dir = Path(mask_dir)
        self.classes = list(classes)

    def mask_path(self, sample) -> Path:
        return self.mask_dir / f"{sample.video_id}_{sample.frame}.png"

    def __getitem__(self, i: int) -> dict | None:
        item = super().__getitem__(i)
        if item is None:
            return None
        s = self.samples[i]
        path = self.mask_path(s)
        if path.exists():
            raw = read_semseg(path, expected_hw=tuple(int(x) for x in _frame_hw(s.clip_paths[-1])))
            item["mask"] = remap_classes(preprocess_mask(raw, self.crop), self.classes)
            item["has_mask"] = True
        else:
            item["mask"] = torch.full((self.crop, self.crop), IGNORE, dtype=torch.long)
            item["has_mask"] = False
        return item


def _frame_hw(path: Path) -> tuple[int, int]:
    from PIL import Image

    with Image.open(path) as img:
        return img.height, img.width
