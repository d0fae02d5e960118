"""A video file (or a folder of frames) as a stream of upright RGB frames sampled at a fixed rate.

Sampling rule (variable frame rate safe): time is measured from the first decoded frame; sample
``k`` stands for ``t_k = k / fps`` and shows the **last frame whose presentation time is <= t_k**
(1 ms of slack absorbs timestamp rounding), i.e. what was on screen at ``t_k``. For the
Endoscapes layout (25 fps source, frames ``0, 25, 50, ...`` extracted at 1 fps) this is exactly
the extracted frame. Samples run while ``t_k`` <= the last frame's time, so a 25 fps video of
N s gives N samples. A gap in a VFR stream repeats the frame shown during the gap.

Streaming: every packet is decoded (the decoder needs them), but only the frame that will be
sampled next is held, and only sampled frames are converted to RGB arrays; memory does not grow
with the video's length.

Robustness, each reported in :class:`DecodeReport`, never silently:

* rotation metadata (display matrix, e.g. a phone held upright): frames are turned upright, flips
  included, exactly as FFmpeg's own autorotation does (:func:`orient_upright`);
* a packet the decoder rejects is skipped (``skipped_packets``); a frame the decoder flags as
  corrupt (concealed errors) is not sampled (``corrupt_frames``); the frame before it is held;
* a demuxing failure, or a file that ends well before its declared duration (truncated), ends
  the stream early: ``complete = False`` and the error is recorded; what was read is kept;
* a missing, empty, non-video or audio-only file raises :class:`~cvsjepa.errors.DataError`
  naming the file.

Pixel aspect ratio is not corrected (training frames are square-pixel JPEGs); a non-square one is
reported in the warnings.
"""

from __future__ import annotations

import logging
import math
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np

from .frames import read_frame
from ..errors import DataError

log = logging.getLogger("cvsjepa")

VIDEO_EXTENSIONS = (".mp4", ".m4v", ".mkv", ".webm", ".avi", ".mov", ".mpg", ".mpeg", ".ts", ".mts", ".wmv")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
TIME_SLACK_S = 1e-3  # a frame up to 1 ms after t_k still counts as "at t_k" (timestamp rounding)
MAX_CONSECUTIVE_BAD_PACKETS = 200  # then the decoder is not recovering: stop with an error
_TRAILING_NUMBER = re.compile(r"(\d+)$")


@dataclass
class VideoInfo:
    """What the input is. ``width``/``height`` are as displayed (after rotation)."""

    path: str
    kind: str  # "video" | "frames"
    width: int = 0
    height: int = 0
    container: str | None = None
    codec: str | None = None
    rotation: int = 0  # display-matrix rotation, degrees counter-clockwise (0, 90, 180, 270)
    orientation: str = "none"  # what was applied to make frames upright, in ffmpeg's terms (e.g. "clock")
    source_fps: float | None = None  # average frame rate of the stream (None for a folder)
    declared_duration_s: float | None = None  # what the file's headers say (None if unknown)
    declared_frames: int | None = None
    sample_aspect_ratio: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class DecodeReport:
    """What happened while reading; filled in as the stream is consumed."""

    decoded_frames: int = 0
    skipped_packets: int = 0  # packets the decoder rejected (skipped)
    corrupt_frames: int = 0  # frames decoded with errors (concealed) and therefore not sampled
    end_time_s: float | None = None  # presentation time of the last frame read, from the first
    complete: bool = True  # False: reading stopped before the end (see errors)
    errors: list[str] = field(default_factory=list)  # fatal: why reading stopped early
    warnings: list[str] = field(default_factory=list)  # not fatal: skipped packets, bad frames, ...

    def to_dict(self) -> dict:
        return asdict(self)

    def fail(self, message: str) -> None:
        self.complete = False
        self.errors.append(message)


@dataclass
class SampledFrame:
    """Sample ``index`` at ``time_s = index / fps``; ``image`` is uint8 ``[H, W, 3]``, upright."""

    index: int
    time_s: float
    frame_index: int  # the source frame: decoded-frame ordinal (video) or the number in the file name (folder)
    source_time_s: float  # presentation time of that frame, from the first frame
    image: np.ndarray


def open_frames(path: str | os.PathLike, fps: float) -> "VideoReader | FrameFolderReader":
    """A reader for a video file or a folder of frames; :class:`DataError` naming the path if unusable."""
    if not (fps > 0 and math.isfinite(fps)):
        raise DataError(f"the sampling rate must be a positive number of frames per second, got {fps}")
    path = Path(path)
    if path.is_dir():
        return FrameFolderReader(path, fps)
    return VideoReader(path, fps)


