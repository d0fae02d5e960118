"""Clips with the keyframe's segmentation mask, mapped through the same resize and view as the frames
(``transforms.preprocess_mask``; letterbox padding is ignore, 255).

Samples without a mask get an all-ignore mask (255) and ``has_mask=False``: they contribute nothing
to the segmentation loss (never a zero, i.e. all-background, mask).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .dataset import ClipDataset
from .frames import frame_size
from .masks import DEFAULT_LABEL_MAP, IGNORE, CocoMasks, read_semseg
from .transforms import preprocess_mask

__all__ = ["SegClipDataset", "preprocess_mask", "remap_classes"]


def remap_classes(mask: torch.Tensor, classes: list[int]) -> torch.Tensor:
    """Raw mask values -> indices into ``classes`` (the dataset's values of ``seg.classes``, in order);
    values not listed -> 0 (background); 255 stays 255."""
    lut = torch.zeros(256, dtype=torch.long)
    for i, c in enumerate(classes):
        lut[c] = i
    lut[IGNORE] = IGNORE
    return lut[mask]


class SegClipDataset(ClipDataset):
    """``masks``: "semseg" reads ``semseg/{vid}_{frame}.png``; "coco" paints the instance masks of
    ``coco`` (default: the ``*_seg/annotation_coco.json`` files next to ``mask_dir``); "auto" takes
    the PNG when there is one and COCO otherwise."""

    def __init__(self, samples, crop: int, mask_dir: Path, classes: list[int], masks: str = "auto",
                 coco: CocoMasks | None = None, label_map: dict[str, int] | None = None, **kwargs):
        """``classes``: the mask values kept, in order (``masks.seg_class_ids``); ``label_map``: the
        dataset's name -> value map (the values a mask may hold)."""
        super().__init__(samples, crop=crop, **kwargs)
        if masks not in ("auto", "semseg", "coco"):
            raise ValueError(f"masks={masks!r}")
        self.mask_dir = Path(mask_dir)
        self.classes = list(classes)
        self.masks = masks
        self.label_map = dict(label_map or DEFAULT_LABEL_MAP)
        if masks != "semseg" and coco is None:
            coco = CocoMasks.find(self.mask_dir.parent, self.label_map)
        self.coco = coco

    def mask_path(self, sample) -> Path:
        return self.mask_dir / f"{sample.video_id}_{sample.frame}.png"

    def mask_source(self, sample) -> str | None:
        """"semseg", "coco" or None (no mask for this keyframe)."""
        if self.masks != "coco" and self.mask_path(sample).exists():
            return "semseg"
        if self.masks != "semseg" and self.coco.has(sample.video_id, sample.frame):
            return "coco"
        return None

    def raw_mask(self, sample) -> np.ndarray | None:
        """uint8 [H, W] class ids at the frame's own size (255 = ignore), or None."""
        source = self.mask_source(sample)
        if source is None:
            return None
        hw = frame_size(sample.clip_paths[-1])
        if source == "semseg":
            return read_semseg(self.mask_path(sample), expected_hw=hw, values=list(self.label_map.values()))
        return self.coco.semantic(sample.video_id, sample.frame, expected_hw=hw)

    def __getitem__(self, i: int) -> dict | None:
        item = super().__getitem__(i)
        if item is None:
            return None
        raw = self.raw_mask(self.samples[i])
        if raw is not None:
            item["mask"] = remap_classes(preprocess_mask(raw, self.crop, self.view), self.classes)
            item["has_mask"] = True
        else:
            item["mask"] = torch.full((self.crop, self.crop), IGNORE, dtype=torch.long)
            item["has_mask"] = False
        return item
