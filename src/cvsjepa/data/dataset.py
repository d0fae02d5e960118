"""The torch Dataset of keyframe clips: JPEG frames -> preprocessed ``[T, 3, crop, crop]`` clips
(``[3, T, 3, crop, crop]`` with ``data.view=three_crops``).

Frames are preprocessed one at a time and the preprocessed frame is cached (LRU keyed by path):
consecutive keyframe clips overlap (16-s windows every 5 s), so a sequential pass decodes and
resizes each JPEG once. Preprocessing per frame equals preprocessing the stacked clip, because
``preprocess_frames`` treats the frames of a clip independently. The decoded size is kept with each
frame, so a frame of another size inside a clip is refused rather than stretched.
"""

from __future__ import annotations

import functools
import logging
from pathlib import Path
from typing import get_args

import torch
from torch.utils.data import Dataset, default_collate

from ..config import TargetMode
from ..errors import DataError
from .endoscapes import BAD_SAMPLE_POLICIES, Sample
from .frames import check_clip_sizes, read_frame
from .transforms import check_view, preprocess_frame, stack_clip
from .video_frames import FrameSource, decode_groups

log = logging.getLogger("cvsjepa")

TARGET_MODES = get_args(TargetMode)


def load_preprocessed(path: Path, crop: int, view: str = "center") -> torch.Tensor:
    """One JPEG -> float32 ``[3, crop, crop]`` (``three_crops``: ``[3, 3, crop, crop]``) through the
    one preprocessing path."""
    return preprocess_pixels(read_frame(path), crop, view)


def preprocess_pixels(pixels: torch.Tensor, crop: int, view: str = "center") -> torch.Tensor:
    """One decoded frame, uint8 ``[H, W, 3]`` -> float32 ``[3, crop, crop]`` (``three_crops``:
    ``[3, 3, crop, crop]``): the one preprocessing path."""
    return preprocess_frame(pixels, crop, view)


def load_sized(path: Path, crop: int, view: str = "center") -> tuple[torch.Tensor, tuple[int, int]]:
    """:func:`load_preprocessed` and the decoded ``(H, W)`` of the JPEG (a clip's frames must agree)."""
    pixels = read_frame(path)
    return preprocess_pixels(pixels, crop, view), (int(pixels.shape[0]), int(pixels.shape[1]))


def preprocess_sized(pixels: torch.Tensor, crop: int, view: str = "center") -> tuple[torch.Tensor, tuple[int, int]]:
    """:func:`preprocess_pixels` and the decoded ``(H, W)`` of a video frame."""
    return preprocess_pixels(pixels, crop, view), (int(pixels.shape[0]), int(pixels.shape[1]))


def sample_fields(s: Sample, target: str) -> dict:
    """The label and identity keys every batch carries, whether its input is ``video`` (clips) or
    ``tokens`` (feature store): target (hard or soft), label, rater_mean, sample_id, video_id, frame."""
    return {
        "target": torch.tensor(s.target(target), dtype=torch.float32),
        "label": torch.tensor(s.label, dtype=torch.float32),
        "rater_mean": torch.tensor(s.rater_mean, dtype=torch.float32),
        "sample_id": s.sample_id,
        "video_id": s.video_id,
        "frame": s.frame,
    }


def batch_video_ids(values) -> list[int | str]:
    """A batch's ``video_id`` column as plain values: ints (Endoscapes ids, which collate into a
    tensor) or names (SAGES, which collate into a list of str)."""
    if isinstance(values, torch.Tensor):
        return [int(v) for v in values.tolist()]
    return [v if isinstance(v, str) else int(v) for v in values]


