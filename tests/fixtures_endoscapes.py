"""Tiny hand-made Endoscapes2023-layout datasets for the index and dataset tests.

Every label is chosen by hand (3 raters' 0/1 votes per criterion) so tests can check exact values.
``build_dataset`` writes the JPEGs, the COCO JSONs, all_metadata.csv and the *_vids.txt files.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

Votes = tuple[tuple[int, int, int], tuple[int, int, int], tuple[int, int, int]]  # [rater][criterion]


@dataclass
class Video:
    video_id: int
    split: str
    frames: list[int]  # 1 fps frame numbers (25 fps source numbering)
    keyframes: dict[int, Votes] = field(default_factory=dict)  # frame -> votes of raters 1-3

    def mean(self, frame: int) -> tuple[float, float, float]:
        v = self.keyframes[frame]
        return tuple(sum(r[c] for r in v) / 3 for c in range(3))  # type: ignore[return-value]


def default_videos() -> list[Video]:
    """4 videos: train 1, 2; val 3; test 4 (an irregular frame step)."""
    a = ((1, 0, 0), (1, 1, 0), (0, 0, 0))  # means 2/3, 1/3, 0   -> label 1, 0, 0
    b = ((1, 1, 1), (1, 1, 0), (1, 0, 1))  # means 1, 2/3, 2/3   -> label 1, 1, 1
    c = ((0, 0, 1), (0, 0, 0), (0, 0, 0))  # means 0, 0, 1/3     -> label 0, 0, 0
    return [
        Video(1, "train", [25 * i for i in range(12)], {50: a, 175: b, 275: c}),
        Video(2, "train", [25 * i for i in range(1, 9)], {125: b, 200: a}),
        Video(3, "val", [25 * i for i in range(6)], {125: c}),
        Video(4, "test", [0, 25, 75, 100, 150, 175], {75: a, 175: b}),
    ]


def fmt(x: int, as_float: bool) -> int | float:
    return float(x) if as_float else x


def write_jpeg(path: Path, seed: int, size: tuple[int, int] = (32, 24), noise: bool = False) -> None:
    """A small JPEG whose colour depends on ``seed`` (noise makes a bigger file, for truncation)."""
    w, h = size
    if noise:
        arr = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
    else:
        arr = np.full((h, w, 3), [(seed * 37) % 256, (seed * 91) % 256, (seed * 13) % 256], dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path, quality=90)


def coco_image(v: Video, frame: int, ds, keyframe: bool | None, as_float: bool) -> dict:
    img = {"file_name": f"{v.video_id}_{frame}.jpg", "height": 24, "width": 32,
           "id": v.video_id * 1_000_000 + frame, "video_id": fmt(v.video_id, as_float),
           "is_det_keyframe": False, "ds": list(ds)}
    if keyframe is not None:
        img["is_ds_keyframe"] = keyframe
    return img


def write_coco(root: Path, videos: list[Video], as_float: bool = False, ds_coco: bool = True,
               coco_vid: bool = True) -> None:
    for split in sorted({v.split for v in videos}):
        vs = [v for v in videos if v.split == split]
        d = root / split
        d.mkdir(parents=True, exist_ok=True)
        if ds_coco:
            images = [coco_image(v, f, v.mean(f), True, as_float) for v in vs for f in sorted(v.keyframes)]
            (d / "annotation_ds_coco.json").write_text(json.dumps({"images": images, "annotations": []}))
        if coco_vid:
            images = []
            for v in vs:
                last = (0.0, 0.0, 0.0)  # causal forward fill, as the official file does
                for f in v.frames:
                    if f in v.keyframes:
                        last = v.mean(f)
                    images.append(coco_image(v, f, last, f in v.keyframes, as_float))
            (d / "annotation_coco_vid.json").write_text(json.dumps({"images": images, "annotations": []}))


CSV_COLUMNS = ["vid", "frame", "avg_cvs", "C1", "C2", "C3", "is_ds_keyframe", "cvs_annotator_1",
               "cvs_annotator_2", "cvs_annotator_3", "mask_path", "label_path"]


def write_csv(root: Path, videos: list[Video], as_float: bool = False, columns: list[str] | None = None) -> Path:
    columns = columns or CSV_COLUMNS
    path = root / "all_metadata.csv"
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        w.writeheader()
        for v in videos:
            last = (0.0, 0.0, 0.0)
            for fr in v.frames:
                key = fr in v.keyframes
                if key:
                    last = v.mean(fr)
                votes = v.keyframes.get(fr)
                row = {"vid": fmt(v.video_id, as_float), "frame": fmt(fr, as_float), "avg_cvs": sum(last) / 3,
                       "C1": last[0], "C2": last[1], "C3": last[2], "is_ds_keyframe": key,
                       "mask_path": "", "label_path": ""}
                for r in range(3):
                    row[f"cvs_annotator_{r + 1}"] = str(list(votes[r])) if votes else ""
                w.writerow(row)
    return path


def write_vids_txt(root: Path, videos: list[Video], as_float: bool = False) -> None:
    for split in sorted({v.split for v in videos}):
        ids = [fmt(v.video_id, as_float) for v in videos if v.split == split]
        (root / f"{split}_vids.txt").write_text("".join(f"{i}\n" for i in ids) + "\n")


def write_frames(root: Path, videos: list[Video]) -> None:
    for v in videos:
        for f in v.frames:
            write_jpeg(root / v.split / f"{v.video_id}_{f}.jpg", seed=v.video_id * 1000 + f // 25)


def build_dataset(root: Path, videos: list[Video] | None = None, *, coco: bool = True, ds_coco: bool = True,
                  coco_vid: bool = True, csv_file: bool = True, vids_txt: bool = True,
                  as_float: bool = False) -> Path:
    """Write a full dataset under ``root`` and return it."""
    videos = default_videos() if videos is None else videos
    root.mkdir(parents=True, exist_ok=True)
    write_frames(root, videos)
    if coco:
        write_coco(root, videos, as_float, ds_coco=ds_coco, coco_vid=coco_vid)
    if csv_file:
        write_csv(root, videos, as_float)
    if vids_txt:
        write_vids_txt(root, videos, as_float)
    return root


def edit_json(path: Path, fn) -> None:
    data = json.loads(path.read_text())
    fn(data)
    path.write_text(json.dumps(data))


def make_placeholder(path: Path, target: str) -> None:
    """What a symbolic link becomes on a file system without links: a tiny file holding its target."""
    if path.is_dir():
        import shutil
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()
    path.write_text(target)