class VideoReader:
    """Decode a video file with PyAV and yield :class:`SampledFrame` at ``fps``. Use as a context manager."""

    def __init__(self, path: Path, fps: float):
        import av

        self.path, self.fps = Path(path), float(fps)
        self.report = DecodeReport()
        _check_file(self.path)
        try:
            self.container = av.open(str(self.path), metadata_errors="ignore")
        except av.error.FFmpegError as e:
            raise DataError(f"{self.path} cannot be read as a video ({_reason(e)}){_open_hint(self.path)}") from e
        try:
            self.stream = self._video_stream()
            self.info = self._describe()
        except BaseException:
            self.container.close()
            raise
        self._last_pts_s: float | None = None
        self._display: tuple | None = None  # (display matrix or None, rotation), from the first sampled frame
        self.stream.thread_type = "AUTO"  # frame + slice threads; decoding dominates on long videos

    def _video_stream(self):
        streams = self.container.streams
        if not streams.video:
            held = ", ".join(f"{len(s)} {kind}" for kind, s in (("audio", streams.audio), ("subtitle",
                             streams.subtitles), ("data", streams.data)) if len(s)) or "no streams"
            raise DataError(f"{self.path} has no video stream ({held}); give a video file or a folder of frames")
        stream = self.container.streams.video[0]
        if stream.codec_context is None or not stream.codec_context.name:
            raise DataError(f"{self.path}: the video codec is not supported by this FFmpeg build "
                            f"(PyAV {_av_version()}); re-encode it as H.264")
        return stream

    def _describe(self) -> VideoInfo:
        s, cc = self.stream, self.stream.codec_context
        rate = float(s.average_rate) if s.average_rate else (float(s.guessed_rate) if s.guessed_rate else None)
        sar = s.sample_aspect_ratio
        info = VideoInfo(path=str(self.path), kind="video", width=cc.width, height=cc.height,
                         container=self.container.format.name, codec=cc.name, source_fps=rate,
                         declared_duration_s=_declared_duration(self.container, s, rate),
                         declared_frames=int(s.frames) or None,
                         sample_aspect_ratio=f"{sar.numerator}:{sar.denominator}" if sar else None)
        if sar and sar != 1:
            self.report.warnings.append(f"non-square pixels (sample aspect ratio {info.sample_aspect_ratio}) are "
                                        f"not corrected; frames are used as stored")
        return info

    def __enter__(self) -> "VideoReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self.container.close()

    def _frames(self) -> Iterator:
        """Decoded frames in presentation order; a rejected packet is skipped, a demux failure ends it."""
        import av

        demux = self.container.demux(self.stream)
        bad_run = 0
        while True:
            try:
                packet = next(demux)
            except StopIteration:
                return
            except (av.error.FFmpegError, OSError) as e:  # OSError: from a Python file object (tests, fsspec)
                self.report.fail(f"reading {self.path} failed after {self._where()} ({_reason(e)})")
                return
            try:
                frames = packet.decode()
            except av.error.FFmpegError as e:
                self.report.skipped_packets += 1
                bad_run += 1
                if self.report.skipped_packets == 1:
                    self.report.warnings.append(f"first skipped packet after {self._where()}: {_reason(e)}")
                if bad_run >= MAX_CONSECUTIVE_BAD_PACKETS:
                    self.report.fail(f"the decoder rejected {bad_run} packets in a row after {self._where()} "
                                     f"({_reason(e)}); stopping")
                    return
                continue
            bad_run = 0
            yield from frames

    def _where(self) -> str:
        t = self.report.end_time_s
        return "the start" if t is None else f"{t:.2f} s"

    def __iter__(self) -> Iterator[SampledFrame]:
        report, fps = self.report, self.fps
        step = 1.0 / (self.info.source_fps or 25.0)  # only for frames without a timestamp
        t0 = None
        t_abs = None
        held = None  # (frame, ordinal, t, rgb or None): the last good frame at or before the next sample
        k = 0
        for ordinal, frame in enumerate(self._frames()):
            report.decoded_frames += 1
            t_abs = float(frame.time) if frame.pts is not None else (0.0 if t_abs is None else t_abs + step)
            if t0 is None:
                t0 = t_abs
            t = t_abs - t0
            report.end_time_s, self._last_pts_s = t, t_abs
            if frame.is_corrupt:
                report.corrupt_frames += 1
                continue
            current = [frame, ordinal, t, None]
            # samples strictly before this frame show the held frame (or this one, if none is held yet)
            shown = held or current
            while k / fps + TIME_SLACK_S < t:
                yield self._sample(k, shown)
                k += 1
            held = current
        if held is not None:
            while k / fps <= held[2] + TIME_SLACK_S:
                yield self._sample(k, held)
                k += 1
        self._finish(k)

    def _sample(self, k: int, held: list) -> SampledFrame:
        if held[3] is None:  # convert once, even when a VFR gap shows the frame for several samples
            held[3] = self._upright(held[0])
        return SampledFrame(k, k / self.fps, held[1], held[2], held[3])

    def _upright(self, frame) -> np.ndarray:
        rgb = frame.to_ndarray(format="rgb24")
        if self._display is None:
            # Read once: the display matrix is stream metadata that FFmpeg copies into every frame, and
            # touching frame.side_data on every frame makes PyAV 18 hold ~100 MB of frame buffers.
            rotation = float(frame.rotation or 0)
            self._display = (_display_matrix(frame), rotation)
            applied = orient_upright(rgb, *self._display)[1]
            self.info.orientation, self.info.rotation = applied, int(round(rotation)) % 360
            if applied.startswith("nearest"):
                self.report.warnings.append(f"display rotation {rotation:g} degrees is not a quarter turn; "
                                            f"used the {applied}")
        if self.info.orientation == "none":
            return rgb
        rgb = np.ascontiguousarray(orient_upright(rgb, *self._display)[0])  # torch.from_numpy refuses negative strides
        self.info.height, self.info.width = rgb.shape[:2]
        return rgb

    def _finish(self, samples: int) -> None:
        r = self.report
        if samples == 0:  # nothing to show: an error, not an empty timeline
            why = "; ".join(r.errors) or (f"{r.decoded_frames} frame(s) decoded, all corrupt; "
                                          f"{r.skipped_packets} packet(s) rejected by the decoder")
            raise DataError(f"{self.path}: no video frame could be decoded ({why})")
        if r.skipped_packets:
            r.warnings.append(f"skipped {r.skipped_packets} packet(s) the decoder rejected")
        if r.corrupt_frames:
            r.warnings.append(f"{r.corrupt_frames} frame(s) decoded with errors were not sampled "
                              f"(the previous good frame was used)")
        declared, end = self.info.declared_duration_s, r.end_time_s
        if end is not None and self._last_pts_s is not None:
            end = max(end, self._last_pts_s)  # a declared duration may count from pts 0, not from the first frame
        if r.complete and declared and end is not None:
            frame_s = 1.0 / self.info.source_fps if self.info.source_fps else 0.04
            if end + frame_s < declared - max(2.0, 2 * frame_s):
                r.fail(f"{self.path} ends at {end:.1f} s but declares {declared:.1f} s: the file looks truncated; "
                       f"the timeline stops at {r.end_time_s:.1f} s")


