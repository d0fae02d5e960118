"""Tiny hand-made SAGES CVS Challenge 2024 trees: a few seconds of flat-grey video per case, label CSVs
written row by row, so each test states exactly the layout and labels it checks.

Video frames: frame ``i`` is bright (``BRIGHT + second``) when ``i % fps == 0``, else dark
(``DARK``): a decoder that samples anything but frame ``k * fps`` for second ``k`` shows it.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from cvsjepa.data.sages import CONFIDENCE_COLUMNS, VOTE_COLUMNS
from cvsjepa.data.synth import write_video_mp4

BRIGHT, DARK = 150, 20
SIZE = (32, 18)  # width, height
NONE = (0,) * 9  # nine 0 votes: c1_rater1..c3_rater3


def write_video(path: Path, seconds: int, fps: int = 30, frames: int | None = None) -> Path:
    """``frames`` (default ``seconds * fps``) flat frames at ``fps``; see the module docstring."""
    n = seconds * fps if frames is None else frames
    w, h = SIZE
    imgs = [np.full((h, w, 3), BRIGHT + i // fps if i % fps == 0 else DARK, np.uint8) for i in range(n)]
    return write_video_mp4(imgs, path, fps=fps, options={"qp": "0", "preset": "ultrafast"})


def write_labels(folder: Path, rows: list[tuple[int, tuple[int, ...]]], confidence=(0.9, 0.6, 0.3),
                 header: list[str] | None = None) -> Path:
    """``rows``: (frame_id, nine votes in c1_rater1 .. c3_rater3 order)."""
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "frame.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header or ["frame_id", *VOTE_COLUMNS])
        w.writerows([[fid, *votes] for fid, votes in rows])
    with open(folder / "video.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(CONFIDENCE_COLUMNS)
        w.writerow(confidence)
    return folder


def grid_rows(seconds: int, fps: int = 30, votes=NONE) -> list[tuple[int, tuple[int, ...]]]:
    """One row every 5 s (frame ids ``0, 5 fps, ...``) below ``seconds``."""
    return [(t * fps, votes) for t in range(0, seconds, 5)]


def add_case(split_root: Path, name: str, seconds: int = 11, fps: int = 30, rows=None, **kw) -> None:
    """``split_root/videos/name.mp4`` and ``split_root/labels/name/`` (the per-split or the flat layout)."""
    write_video(split_root / "videos" / f"{name}.mp4", seconds, fps)
    write_labels(split_root / "labels" / name, rows if rows is not None else grid_rows(seconds, fps), **kw)
