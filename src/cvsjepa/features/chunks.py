"""Extraction's input: chunks of consecutive clips, decoded once per frame, as every view's crops.

Clips come in (video, frame) order (keyframes, or every second of a video for per-second
embeddings), so overlapping clips share their frames: each JPEG is decoded and preprocessed once
(cached by path), each video file decoded once (``data/video_frames.py``).
"""

from __future__ import annotations

import functools
import logging
import time

import torch
from torch.utils.data import Dataset

from ..data.endoscapes import Sample
from ..data.transforms import preprocess_frame, view_count
from ..data.video_frames import FrameSource, read_pixels
from ..errors import DataError
from .views import preprocess_views

log = logging.getLogger("cvsjepa")


class ClipViewChunks(Dataset):
    """Item ``i``: the chunk ``chunks[i]`` of consecutive clips as ``video [B, views, T, 3, crop, crop]``,
    an ``ok`` mask (False: a frame failed under on_bad_sample=skip; its video is zeros), and the
    decode / preprocess seconds and decode counts it cost in this process. Preprocessed frames are
    cached by path, so consecutive chunks in one process decode each JPEG once; clips of video files
    come from whole decoded videos (``cache_videos`` kept), so each video is decoded once."""

    def __init__(self, chunks: list[list[Sample]], crop: int, views: int, cache_frames: int, on_bad_sample: str,
                 cache_videos: int = 2, view: str = "center"):
        self.chunks, self.crop, self.on_bad_sample, self.view = chunks, crop, on_bad_sample, view
        # stacked views per clip: the shifted center crops, or the spatial views of data.view
        self.views = views if view == "center" else view_count(view)
        self.cache = FrameSource(functools.partial(read_pixels, transform=self._views), self._views,
                                 cache_frames, cache_videos)
        self.cache.need(r for c in chunks for s in c for r in s.clip_paths)
        self._preprocess_s = 0.0

    def __len__(self) -> int:
        return len(self.chunks)

    def _views(self, pixels: torch.Tensor) -> torch.Tensor:
        """uint8 ``[H, W, 3]`` -> the views' crops ``[V, 3, crop, crop]``."""
        t0 = time.perf_counter()
        if self.view == "center":
            views = preprocess_views(pixels.unsqueeze(0), self.crop, self.views)[:, 0]
        else:
            views = preprocess_frame(pixels, self.crop, self.view)
            views = views if views.ndim == 4 else views[None]
        self._preprocess_s += time.perf_counter() - t0
        return views

    def _spent(self) -> dict:
        """Cumulative preprocessing seconds and decode counts (JPEGs, whole videos) of this process."""
        return {"preprocess_s": self._preprocess_s, "decodes": self.cache.frames.misses,
                "video_decodes": sum(self.cache.videos.decodes.values())}

    def __getitem__(self, i: int) -> dict:
        before = self._spent()
        t0 = time.perf_counter()
        clips, ok = [], []
        for s in self.chunks[i]:
            try:
                frames = [self.cache.get(p) for p in s.clip_paths]  # each [V, 3, crop, crop]
                clips.append(torch.stack(frames, dim=1))  # [V, T, 3, crop, crop]
                ok.append(True)
            except DataError as e:
                if self.on_bad_sample == "error":
                    raise
                log.warning("skipping keyframe %s (on_bad_sample=skip): %s", s.sample_id, e)
                clips.append(None)
                ok.append(False)
        shape = next((c.shape for c in clips if c is not None), (self.views, len(self.chunks[i][0].clip_paths), 3,
                                                                  self.crop, self.crop))
        video = torch.stack([c if c is not None else torch.zeros(shape) for c in clips])
        after = self._spent()
        preprocess = after["preprocess_s"] - before["preprocess_s"]
        return {"video": video, "ok": torch.tensor(ok),
                # everything but preprocessing and stacking is reading and decoding (JPEG or video)
                "decode_s": max(0.0, time.perf_counter() - t0 - preprocess), "preprocess_s": preprocess,
                "decodes": after["decodes"] - before["decodes"],
                "video_decodes": after["video_decodes"] - before["video_decodes"]}