class ClipDataset(Dataset):
    """Keyframe clips with their targets.

    Item: ``video`` float32 ``[T, 3, crop, crop]`` (``view="three_crops"``: ``[3, T, 3, crop, crop]``);
    ``target`` float32 ``[3]`` (the 0/1 label for ``target="hard"``, the rater mean for ``"soft"``); ``label`` and ``rater_mean`` float32 ``[3]``;
    ``sample_id`` str, ``video_id`` int (Endoscapes) or str (SAGES), ``frame`` int.
    With ``on_bad_sample="skip"`` a clip whose frame cannot be read gives ``None`` (drop it with
    :func:`collate_skip_none`); with ``"error"`` the :class:`DataError` naming the frame propagates.
    ``cache_frames`` preprocessed JPEG frames, or ``cache_videos`` whole preprocessed videos (clips
    decoded from videos, :mod:`.video_frames`), are kept per process (each DataLoader worker has its own).
    """

    def __init__(self, samples: list[Sample], crop: int, target: str = "hard", cache_frames: int = 64,
                 on_bad_sample: str = "error", cache_videos: int = 2, view: str = "center"):
        if target not in TARGET_MODES:
            raise ValueError(f"target must be one of {TARGET_MODES}, got {target!r}")
        if on_bad_sample not in BAD_SAMPLE_POLICIES:
            raise ValueError(f"on_bad_sample must be one of {BAD_SAMPLE_POLICIES}, got {on_bad_sample!r}")
        self.samples = list(samples)
        self.crop = crop
        self.target = target
        self.on_bad_sample = on_bad_sample
        self.view = check_view(view)
        # A partial of a module-level function pickles for spawned workers, unlike a bound lambda.
        self.cache = FrameSource(functools.partial(load_sized, crop=crop, view=self.view),
                                 functools.partial(preprocess_sized, crop=crop, view=self.view), cache_frames,
                                 cache_videos)
        self.cache.need(r for s in self.samples for r in s.clip_paths)
        self.decode_groups = decode_groups(self.samples, cache_videos)  # training order that decodes videos once

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> dict | None:
        s = self.samples[i]
        try:
            video = self.load_clip(s)
        except DataError as e:
            if self.on_bad_sample == "error":
                raise
            log.warning("skipping keyframe %s (on_bad_sample=skip): %s", s.sample_id, e)
            return None
        return {"video": video, **sample_fields(s, self.target)}

    def load_clip(self, s: Sample) -> torch.Tensor:
        """float32 ``[T, 3, crop, crop]`` (or ``[V, T, 3, crop, crop]``) for the sample's clip (padding
        repeats reuse one frame); DataError when its frames differ in size."""
        frames = {p: self.cache.get(p) for p in dict.fromkeys(s.clip_paths)}
        check_clip_sizes({p: hw for p, (_, hw) in frames.items()}, f"the clip of keyframe {s.sample_id}",
                         s.clip_paths[-1])
        return stack_clip([frames[p][0] for p in s.clip_paths])



def collate_skip_none(batch: list[dict | None]) -> dict | None:
    """``default_collate`` after dropping the ``None`` items of skipped samples.

    Returns ``None`` when every item was skipped; the training loop skips such a batch.
    """
    kept = [b for b in batch if b is not None]
    if len(kept) < len(batch):
        log.info("dropped %d skipped sample(s) from a batch of %d", len(batch) - len(kept), len(batch))
    if not kept:
        log.warning("a whole batch of %d sample(s) was skipped (on_bad_sample=skip)", len(batch))
        return None
    joined = {k: t for k, v in kept[0].items() if isinstance(v, torch.Tensor)
              and (t := rows_of_one_tensor([b[k] for b in kept])) is not None}
    out = default_collate([{k: v for k, v in b.items() if k not in joined} for b in kept])
    return {**joined, **out}


def rows_of_one_tensor(values: list[torch.Tensor]) -> torch.Tensor | None:
    """The batch tensor ``[len(values), ...]`` when ``values`` are, in order, its consecutive rows (a
    dataset that read the batch in one go, e.g. the feature store's ``__getitems__``); stacking them
    would only copy it. None otherwise. Public APIs only: same storage, consecutive offsets."""
    v0 = values[0]
    if not v0.is_contiguous():
        return None
    ptr, step = v0.untyped_storage().data_ptr(), v0.numel()
    for i, v in enumerate(values):
        if (v.dtype != v0.dtype or v.shape != v0.shape or not v.is_contiguous()
                or v.untyped_storage().data_ptr() != ptr or v.storage_offset() != v0.storage_offset() + i * step):
            return None
    return v0.new_empty(0).set_(v0.untyped_storage(), v0.storage_offset(), (len(values), *v0.shape))
