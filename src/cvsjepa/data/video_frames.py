"""Clip frames decoded straight from video files, one whole video at a time.

A SAGES clip frame is a :class:`VideoFrame`: a video file and a 1 fps position (``second``; sample
``k`` shows what is on screen at ``t = k`` s, the rule of :mod:`cvsjepa.data.video`, so frame
``30 k`` of a 30 fps video). H.264 must be decoded from a key frame onwards, so reading one frame at
a time would decode most of a 90-s video for every clip; instead :class:`VideoCache` decodes a
video's 1 fps frames **once**, passes each through the caller's ``transform`` (e.g. the one
preprocessing path) and keeps the result in a small LRU of whole videos. A sequential pass (sorted
by video, as extraction and evaluation go) therefore decodes each video once; training shuffles
clips within blocks of videos (:func:`decode_groups`) so a random epoch also decodes each video
about once per DataLoader process.

:class:`FrameSource` hands out clip frames by reference: a JPEG path through the per-frame
:class:`~cvsjepa.data.frames.FrameCache`, a :class:`VideoFrame` through a :class:`VideoCache`.
"""

from __future__ import annotations

import os
import time
from collections import Counter, OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Sequence

import torch

from ..errors import DataError
from .frames import FrameCache, read_frame
from .video import open_frames

DECODE_FPS = 1.0  # clips are built from 1 fps frames, as in training on Endoscapes


@dataclass(frozen=True, order=True)
class VideoFrame:
    """Position ``second`` (0-based) of the 1 fps frames of the video file ``video``."""

    video: Path
    second: int

    def __str__(self) -> str:
        return f"{self.video} at {self.second} s"


@dataclass(frozen=True)
class VideoProbe:
    """What a video's headers say: frame rate, frame count (``frames``; estimated from the duration
    when the container does not store it) and the size as stored."""

    path: Path
    fps: float
    frames: int
    width: int
    height: int

    @property
    def nominal_fps(self) -> int:
        """The whole-number rate frame ids are counted at (29.97 -> 30): SAGES numbers frames so."""
        return max(1, round(self.fps))

    @property
    def seconds(self) -> int:
        """1 fps samples the video holds: positions ``k`` with ``k * nominal_fps <= frames - 1``."""
        return (self.frames - 1) // self.nominal_fps + 1 if self.frames > 0 else 0


def probe_video(path: str | os.PathLike) -> VideoProbe:
    """Frame rate and count from the headers (no decoding); :class:`DataError` naming the file if it
    cannot be opened or has no video stream."""
    path = Path(path)
    if path.is_dir():
        raise DataError(f"{path} is a folder, not a video file")
    with open_frames(path, DECODE_FPS) as reader:
        info = reader.info
        fps = info.source_fps
        frames = info.declared_frames or (round(info.declared_duration_s * fps)
                                          if info.declared_duration_s and fps else 0)
        if not fps or fps <= 0:
            raise DataError(f"{path}: the video stream declares no frame rate; re-encode it (e.g. ffmpeg -r 30)")
        if frames <= 0:  # neither a frame count nor a duration in the headers: count by decoding
            frames = sum(1 for _ in reader.container.decode(reader.stream))
    return VideoProbe(path, float(fps), int(frames), int(info.width), int(info.height))


def decode_seconds(path: Path, upto: int | None = None) -> list[torch.Tensor]:
    """The 1 fps frames of a video, uint8 ``[H, W, 3]`` each, position ``k`` = time ``k`` s; reading
    stops after position ``upto`` when given. A decoding failure part way is a :class:`DataError`."""
    out: list[torch.Tensor] = []
    with open_frames(path, DECODE_FPS) as reader:
        for sample in reader:
            out.append(torch.from_numpy(sample.image))
            if upto is not None and sample.index >= upto:
                break
        if not reader.report.complete:
            raise DataError(f"{path}: {'; '.join(reader.report.errors)}; re-download or re-encode the video")
    return out


