"""Endoscapes semantic masks: ``semseg/{vid}_{frame}.png``, 480x854, 3 identical channels whose value
is the class id (0 background, 1 cystic_plate, 2 calot_triangle, 3 cystic_artery, 4 cystic_duct,
5 gallbladder, 6 tool) and 255 = ignore. ``seg_label_map.txt`` names the ids."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from ..errors import DataError
from .frames import link_placeholder_error, looks_like_link_placeholder

IGNORE = 255
DEFAULT_LABEL_MAP = {"background": 0, "cystic_plate": 1, "calot_triangle": 2, "cystic_artery": 3,
                     "cystic_duct": 4, "gallbladder": 5, "tool": 6}


def read_label_map(path: Path) -> dict[str, int]:
    """``name: id`` / ``name id`` / ``id name`` per line; blank lines and # comments ignored."""
    out = {}
    for n, line in enumerate(Path(path).read_text().splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        parts = [p for p in re.split(r"[\s:,=]+", line) if p]
        ids = [p for p in parts if p.isdigit()]
        names = [p for p in parts if not p.isdigit()]
        if len(ids) != 1 or len(names) != 1:
            raise DataError(f"{path}, line {n}: expected a class name and an id, got {line!r}")
        out[names[0]] = int(ids[0])
    return out


def read_semseg(path: Path, expected_hw: tuple[int, int] | None = (480, 854), num_classes: int = 7) -> np.ndarray:
    """uint8 [H, W] class ids (255 = ignore). DataError naming the file for every mismatch."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"mask {path} does not exist")
    if looks_like_link_placeholder(path):
        raise link_placeholder_error(path)
    try:
        with Image.open(path) as img:
            img.load()
            arr = np.asarray(img)
    except (UnidentifiedImageError, OSError) as e:
        raise DataError(f"mask {path} cannot be read as an image ({e}); replace it from the dataset archive") from e
    if arr.ndim == 3:
        if not (arr[..., 1:3] == arr[..., :1]).all():
            raise DataError(f"mask {path} has channels that differ; an Endoscapes mask repeats the class id "
                            f"in all 3 channels")
        arr = arr[..., 0]
    if expected_hw is not None and arr.shape != tuple(expected_hw):
        raise DataError(f"mask {path} is {arr.shape[1]}x{arr.shape[0]}, expected {expected_hw[1]}x{expected_hw[0]} "
                        f"(the size of its frame)")
    bad = np.setdiff1d(np.unique(arr), np.r_[np.arange(num_classes), IGNORE])
    if bad.size:
        raise DataError(f"mask {path} holds values {bad.tolist()[:6]} outside the class ids 0-{num_classes - 1} "
                        f"and {IGNORE} (ignore)")
    return arr.astype(np.uint8)
