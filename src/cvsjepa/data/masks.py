"""Endoscapes semantic masks: ``semseg/{vid}_{frame}.png``, 480x854, 3 identical channels whose value
is the class id (0 background, 1 cystic_plate, 2 calot_triangle, 3 cystic_artery, 4 cystic_duct,
5 gallbladder, 6 tool) and 255 = ignore. ``seg_label_map.txt`` names the ids. A copy with only the COCO instance masks
(``{split}_seg/annotation_coco.json``, RLE or polygons) gets the same class-id map from
:class:`CocoMasks`."""

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


def seg_class_names(cfg) -> list[str]:
    """Display names of ``cfg.seg.classes`` (class ids of the default label map; unknown ids as ``class<k>``)."""
    names = {v: k for k, v in DEFAULT_LABEL_MAP.items()}
    return [names.get(c, f"class{c}") for c in cfg.seg.classes]


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


# ------------------------------------------------------------------ COCO instance masks (RLE)

SEG_COCO_FILES = ("train_seg", "val_seg", "test_seg")


class CocoMasks:
    """Semantic masks painted from the COCO instance masks of ``{train,val,test}_seg/annotation_coco.json``,
    for a copy of the dataset that has those but no ``semseg/`` PNGs.

    * Every image listed in one of those files is a masked frame; pixels no instance covers are
      background (0). Category ids are the class ids (Endoscapes: COCO ids 1-6 = seg ids 1-6).
    * Instances are painted largest first, so a thin cystic artery or duct stays on top of the
      gallbladder it overlaps.
    * An instance with a box but no ``segmentation`` marks its box 255 (ignore) under the instances
      that do have masks: what lies there is unknown, not background. A frame whose instances are
      all boxes has no mask.
    * ``segmentation`` may be compressed RLE (``counts`` a string), uncompressed RLE (``counts`` a
      list) or polygons; pycocotools decodes all three.
    """

    def __init__(self, files: list[Path]):
        # (video_id, frame) -> (json path, image entry, [annotations])
        self.frames: dict[tuple[int, int], tuple[Path, dict, list[dict]]] = {}
        for path in files:
            self._read(Path(path))

    @classmethod
    def find(cls, root: Path) -> "CocoMasks":
        files = [Path(root) / d / "annotation_coco.json" for d in SEG_COCO_FILES]
        return cls([f for f in files if f.exists()])

    def __len__(self) -> int:
        return len(self.frames)

    def has(self, video_id: int, frame: int) -> bool:
        return (video_id, frame) in self.frames

    def _read(self, path: Path) -> None:
        from .endoscapes import coco_image_ids, read_coco

        data = read_coco(path)
        images = data["images"]
        anns = data.get("annotations") or []
        if not isinstance(anns, list):
            raise DataError(f"{path}: 'annotations' is not a list")
        by_image: dict[object, list[dict]] = {}
        for a in anns:
            if not isinstance(a, dict) or "image_id" not in a or "category_id" not in a:
                raise DataError(f"{path}: annotation {str(a)[:80]} lacks image_id or category_id")
            by_image.setdefault(a["image_id"], []).append(a)
        for i, img in enumerate(images):
            if not isinstance(img, dict):
                raise DataError(f"{path} image {i} is not a JSON object")
            vid, frame, _ = coco_image_ids(img, f"{path} image {i}")
            mine = by_image.get(img.get("id"), [])
            if mine and not any(a.get("segmentation") for a in mine):
                continue  # boxes only: no mask for this frame
            self.frames[(vid, frame)] = (path, img, mine)

    def semantic(self, video_id: int, frame: int, expected_hw: tuple[int, int] | None = None,
                 num_classes: int = 7) -> np.ndarray:
        """uint8 [H, W] class ids (0 background, 255 ignore) of one masked frame."""
        from pycocotools import mask as mask_utils

        path, img, anns = self.frames[(video_id, frame)]
        where = f"{path}, image {img.get('file_name')!r}"
        try:
            h, w = int(img["height"]), int(img["width"])
        except (KeyError, TypeError, ValueError):
            raise DataError(f"{where} has no valid height/width; a COCO image needs both") from None
        if expected_hw is not None and (h, w) != tuple(expected_hw):
            raise DataError(f"{where} says {w}x{h}, but its frame is {expected_hw[1]}x{expected_hw[0]}")
        out = np.zeros((h, w), dtype=np.uint8)
        masks = []
        for a in anns:
            aw = f"{where}, annotation {a.get('id')!r}"
            cls = a["category_id"]
            if not isinstance(cls, int) or not 1 <= cls < num_classes:
                raise DataError(f"{aw}: category_id {cls!r} is not a class id 1-{num_classes - 1}")
            seg = a.get("segmentation")
            if not seg:
                x, y, bw, bh = _bbox(a, aw)
                out[max(0, int(y)):int(np.ceil(y + bh)), max(0, int(x)):int(np.ceil(x + bw))] = IGNORE
                continue
            m = _decode(mask_utils, seg, h, w, aw)
            masks.append((int(m.sum()), cls, m))
        for _, cls, m in sorted(masks, key=lambda t: -t[0]):
            out[m] = cls
        return out