class FrameFolderReader:
    """A folder of JPEG/PNG frames, taken as already sampled at ``fps`` (one frame per sample).

    Order: by the number at the end of the file name (``{video}_{frame}.jpg``) when every frame
    has one, else by name. ``frame_index`` is that number (else the position). A frame that cannot
    be read is skipped with a warning and the previous frame is held (as for a corrupt packet).
    """

    def __init__(self, path: Path, fps: float):
        self.path, self.fps = Path(path), float(fps)
        self.report = DecodeReport()
        files = [p for p in self.path.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".")]
        if not files:
            raise DataError(f"{self.path} is a folder without JPEG/PNG frames; give a video file or a folder of "
                            f"frames ({', '.join(IMAGE_EXTENSIONS)})")
        numbers = [_TRAILING_NUMBER.search(p.stem) for p in files]
        if all(numbers):
            prefixes = sorted({p.stem[:m.start()] for p, m in zip(files, numbers)})
            if len(prefixes) > 1:  # e.g. an Endoscapes split folder: {video}_{frame}.jpg of many videos
                shown = ", ".join(repr(x) for x in prefixes[:5]) + (" ..." if len(prefixes) > 5 else "")
                raise DataError(f"{self.path} holds frames of {len(prefixes)} sequences (name prefixes {shown}); "
                                f"put one video's frames in a folder of their own")
            order = sorted(zip((int(m.group(1)) for m in numbers), (p.name for p in files), files))
            self.files = [(n, p) for n, _, p in order]
        else:
            self.files = list(enumerate(sorted(files, key=lambda p: p.name)))
        first = read_frame(self.files[0][1])
        self.info = VideoInfo(path=str(self.path), kind="frames", width=int(first.shape[1]),
                              height=int(first.shape[0]), declared_duration_s=len(self.files) / self.fps,
                              declared_frames=len(self.files))

    def __enter__(self) -> "FrameFolderReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        pass

    def __iter__(self) -> Iterator[SampledFrame]:
        report = self.report
        held = None
        pending = 0  # samples before the first readable frame take that frame
        for k, (number, p) in enumerate(self.files):
            t = k / self.fps
            report.end_time_s = t
            try:
                image = read_frame(p).numpy()
            except DataError as e:
                report.corrupt_frames += 1
                report.warnings.append(str(e))
                if held is None:
                    pending += 1
                else:
                    yield SampledFrame(k, t, held.frame_index, held.source_time_s, held.image)
                continue
            report.decoded_frames += 1
            held = SampledFrame(k, t, number, t, image)
            for j in range(k - pending, k):
                yield SampledFrame(j, j / self.fps, number, t, image)
            pending = 0
            yield held
        if held is None:
            raise DataError(f"no frame of {self.path} could be read ({len(self.files)} tried); first: "
                            f"{report.warnings[0]}")


