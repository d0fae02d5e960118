"""Where the files of a SAGES CVS Challenge 2024 copy are: videos, label folders, frame folders, splits.

Layouts accepted (shared/reference/sages2024.md; the release's own folder names are not verified,
so each is recognised by its ``labels/`` folder)::

    per-split folders   {root}/{split}/videos/{video}.mp4   {root}/{split}/labels/{video}/{frame.csv,video.csv}
                        (split = train, test, or any folder holding labels/); optional {root}/{split}/frames/
    flat                {root}/videos/{video}.mp4           {root}/labels/{video}/{frame.csv,video.csv}
                        with {root}/{split}_vids.txt (one video name per line) naming the splits,
                        or without lists: every video is in "train"; optional {root}/frames/

Pre-extracted frames (``frames/``), one of three conventions, recognised by the file names:

    fe.py     frames/{video}/frame_0000.jpg, frame_0001.jpg ...  the official extractor at 1 fps: the number
              is the second (the extractor's default rate; another rate cannot be told from the files)
    cvsdata   frames/{video}/00001.jpg ...                       the official CVSData loader's: the number is
              the 1-based frame number of the source video, frame id = number - 1
    flat      frames/{video}_{frame_id}.jpg                      third-party loaders: 0-based frame ids

Frame ids are counted at the video's whole-number rate (30 for the released videos; read from the
video when it is present, else assumed to be ``SOURCE_FPS``).
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from ..config import choices
from ..errors import DataError

log = logging.getLogger("cvsjepa")

LABELS_DIR, VIDEOS_DIR, FRAMES_DIR = "labels", "videos", "frames"
FRAME_CSV, VIDEO_CSV = "frame.csv", "video.csv"
SOURCE_FPS = 30  # the released videos' rate, assumed for frame folders that come without their video
VIDEO_SUFFIXES = (".mp4", ".m4v", ".mov", ".mkv", ".avi")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
DEFAULT_SPLIT = "train"  # a flat layout without split lists: every video is train
_FE = re.compile(r"frame_(\d+)")
_DIGITS = re.compile(r"\d+")
LAYOUT_HINT = ("expected the SAGES CVS Challenge 2024 layout: {root}/{split}/videos/{video}.mp4 with "
               "{root}/{split}/labels/{video}/frame.csv and video.csv, or {root}/videos/ + {root}/labels/ "
               "(optionally with {split}_vids.txt lists)")


@dataclass(frozen=True)
class FrameFolder:
    """A video's pre-extracted frames: ``files`` maps the number a convention gives to the file."""

    convention: str  # fe.py | cvsdata | flat
    where: Path  # the folder (fe.py, cvsdata) or the flat frames/ folder
    files: dict  # int -> Path: the second (fe.py) or the 0-based frame id (cvsdata, flat)

    def path(self, second: int, fps: int) -> Path:
        """The file showing the 1 fps position ``second`` of a video counted at ``fps``."""
        key = second if self.convention == "fe.py" else second * fps
        if key not in self.files:
            what = f"frame_{second:04d}" if self.convention == "fe.py" else f"frame id {key} (second {second})"
            raise DataError(f"{self.where} has no file for {what} ({self.convention} convention), which a clip "
                            f"needs; extract every 1 fps frame, or set data.frame_source=video")
        return self.files[key]

    def seconds(self, fps: int) -> int:
        """1 fps positions the folder covers, counted to its last file."""
        top = max(self.files)
        return top + 1 if self.convention == "fe.py" else top // fps + 1


@dataclass(frozen=True)
class SagesVideo:
    name: str
    labels: Path  # labels/{video}/
    video: Path | None  # the video file, if there is one
    frames: FrameFolder | None  # pre-extracted frames, if there are


@dataclass
class SagesLayout:
    root: Path
    kind: str  # "split folders" | "flat"
    official: dict[str, list[str]]  # split -> sorted video names, as the files say
    videos: dict[str, SagesVideo]
    origin: dict[str, Path] = field(default_factory=dict)  # split -> the folder or list file naming it


def is_sages_root(root: Path) -> list[Path]:
    """The ``labels/`` folders that mark ``root`` as a SAGES copy (empty when there is none)."""
    found = [root / LABELS_DIR] if (root / LABELS_DIR).is_dir() else []
    if root.is_dir():
        found += [d / LABELS_DIR for d in sorted(root.iterdir()) if d.is_dir() and (d / LABELS_DIR).is_dir()]
    return found


