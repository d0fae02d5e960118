"""From a config to DataLoaders: index the splits, build clip datasets, batch them."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from ..config import RunConfig
from ..errors import ConfigError
from .dataset import ClipDataset, collate_skip_none
from .endoscapes import SplitIndex
from .index import ENDOSCAPES, load_indices, resolve_format, split_names  # noqa: F401  (split_names: re-export)
from .transforms import view_count

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


def build_splits(cfg: RunConfig, crop: int,
                 roles: tuple[str, ...] = ("train", "val", "test")) -> dict[str, SplitData]:
    """``{role: SplitData}`` for the config's splits (any format, see :mod:`.index`)."""
    names = {r: n for r, n in split_names(cfg).items() if r in roles}
    fmt = resolve_format(cfg)
    if cfg.seg.enabled and fmt != ENDOSCAPES:
        raise ConfigError(f"seg.enabled trains on Endoscapes segmentation masks; the {fmt} data has none: "
                          f"set seg.enabled=false")
    indices = load_indices(cfg, list(names.values()))
    frame_bytes = view_count(cfg.data.view) * 3 * crop * crop * 4  # one preprocessed float32 frame (all views)
    budget = cfg.data.frame_cache_mb * 2**20 // max(1, len(names))
    cache_frames = max(64, budget // frame_bytes)
    out = {}
    coco = None  # COCO instance masks, read once for all splits when a run may need them
    if cfg.seg.enabled:
        from .masks import LABEL_MAP_FILE, CocoMasks, dataset_label_map, seg_class_ids

        label_map = dataset_label_map(Path(cfg.data.root))  # seg_label_map.txt: names -> mask values
        seg_ids = seg_class_ids(cfg, label_map, str(Path(cfg.data.root) / LABEL_MAP_FILE))
        if cfg.seg.masks != "semseg":
            coco = CocoMasks.find(Path(cfg.data.root), label_map)
    for role, name in names.items():
        index = indices[name]
        if index.skipped:
            log.warning("%s: skipped %d keyframe(s) with bad input (on_bad_sample=skip)", name, len(index.skipped))
        # Preprocessed frames are cached: overlapping clips (and later epochs) reuse them. Clips decoded
        # from videos keep whole videos instead: as many as the same memory holds (at least 2).
        longest = max((len(f) for f in index.video_frames.values()), default=1)
        kwargs = dict(crop=crop, target=cfg.data.target, cache_frames=cache_frames,
                      cache_videos=max(2, budget // (frame_bytes * longest)), on_bad_sample=cfg.data.on_bad_sample,
                      view=cfg.data.view)
        if cfg.seg.enabled:  # the keyframe's mask rides along, aligned with the preprocessed clip
            from .seg_dataset import SegClipDataset

            ds = SegClipDataset(index.samples, mask_dir=Path(cfg.data.root) / "semseg", classes=seg_ids,
                                masks=cfg.seg.masks, coco=coco, label_map=label_map, **kwargs)
        else:
            ds = ClipDataset(index.samples, **kwargs)
        out[role] = SplitData(index, ds)
    return out