def orient_upright(rgb: np.ndarray, matrix, rotation: float) -> tuple[np.ndarray, str]:
    """Apply a display matrix the way FFmpeg's own autorotation does (fftools/ffmpeg_filter.c).

    ``rotation`` is ``frame.rotation`` (``av_display_rotation_get``: degrees the matrix turns the
    frame counter-clockwise; an iPhone portrait clip reads -90); ``matrix`` the 9 integers of the
    ``DISPLAYMATRIX`` side data (its signs tell the flips), or None. Returns the upright frame and
    the operation applied, named as FFmpeg's transpose/flip filters are.
    """
    m = list(matrix) if matrix is not None else [65536, 0, 0, 0, 65536, 0, 0, 0, 1 << 30]
    theta = -round(rotation)
    theta -= 360 * math.floor(theta / 360 + 0.9 / 360)  # [0, 360), as FFmpeg normalises it
    if abs(theta - 90) < 1:
        return (rgb.transpose(1, 0, 2), "cclock_flip") if m[3] > 0 else (np.rot90(rgb, -1), "clock")
    if abs(theta - 270) < 1:
        return (np.rot90(rgb, -1)[::-1], "clock_flip") if m[3] < 0 else (np.rot90(rgb, 1), "cclock")
    if abs(theta - 180) < 1:
        ops = [name for name, on in (("hflip", m[0] < 0), ("vflip", m[4] < 0)) if on]
        rgb = rgb[:, ::-1] if m[0] < 0 else rgb
        rgb = rgb[::-1] if m[4] < 0 else rgb
        return rgb, "+".join(ops) or "none"
    if abs(theta) < 1:
        return (rgb[::-1], "vflip") if m[4] < 0 else (rgb, "none")
    quarter = round(rotation / 90) % 4  # FFmpeg would rotate by an arbitrary angle; training frames never are
    return np.rot90(rgb, quarter), f"nearest quarter turn ({quarter * 90} degrees counter-clockwise)"


def _display_matrix(frame) -> list[int] | None:
    from av.sidedata.sidedata import Type

    data = frame.side_data.get(Type.DISPLAYMATRIX)
    if data is None:
        return None
    values = np.frombuffer(bytes(data), dtype="<i4")
    return values.tolist() if values.size == 9 else None


def _check_file(path: Path) -> None:
    if not path.exists():
        hint = " (a broken symbolic link)" if os.path.islink(path) else ""
        raise DataError(f"{path} does not exist{hint}; give a video file or a folder of frames")
    if not path.is_file():
        raise DataError(f"{path} is not a regular file or a folder")
    if path.stat().st_size == 0:
        raise DataError(f"{path} is empty (0 bytes); the copy or the recording did not finish")


def _declared_duration(container, stream, rate: float | None) -> float | None:
    """The longest duration the headers claim for the video stream (seconds), for truncation checks.

    Per-stream figures only (a container's duration also covers audio); the container's as a last
    resort. Matroska keeps the per-track duration in a ``DURATION`` tag.
    """
    found = []
    if stream.duration and stream.time_base:
        found.append(float(stream.duration * stream.time_base))
    tag = stream.metadata.get("DURATION") or stream.metadata.get("duration")
    if tag:
        m = re.fullmatch(r"(\d+):(\d+):(\d+(?:\.\d*)?)", tag.strip())
        if m:
            found.append(int(m.group(1)) * 3600 + int(m.group(2)) * 60 + float(m.group(3)))
    if stream.frames and rate:
        found.append(stream.frames / rate)
    if not found and container.duration:
        found.append(container.duration / 1_000_000)
    return max(found) if found else None


def _reason(e: Exception) -> str:
    return getattr(e, "strerror", None) or str(e)


def _open_hint(path: Path) -> str:
    if path.suffix.lower() in (".mp4", ".m4v", ".mov"):
        return ("; an .mp4/.mov cut short before its index ('moov') was written cannot be opened: re-copy or "
                "re-export it")
    if path.suffix.lower() not in VIDEO_EXTENSIONS:
        return f"; expected a video ({', '.join(VIDEO_EXTENSIONS)}) or a folder of frames"
    return ""


def _av_version() -> str:
    import av

    return av.__version__