def find_layout(root: str | os.PathLike) -> SagesLayout:
    """Scan ``root``; :class:`DataError` naming the files when the layout is missing or ambiguous."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"dataset root {root} does not exist or is not a folder; {LAYOUT_HINT}")
    marks = is_sages_root(root)
    flat = root / LABELS_DIR in marks
    split_dirs = [m.parent for m in marks if m != root / LABELS_DIR]
    if flat and split_dirs:
        raise DataError(f"{root} is ambiguous: it has both {root / LABELS_DIR} (flat layout) and "
                        f"{split_dirs[0] / LABELS_DIR} (per-split layout); keep one of them")
    if not marks:
        raise DataError(f"{root} has no labels/ folder; {LAYOUT_HINT}")
    layout = SagesLayout(root, "flat" if flat else "split folders", {}, {})
    folders = [root] if flat else split_dirs
    for folder in folders:
        for name in _label_folders(folder / LABELS_DIR):
            if name in layout.videos:
                raise DataError(f"video {name} has labels in {layout.videos[name].labels} and in "
                                f"{folder / LABELS_DIR / name}: a video belongs to one split")
            layout.videos[name] = SagesVideo(name, folder / LABELS_DIR / name, _video_file(folder / VIDEOS_DIR, name),
                                             frame_folder(folder / FRAMES_DIR, name))
        if not flat:
            layout.official[folder.name] = sorted(_label_folders(folder / LABELS_DIR))
            layout.origin[folder.name] = folder
    if flat:
        _flat_splits(layout)
    return layout


def _label_folders(labels: Path) -> list[str]:
    return sorted(d.name for d in labels.iterdir() if d.is_dir() and not d.name.startswith("."))


def _flat_splits(layout: SagesLayout) -> None:
    lists = sorted(layout.root.glob("*_vids.txt"))
    if not lists:
        layout.official[DEFAULT_SPLIT] = sorted(layout.videos)
        layout.origin[DEFAULT_SPLIT] = layout.root / LABELS_DIR
        return
    owner: dict[str, Path] = {}
    for path in lists:
        split = path.name[:-len("_vids.txt")]
        names = read_video_list(path)
        for n in names:
            if n not in layout.videos:
                raise DataError(f"{path} lists video {n!r}, which has no folder {layout.root / LABELS_DIR / n}")
            if n in owner:
                raise DataError(f"video {n!r} is listed in {owner[n]} and in {path}: a video belongs to one split")
            owner[n] = path
        layout.official[split] = sorted(set(names))
        layout.origin[split] = path
    unlisted = sorted(set(layout.videos) - set(owner))
    if unlisted:
        log.warning("%d labelled video(s) of %s are in no *_vids.txt list and are not used (e.g. %s)", len(unlisted),
                    layout.root, ", ".join(unlisted[:3]))


def read_video_list(path: Path) -> list[str]:
    """Video names, one per line; blank lines are ignored."""
    try:
        return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"cannot read video list {path}: {e}") from e


def _video_file(videos: Path, name: str) -> Path | None:
    if not videos.is_dir():
        return None
    for suffix in VIDEO_SUFFIXES:
        for candidate in (videos / f"{name}{suffix}", videos / f"{name}{suffix.upper()}"):
            if candidate.is_file():
                return candidate
    return None


def frame_folder(frames: Path, name: str) -> FrameFolder | None:
    """The pre-extracted frames of video ``name`` under ``frames/``, in whichever convention they are."""
    if not frames.is_dir():
        return None
    sub = frames / name
    if sub.is_dir():
        images = [p for p in sub.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES]
        if not images:
            return None
        if all(_FE.fullmatch(p.stem) for p in images):
            return FrameFolder("fe.py", sub, {int(_FE.fullmatch(p.stem).group(1)): p for p in images})
        if all(_DIGITS.fullmatch(p.stem) for p in images):
            return FrameFolder("cvsdata", sub, {int(p.stem) - 1: p for p in images})
        odd = next(p for p in images if not (_FE.fullmatch(p.stem) or _DIGITS.fullmatch(p.stem)))
        raise DataError(f"{sub} mixes frame names ({odd.name}); expected frame_0000.jpg ... (1 fps, the official "
                        f"extractor) or 00001.jpg ... (1-based source frame numbers), one convention per folder")
    prefix = f"{name}_"
    files = {int(p.stem[len(prefix):]): p for p in frames.glob(f"{glob_escape(name)}_*")
             if p.suffix.lower() in IMAGE_SUFFIXES and _DIGITS.fullmatch(p.stem[len(prefix):])}
    return FrameFolder("flat", frames, files) if files else None


def glob_escape(text: str) -> str:
    return re.sub(r"([*?\[])", r"[\1]", text)


def pixels_of(video: SagesVideo, frame_source: str) -> str:
    """``"video"`` or ``"frames"``: where this video's clip frames come from, or a DataError naming
    what is missing. ``auto`` prefers the video file."""
    if frame_source not in choices("data.frame_source"):
        raise ValueError(f"frame_source must be one of {choices('data.frame_source')}, got {frame_source!r}")
    split_root = video.labels.parent.parent
    if frame_source in ("auto", "video") and video.video is not None:
        return "video"
    if frame_source in ("auto", "frames") and video.frames is not None:
        return "frames"
    if frame_source == "video":
        raise DataError(f"video {video.name}: {split_root / VIDEOS_DIR / (video.name + '.mp4')} does not exist "
                        f"(data.frame_source=video)")
    if frame_source == "frames":
        raise DataError(f"video {video.name}: no frames in {split_root / FRAMES_DIR} (frames/{video.name}/ or "
                        f"frames/{video.name}_<frame>.jpg; data.frame_source=frames)")
    raise DataError(f"video {video.name} has labels ({video.labels}) but neither "
                    f"{split_root / VIDEOS_DIR / (video.name + '.mp4')} nor frames in {split_root / FRAMES_DIR}")