class VideoCache:
    """LRU of whole decoded videos: ``get(VideoFrame)`` -> ``transform(frame)``.

    A miss decodes the video's 1 fps frames up to the last position any registered clip needs
    (:meth:`need`; the whole video otherwise), transforms every one of them and keeps the list.
    ``decodes`` counts decodes per video file (the figure a test or a benchmark checks);
    ``decode_s`` is the time spent decoding. A video that failed fails again at once, without
    another decode. ``max_videos=0`` keeps nothing (every access decodes: only for tests).
    """

    def __init__(self, max_videos: int, transform: Callable[[torch.Tensor], torch.Tensor]):
        if max_videos < 0:
            raise ValueError(f"max_videos must be >= 0, got {max_videos}")
        self.max_videos, self.transform = max_videos, transform
        self.decodes: Counter[str] = Counter()
        self.decode_s = 0.0
        self._upto: dict[Path, int] = {}
        self._videos: OrderedDict[Path, list] = OrderedDict()
        self._bad: dict[Path, DataError] = {}

    def need(self, refs: Iterable[object]) -> None:
        """Register clip frames, so a decode stops at the last position they use."""
        for r in refs:
            if isinstance(r, VideoFrame):
                self._upto[r.video] = max(self._upto.get(r.video, 0), r.second)

    def get(self, ref: VideoFrame):
        frames = self._frames(ref.video)
        if ref.second >= len(frames):
            raise DataError(f"{ref.video} gives {len(frames)} frame(s) at 1 fps ({len(frames)} s) but its clips need "
                            f"the frame at {ref.second} s: the video is shorter than its labels (truncated?); "
                            f"re-download it, or set data.on_bad_sample=skip to leave those clips out")
        return frames[ref.second]

    def _frames(self, video: Path) -> list:
        if video in self._videos:
            self._videos.move_to_end(video)
            return self._videos[video]
        if video in self._bad:
            raise self._bad[video]
        t0 = time.perf_counter()
        try:
            raw = decode_seconds(video, self._upto.get(video))
        except DataError as e:
            self._bad[video] = e
            raise
        finally:
            self.decodes[str(video)] += 1
            self.decode_s += time.perf_counter() - t0
        frames = [self.transform(f) for f in raw]
        if self.max_videos > 0:
            self._videos[video] = frames
            while len(self._videos) > self.max_videos:
                self._videos.popitem(last=False)
        return frames


class FrameSource:
    """Clip frames by reference, each decoded once while it is cached (one instance per process).

    ``load(path)``: a JPEG path -> the value to keep (decoded and transformed), cached per frame;
    ``transform(pixels)``: a decoded video frame (uint8 ``[H, W, 3]``) -> the value to keep, applied
    to whole videos at once (:class:`VideoCache`). ``need(refs)`` registers the frames clips will use.
    """

    def __init__(self, load: Callable[[Path], torch.Tensor], transform: Callable[[torch.Tensor], torch.Tensor],
                 cache_frames: int = 64, cache_videos: int = 2):
        self.frames = FrameCache(cache_frames, load=load)
        self.videos = VideoCache(cache_videos, transform)

    def need(self, refs: Iterable[object]) -> None:
        self.videos.need(refs)

    def get(self, ref):
        return self.videos.get(ref) if isinstance(ref, VideoFrame) else self.frames.get(ref)

    @property
    def misses(self) -> int:
        """Decodes so far: JPEG frames plus whole videos."""
        return self.frames.misses + sum(self.videos.decodes.values())


def read_pixels(path: Path, transform: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """``transform(read_frame(path))``: the JPEG side of a :class:`FrameSource` for a pixel transform."""
    return transform(read_frame(path))


def video_of(ref: object) -> Path | None:
    return ref.video if isinstance(ref, VideoFrame) else None


def decode_groups(samples: Sequence, cache_videos: int) -> tuple[list[int], int] | None:
    """``(group per sample, groups per block)`` for a shuffle that keeps decodes bounded, or None
    when no clip is read from a video. Group = the video a sample's clip is decoded from; a training
    order that shuffles videos into blocks of ``cache_videos`` and clips within a block decodes
    each video once per epoch and process (:class:`cvsjepa.distributed.GlobalBatchSampler`)."""
    ids: dict[Path, int] = {}
    groups = []
    for s in samples:
        v = next((video_of(r) for r in s.clip_paths if video_of(r) is not None), None)
        if v is None:
            return None
        groups.append(ids.setdefault(v, len(ids)))
    return (groups, max(1, cache_videos)) if groups else None
