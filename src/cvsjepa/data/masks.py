"""Endoscapes semantic masks: ``semseg/{vid}_{frame}.png``, 480x854, 3 identical channels whose value
is the class id (0 background, 1 cystic_plate, 2 calot_triangle, 3 cystic_artery, 4 cystic_duct,
5 gallbladder, 6 tool) and 255 = ignore. ``seg_label_map.txt`` names the ids (:func:`dataset_label_map`
reads it; ``seg.classes`` are translated through it, so a dataset numbered otherwise is read right).
A copy with only the COCO instance masks
(``{split}_seg/annotation_coco.json``, RLE or polygons) gets the same class-id map from
:class:`CocoMasks`."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from ..errors import ConfigError, DataError
from .frames import link_placeholder_error, looks_like_link_placeholder

IGNORE = 255
LABEL_MAP_FILE = "seg_label_map.txt"
DEFAULT_LABEL_MAP = {"background": 0, "cystic_plate": 1, "calot_triangle": 2, "cystic_artery": 3,
                     "cystic_duct": 4, "gallbladder": 5, "tool": 6}
# other spellings of the same classes (after lower-casing and joining words with "_")
ALIASES = {"hepatocystic_triangle": "calot_triangle", "hepatocystic_triangle_dissection": "calot_triangle",
           "calots_triangle": "calot_triangle", "gall_bladder": "gallbladder", "instrument": "tool",
           "tools": "tool", "bg": "background"}

log = logging.getLogger("cvsjepa")


def canonical_name(name: str) -> str | None:
    """A class name as this tool spells it (``"Cystic Plate"`` -> ``"cystic_plate"``), or None if unknown."""
    key = re.sub(r"[\s\-]+", "_", str(name).strip().lower())
    key = ALIASES.get(key, key)
    return key if key in DEFAULT_LABEL_MAP else None


def class_name(entry, where: str = "seg.classes") -> str:
    """One ``seg.classes`` entry (a class name, or an id of the default Endoscapes map) -> its name."""
    if isinstance(entry, int):
        names = {v: k for k, v in DEFAULT_LABEL_MAP.items()}
        if entry not in names:
            known = ", ".join(f"{v} {k}" for k, v in DEFAULT_LABEL_MAP.items())
            raise ConfigError(f"{where}: {entry} is not a class id of the Endoscapes map ({known}); give the class "
                              f"by name")
        return names[entry]
    name = canonical_name(entry)
    if name is None:
        raise ConfigError(f"{where}: unknown class name {entry!r} (known: {', '.join(DEFAULT_LABEL_MAP)})")
    return name


def seg_class_names(cfg) -> list[str]:
    """Names of ``cfg.seg.classes``, in order (index k of the decoder's output is class k here)."""
    return [class_name(c) for c in cfg.seg.classes]


def dataset_label_map(root: Path) -> dict[str, int]:
    """The dataset's ``seg_label_map.txt`` as ``{name: mask value}`` (names as this tool spells them).

    DataError naming the file for a name this tool does not know, a repeated name or value, or the
    value 255 (ignore). Without the file: the default Endoscapes map, with a logged note."""
    path = Path(root) / LABEL_MAP_FILE
    if not path.is_file():
        log.info("%s not found: masks are read with the Endoscapes class ids (%s)", path,
                 ", ".join(f"{v} {k}" for k, v in DEFAULT_LABEL_MAP.items()))
        return dict(DEFAULT_LABEL_MAP)
    out: dict[str, int] = {}
    for raw, value in read_label_map(path).items():
        name = canonical_name(raw)
        if name is None:
            raise DataError(f"{path}: unknown class name {raw!r}; cvsjepa knows {', '.join(DEFAULT_LABEL_MAP)} "
                            f"(and {', '.join(ALIASES)}). Rename it in the file to the class it is")
        if name in out or value in out.values() or value == IGNORE:
            raise DataError(f"{path}: {raw!r} = {value} repeats a class or a value (or uses {IGNORE}, the ignore "
                            f"value); each class needs its own value")
        out[name] = value
    return out


def seg_class_ids(cfg, label_map: dict[str, int], where: str = LABEL_MAP_FILE) -> list[int]:
    """The mask values of ``cfg.seg.classes`` in the dataset (``label_map`` from :func:`dataset_label_map`)."""
    ids = []
    for name in seg_class_names(cfg):
        if name not in label_map:
            raise DataError(f"seg.classes asks for {name!r}, which {where} does not list "
                            f"(it has {', '.join(label_map)}); drop it from seg.classes")
        ids.append(label_map[name])
    return ids


def read_label_map(path: Path) -> dict[str, int]:
    """``name: id`` / ``name id`` / ``id name`` per line (a name may have several words); blank
    lines and # comments ignored."""
    out = {}
    for n, line in enumerate(Path(path).read_text().splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        parts = [p for p in re.split(r"[\s:,=]+", line) if p]
        ids = [p for p in parts if p.isdigit()]
        names = [p for p in parts if not p.isdigit()]
        if len(ids) != 1 or not names:
            raise DataError(f"{path}, line {n}: expected a class name and an id, got {line!r}")
        out["_".join(names)] = int(ids[0])
    return out


def read_semseg(path: Path, expected_hw: tuple[int, int] | None = (480, 854), num_classes: int = 7,
                values: "list[int] | None" = None) -> np.ndarray:
    """uint8 [H, W] class ids (255 = ignore). DataError naming the file for every mismatch.
    ``values``: the class values the dataset's label map defines (default ``0..num_classes-1``)."""
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
    allowed = np.arange(num_classes) if values is None else np.asarray(sorted(values))
    bad = np.setdiff1d(np.unique(arr), np.r_[allowed, IGNORE])
    if bad.size:
        what = f"0-{num_classes - 1}" if values is None else f"{allowed.tolist()} ({LABEL_MAP_FILE})"
        raise DataError(f"mask {path} holds values {bad.tolist()[:6]} outside the class ids {what} "
                        f"and {IGNORE} (ignore)")
    return arr.astype(np.uint8)


# ------------------------------------------------------------------ COCO instance masks (RLE)

SEG_COCO_FILES = ("train_seg", "val_seg", "test_seg")


class CocoMasks:
    """Semantic masks painted from the COCO instance masks of ``{train,val,test}_seg/annotation_coco.json``,
    for a copy of the dataset that has those but no ``semseg/`` PNGs.

    * Every image listed in one of those files is a masked frame; pixels no instance covers are
      background (0). A category is painted with the value ``label_map`` gives its name (the file's
      ``categories``), else with its id (Endoscapes: COCO ids 1-6 = seg ids 1-6).
    * Instances are painted largest first, so a thin cystic artery or duct stays on top of the
      gallbladder it overlaps.
    * An instance with a box but no ``segmentation`` marks its box 255 (ignore) under the instances
      that do have masks: what lies there is unknown, not background. A frame whose instances are
      all boxes has no mask.
    * ``segmentation`` may be compressed RLE (``counts`` a string), uncompressed RLE (``counts`` a
      list) or polygons; pycocotools decodes all three.
    """

    def __init__(self, files: list[Path], label_map: dict[str, int] | None = None):
        # (video_id, frame) -> (json path, image entry, [annotations])
        self.frames: dict[tuple[int, int], tuple[Path, dict, list[dict]]] = {}
        self.label_map = dict(label_map or DEFAULT_LABEL_MAP)
        self.values: dict[Path, dict[int, int]] = {}  # per file: category id -> class value
        for path in files:
            self._read(Path(path))

    @classmethod
    def find(cls, root: Path, label_map: dict[str, int] | None = None) -> "CocoMasks":
        files = [Path(root) / d / "annotation_coco.json" for d in SEG_COCO_FILES]
        return cls([f for f in files if f.exists()], label_map)

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
        values = {}
        for c in data.get("categories") or []:
            name = canonical_name(c.get("name", "")) if isinstance(c, dict) else None
            if name in self.label_map and isinstance(c.get("id"), int):
                values[c["id"]] = self.label_map[name]
        self.values[path] = values
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
        values, allowed = self.values.get(path, {}), set(self.label_map.values())
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
            cat = a["category_id"]
            cls = values.get(cat, cat) if isinstance(cat, int) and not isinstance(cat, bool) else None
            if cls is None or cls not in allowed or cls == self.label_map.get("background") or cls >= IGNORE:
                ids = sorted(v for k, v in self.label_map.items() if k != "background")
                raise DataError(f"{aw}: category_id {cat!r} is not a class id {ids[0]}-{ids[-1]} "
                                f"(the foreground classes of {LABEL_MAP_FILE})")
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
