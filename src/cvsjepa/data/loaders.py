"""From a config to DataLoaders: index the splits, build clip datasets, batch them."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from ..config import RunConfig
from .dataset import ClipDataset, collate_skip_none
from .endoscapes import SplitIndex, load_splits

log = logging.getLogger("cvsjepa")


@dataclass
class SplitData:
    index: SplitIndex
    dataset: ClipDataset

    def loader(self, batch_size: int, shuffle: bool, num_workers: int, generator: torch.Generator | None = None,
               sampler=None):
        return DataLoader(self.dataset, batch_size=batch_size, shuffle=shuffle and sampler is None,
                          sampler=sampler, num_workers=num_workers, generator=generator,
                          collate_fn=collate_skip_none, drop_last=False, persistent_workers=num_workers > 0)


def split_names(cfg: RunConfig) -> dict[str, str]:
    """role (train/val/test) -> split folder name; an empty name means the role is absent."""
    roles = {"train": cfg.data.train_split, "val": cfg.data.val_split, "test": cfg.data.test_split}
    return {role: name for role, name in roles.items() if name}


def build_splits(cfg: RunConfig, crop: int,
                 roles: tuple[str, ...] = ("train", "val", "test")) -> dict[str, SplitData]:
    names = {r: n for r, n in split_names(cfg).items() if r in roles}
    indices = load_splits(cfg.data.root, list(names.values()), frames=cfg.data.frames, stride=cfg.data.stride,
                          source=cfg.data.source, on_bad_sample=cfg.data.on_bad_sample,
                          limit=cfg.data.limit_per_split)
    frame_bytes = 3 * crop * crop * 4  # one preprocessed float32 frame
    cache_frames = max(64, cfg.data.frame_cache_mb * 2**20 // frame_bytes // max(1, len(names)))
    out = {}
    coco = None  # COCO instance masks, read once for all splits when a run may need them
    if cfg.seg.enabled and cfg.seg.masks != "semseg":
        from .masks import CocoMasks

        coco = CocoMasks.find(Path(cfg.data.root))
    for role, name in names.items():
        index = indices[name]
        if index.skipped:
            log.warning("%s: skipped %d keyframe(s) with bad input (on_bad_sample=skip)", name, len(index.skipped))
        # Preprocessed frames are cached: overlapping clips (and later epochs) reuse them.
        kwargs = dict(crop=crop, target=cfg.data.target, cache_frames=cache_frames,
                      on_bad_sample=cfg.data.on_bad_sample)
        if cfg.seg.enabled:  # the keyframe's mask rides along, aligned with the preprocessed clip
            from .seg_dataset import SegClipDataset

            ds = SegClipDataset(index.samples, mask_dir=Path(cfg.data.root) / "semseg", classes=cfg.seg.classes,
                                masks=cfg.seg.masks, coco=coco, **kwargs)
        else:
            ds = ClipDataset(index.samples, **kwargs)
        out[role] = SplitData(index, ds)
    return out