def _bbox(a: dict, where: str) -> list[float]:
    box = a.get("bbox")
    if not (isinstance(box, list) and len(box) == 4 and all(isinstance(v, (int, float)) for v in box)):
        raise DataError(f"{where} has neither a segmentation nor a bbox [x, y, w, h]")
    return box


def _decode(mask_utils, seg, h: int, w: int, where: str) -> np.ndarray:
    try:
        if isinstance(seg, list):  # polygons
            rle = mask_utils.merge(mask_utils.frPyObjects(seg, h, w))
        elif isinstance(seg, dict) and "counts" in seg and "size" in seg:
            if [int(v) for v in seg["size"]] != [h, w]:
                raise DataError(f"{where}: RLE size {seg['size']} differs from its image's {[h, w]}")
            if isinstance(seg["counts"], list):
                if sum(seg["counts"]) != h * w:
                    raise DataError(f"{where}: uncompressed RLE counts sum to {sum(seg['counts'])}, not "
                                    f"height x width = {h * w}")
                rle = mask_utils.frPyObjects(seg, h, w)
            else:
                counts = seg["counts"]
                counts = counts.decode("ascii") if isinstance(counts, bytes) else counts
                total = sum(_compressed_counts(str(counts), where))
                if total != h * w:  # pycocotools would decode it into garbage without a word
                    raise DataError(f"{where}: RLE counts cover {total} pixels, not height x width = {h * w}; "
                                    "the segmentation cannot be decoded, the file looks corrupt")
                rle = {"size": [h, w], "counts": counts}
        else:
            raise DataError(f"{where}: segmentation is neither RLE ({{'size', 'counts'}}) nor polygons")
        m = mask_utils.decode(rle)
    except DataError:
        raise
    except (ValueError, TypeError, IndexError) as e:
        raise DataError(f"{where}: segmentation cannot be decoded ({e}); the file looks corrupt") from e
    if m.shape[:2] != (h, w):
        raise DataError(f"{where}: decoded mask is {m.shape[1]}x{m.shape[0]}, expected {w}x{h}")
    return m.astype(bool)


def _compressed_counts(text: str, where: str) -> list[int]:
    """Run lengths of COCO's compressed RLE string (the inverse of pycocotools' ``rleToString``:
    6-bit groups from chr 48, bit 0x20 = more groups follow, 0x10 of the last group = negative,
    runs after the second stored as the difference to the run two before). Only used to validate:
    pycocotools decodes a malformed string into garbage without an error."""
    counts: list[int] = []
    p = 0
    while p < len(text):
        x, k, more = 0, 0, True
        while more:
            if p >= len(text):
                raise DataError(f"{where}: RLE string ends inside a run; the segmentation cannot be decoded")
            c = ord(text[p]) - 48
            if not 0 <= c < 64:
                raise DataError(f"{where}: RLE string holds {text[p]!r}; the segmentation cannot be decoded")
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            p += 1
            k += 1
            if not more and c & 0x10:
                x |= -1 << (5 * k)
        if len(counts) > 2:
            x += counts[-2]
        if x < 0:
            raise DataError(f"{where}: RLE string has a negative run; the segmentation cannot be decoded")
        counts.append(x)
    return counts
