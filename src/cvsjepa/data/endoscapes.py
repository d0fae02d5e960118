"""The Endoscapes2023 index: CVS keyframes, their labels, splits and causal clip frame lists.

Layout read (see shared/reference/endoscapes2023.md)::

    {root}/{split}/{video_id}_{frame}.jpg       1 fps frames; `frame` counts 25 fps source frames
    {root}/{split}/annotation_ds_coco.json      CVS keyframes: images[*].file_name, video_id, ds [3]
    {root}/{split}/annotation_coco_vid.json     every 1 fps frame (non-keyframes: forward-filled ds)
    {root}/all_metadata.csv                     per-frame rows, no split column ...
    {root}/{split}_vids.txt                     ... so rows go to splits through these id lists

Labels: ``ds`` is the mean of 3 binary raters per criterion, so each value is k/3; the hard label
is ``round(mean)`` = the majority of 3 (no ties), the soft target is the mean itself.
Clips are causal: the keyframe and the ``frames - 1`` earlier 1 fps frames, ``stride`` apart,
padded with the video's first frame near its start (as the official temporal models do).

This file is long because the index reads two label sources (the COCO JSONs, and all_metadata.csv
with the ``*_vids.txt`` lists) whose quirks are checked against each other; kept together, every
rule about the real layout lives in one place.
"""

from __future__ import annotations

import ast
import bisect
import csv
import json
import logging
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence, get_args

from ..config import BadSamplePolicy, DataSource
from ..errors import DataError
from .frames import link_placeholder_error, looks_like_link_placeholder, missing_file_error

log = logging.getLogger("cvsjepa")

SOURCES = get_args(DataSource)
BAD_SAMPLE_POLICIES = get_args(BadSamplePolicy)
LAYOUT = ("expected the Endoscapes2023 layout: {root}/{split}/ holding {video_id}_{frame}.jpg frames with "
          "annotation_ds_coco.json (and annotation_coco_vid.json), or {root}/all_metadata.csv with "
          "{root}/{split}_vids.txt listing each split's video ids")
_THIRDS_TOL = 1e-3


@dataclass(frozen=True)
class Sample:
    """One CVS keyframe and the causal clip that ends on it (Endoscapes, or SAGES: data/sages.py)."""

    sample_id: str  # f"{video_id}_{frame}", unique within a dataset
    video_id: int | str  # Endoscapes: the numeric id; SAGES: the video's name. The grouping key everywhere
    frame: int  # frame number as in the files (counts source frames: 25 fps Endoscapes, 30 fps SAGES)
    split: str
    rater_mean: tuple[float, float, float]  # each exactly 0, 1/3, 2/3 or 1
    label: tuple[int, int, int]  # round(rater_mean): the majority of 3 raters
    clip_frames: tuple[int, ...]  # oldest first; last == frame
    clip_paths: tuple  # each clip frame: a JPEG Path, or a data.video_frames.VideoFrame decoded from a video
    conf_label: tuple[float, float, float] | None = None  # SAGES: 0.5 + (1/3) sum_i (l_i - 0.5) conf_i
    rater_confidence: tuple[float, float, float] | None = None  # SAGES: each rater's confidence for the video

    def target(self, mode: str) -> tuple[float, float, float]:
        """``"hard"`` -> the 0/1 label as floats, ``"soft"`` -> the rater mean."""
        if mode == "hard":
            return tuple(float(x) for x in self.label)  # type: ignore[return-value]
        if mode == "soft":
            return self.rater_mean
        raise ValueError(f"target mode must be 'hard' or 'soft', got {mode!r}")


@dataclass
class SplitIndex:
    split: str
    samples: list[Sample]  # CVS keyframes, sorted by (video_id, frame)
    video_frames: dict[int | str, list[int]]  # every 1 fps frame number per video, sorted
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (what, why) under on_bad_sample="skip"
    plan: dict | None = None  # SAGES: the whole split assignment (data/splits.py), written into runs as splits.json
    frame_refs: dict | None = None  # SAGES: (video_id, frame) -> clip frame reference of every 1 fps frame


def read_vids_txt(path: str | os.PathLike) -> list[int]:
    """Video ids, one per line (``1`` or ``1.0``); blank lines are ignored."""
    path = Path(path)
    _check_placeholder(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"cannot read video id list {path}: {e}") from e
    return [_as_int(line, f"{path} line {i}", "video id") for i, line in enumerate(lines, 1) if line.strip()]


def causal_clip(frames_sorted: Sequence[int], keyframe: int, n: int, stride: int) -> list[int]:
    """Frame numbers of the causal clip ending on ``keyframe``, oldest first.

    With ``p`` the keyframe's position in the sorted 1 fps list, the clip takes positions
    ``p - (n-1)*stride, ..., p - stride, p``; a position < 0 takes the video's first frame
    (position 0). Positions, not frame numbers, so no frame step (25 or otherwise) is assumed.
    """
    if n < 1 or stride < 1:
        raise ValueError(f"clip length and stride must be >= 1, got n={n}, stride={stride}")
    p = bisect.bisect_left(frames_sorted, keyframe)
    if p == len(frames_sorted) or frames_sorted[p] != keyframe:
        raise ValueError(f"keyframe {keyframe} is not in the video's frame list")
    positions = [p - (n - 1 - i) * stride for i in range(n)]
    return [frames_sorted[max(q, 0)] for q in positions]


def label_prevalence(samples: Iterable[Sample]) -> list[float]:
    """Fraction of samples with label 1, per criterion; NaN for each when there is no sample."""
    samples = list(samples)
    if not samples:
        return [math.nan] * 3
    return [sum(s.label[c] for s in samples) / len(samples) for c in range(3)]


def load_split(root: str | os.PathLike, split: str, *, frames: int, stride: int, source: str = "auto",
               on_bad_sample: str = "error", check_frames: bool = True, limit: int = 0) -> SplitIndex:
    """Index one split folder (``train``, ``val``, ``test``, ``12_5/train_0`` ...).

    ``limit`` > 0 keeps the first ``limit`` good keyframes in (video_id, frame) order.
    With ``on_bad_sample="skip"`` a keyframe with a bad label or a missing clip frame is left
    out and recorded in ``skipped``; file-level problems always raise :class:`DataError`.
    """
    return _load_split(Path(root), split, frames=frames, stride=stride, source=source,
                       on_bad_sample=on_bad_sample, check_frames=check_frames, limit=limit, tables={})


def load_splits(root: str | os.PathLike, splits: list[str], **kwargs) -> dict[str, SplitIndex]:
    """:func:`load_split` for each split (same keyword arguments), refusing a video in two splits."""
    tables: dict = {}  # all_metadata.csv is parsed once for all splits
    names = list(dict.fromkeys(splits))
    out = {s: _load_split(Path(root), s, tables=tables, **kwargs) for s in names}
    owner: dict[int, str] = {}
    for name, index in out.items():
        for vid in sorted(set(index.video_frames) | {s.video_id for s in index.samples}):
            first = owner.setdefault(vid, name)
            if first != name:
                raise DataError(f"video {vid} appears in split '{first}' ({Path(root) / first}) and in split "
                                f"'{name}' ({Path(root) / name}); splits must be by video, fix the annotation "
                                "files or the *_vids.txt lists so each video belongs to one split")
    return out


class _Issues:
    """Per-sample problems: raised under on_bad_sample="error", recorded under "skip"."""

    def __init__(self, mode: str):
        self.mode = mode
        self.skipped: list[tuple[str, str]] = []

    def report(self, what: str, err: DataError) -> None:
        if self.mode == "error":
            raise err
        self.skipped.append((what, str(err)))


def _load_split(root: Path, split: str, *, frames: int, stride: int, source: str = "auto",
                on_bad_sample: str = "error", check_frames: bool = True, limit: int = 0,
                tables: dict) -> SplitIndex:
    _check_args(frames, stride, source, on_bad_sample, limit)
    _require_dir(root, "dataset root")
    split_dir = root / split
    _require_dir(split_dir, f"split folder '{split}'")
    paths = SourcePaths.of(root, split)
    source = _resolve_source(paths, source, split)
    issues = _Issues(on_bad_sample)
    listed = read_vids_txt(paths.vids_txt) if paths.vids_txt.is_file() else None

    if source == "csv":
        table = _csv_table(paths, tables)
        if listed is None:
            raise DataError(f"{paths.csv} has no split column: cvsjepa assigns its rows to split '{split}' "
                            f"with {paths.vids_txt} (one video id per line), which is missing; add it, "
                            f"or provide {paths.ds_coco}")
        _listed_but_absent(listed, set(table.rows_by_vid), paths.vids_txt, paths.csv, issues)
        keyframes = _keyframes_from_csv(table, listed, issues)
        videos = {v for v in listed if v in table.rows_by_vid}
    else:
        # Keyframes come from annotation_ds_coco.json; only without it from the explicit
        # is_ds_keyframe=true entries of annotation_coco_vid.json (the rest are forward-filled).
        label_file = paths.ds_coco if paths.ds_coco.is_file() else paths.coco_vid
        keyframes = _keyframes_from_coco(label_file, require_flag=label_file == paths.coco_vid, issues=issues)
        _cross_check_listed(keyframes, listed, paths.vids_txt, label_file)
        videos = set()

    lists = _frame_lists(paths, keyframes, videos, tables, issues)
    if source != "csv" and listed is not None:  # known = a keyframe or a 1 fps frame in the COCO files
        _listed_but_absent(listed, set(lists.frames), paths.vids_txt, label_file, issues)
    samples = _build_samples(split, split_dir, keyframes, lists, frames, stride, check_frames, limit, issues)
    if issues.skipped:
        log.warning("%s: skipped %d bad entr%s (on_bad_sample=skip); first: %s — %s", split,
                    len(issues.skipped), "y" if len(issues.skipped) == 1 else "ies", *issues.skipped[0])
    return SplitIndex(split, samples, {v: lists.frames[v] for v in sorted(lists.frames)}, issues.skipped)


def _check_args(frames: int, stride: int, source: str, on_bad_sample: str, limit: int) -> None:
    if frames < 1 or stride < 1 or limit < 0:
        raise ValueError(f"need frames >= 1, stride >= 1, limit >= 0; got {frames}, {stride}, {limit}")
    if source not in SOURCES:
        raise ValueError(f"source must be one of {SOURCES}, got {source!r}")
    if on_bad_sample not in BAD_SAMPLE_POLICIES:
        raise ValueError(f"on_bad_sample must be one of {BAD_SAMPLE_POLICIES}, got {on_bad_sample!r}")


def _require_dir(path: Path, what: str) -> None:
    if path.is_dir():  # real symbolic links to folders are followed
        return
    if path.is_file():
        if looks_like_link_placeholder(path, strict=False):
            raise link_placeholder_error(path)
        raise DataError(f"{what} {path} is a file, not a folder; {LAYOUT}")
    if os.path.islink(path):
        raise missing_file_error(path, what)
    raise DataError(f"{what} {path} does not exist; {LAYOUT}")


def _resolve_source(paths: SourcePaths, source: str, split: str) -> str:
    has_coco = paths.ds_coco.is_file() or paths.coco_vid.is_file()
    has_csv = paths.csv.is_file()
    if source == "coco" and not has_coco:
        raise DataError(f"data.source=coco but neither {paths.ds_coco} nor {paths.coco_vid} exists; "
                        f"add them or use data.source=auto/csv")
    if source == "csv" and not has_csv:
        raise DataError(f"data.source=csv but {paths.csv} does not exist; add it or use data.source=auto/coco")
    if source == "auto":
        if not (has_coco or has_csv):
            raise DataError(f"no CVS labels for split '{split}': neither {paths.ds_coco} nor {paths.csv} "
                            f"exists; {LAYOUT}")
        return "coco" if has_coco else "csv"
    return source


def _csv_table(paths: SourcePaths, tables: dict) -> CsvTable:
    key = str(paths.csv)
    if key not in tables:
        tables[key] = _read_metadata_csv(paths.csv)
    return tables[key]


def _cross_check_listed(keyframes: list[Keyframe], listed: list[int] | None, vids_txt: Path,
                        label_file: Path) -> None:
    if listed is None:
        return
    missing = sorted({k.video_id for k in keyframes} - set(listed))
    if missing:
        raise DataError(f"{vids_txt} does not list video(s) {missing[:10]} that have CVS keyframes in "
                        f"{label_file}; the split lists disagree with the annotations")


def _listed_but_absent(listed: list[int], present: set[int], vids_txt: Path, source: Path, issues: _Issues) -> None:
    """A video a split list names but the label source does not know at all: an error (a typo in the
    list, or a video whose annotations are missing), or under on_bad_sample=skip a recorded skip."""
    for vid in sorted(set(listed) - present):
        issues.report(f"video {vid} ({vids_txt})",
                      DataError(f"{vids_txt} lists video {vid}, which {source} does not know (no keyframe or frame "
                                f"of it); remove it from the list or add its annotations"))


@dataclass
class _FrameLists:
    frames: dict[int, list[int]]  # video -> sorted 1 fps frame numbers
    names: dict[tuple[int, int], str]  # (video, frame) -> file name given by a COCO file


def _frame_lists(paths: SourcePaths, keyframes: list[Keyframe], videos: set[int], tables: dict,
                 issues: _Issues) -> _FrameLists:
    """Per video, the 1 fps list from annotation_coco_vid.json, else the CSV rows, else the JPEGs."""
    frames: dict[int, set[int]] = {}
    names: dict[tuple[int, int], str] = {}
    if paths.coco_vid.is_file():
        frames, names = _frames_from_coco(paths.coco_vid, issues)
    wanted = set(frames) | videos | {k.video_id for k in keyframes}
    jpegs = None
    for vid in sorted(wanted - set(frames)):
        if paths.csv.is_file() and vid in _csv_table(paths, tables).rows_by_vid:
            frames[vid] = _frames_from_csv(_csv_table(paths, tables), vid, issues)
            continue
        if jpegs is None:
            jpegs = _frames_from_jpegs(paths.split_dir)
        frames[vid] = jpegs.get(vid, set())
    added = 0
    for k in keyframes:  # a keyframe is a 1 fps frame even if a frame list forgot it
        if k.frame not in frames[k.video_id]:
            frames[k.video_id].add(k.frame)
            added += 1
        if k.file_name:
            names[(k.video_id, k.frame)] = k.file_name
    if added:
        log.warning("%s: %d keyframe(s) were missing from the 1 fps frame lists and were added", paths.split_dir,
                    added)
    return _FrameLists({v: sorted(f) for v, f in frames.items()}, names)


def _build_samples(split: str, split_dir: Path, keyframes: list[Keyframe], lists: _FrameLists,
                   n: int, stride: int, check_frames: bool, limit: int, issues: _Issues) -> list[Sample]:
    seen: set[tuple[int, int]] = set()
    samples: list[Sample] = []
    stat_cache: dict[Path, DataError | None] = {}
    for k in sorted(keyframes, key=lambda k: (k.video_id, k.frame)):
        sid = f"{k.video_id}_{k.frame}"
        try:
            if (k.video_id, k.frame) in seen:
                raise DataError(f"{k.where}: keyframe {sid} appears twice; keep one entry")
            seen.add((k.video_id, k.frame))
            mean, label = snap_rater_mean(k.raw_mean, k.where)
            clip = causal_clip(lists.frames[k.video_id], k.frame, n, stride)
            clip_paths = tuple(split_dir / lists.names.get((k.video_id, f), f"{k.video_id}_{f}.jpg") for f in clip)
            if check_frames:
                for p in dict.fromkeys(clip_paths):
                    _check_frame_file(p, stat_cache, sid)
        except DataError as e:
            issues.report(f"keyframe {sid} ({k.where})", e)
            continue
        samples.append(Sample(sid, k.video_id, k.frame, split, mean, label, tuple(clip), clip_paths))
        if limit and len(samples) >= limit:
            break
    return samples


def snap_rater_mean(raw: object, where: str) -> tuple[tuple[float, float, float], tuple[int, int, int]]:
    """Validate 3 rater means and snap them to exact thirds; returns ``(mean, round(mean))``.

    Each value must be within 1e-3 of k/3, k in 0..3 (the mean of 3 binary raters); the label is
    ``k >= 2``, i.e. round(k/3), the majority vote.
    """
    if isinstance(raw, (str, bytes)) or not isinstance(raw, Sequence) or len(raw) != 3:
        raise DataError(f"{where}: CVS rater means {raw!r} are not a list of 3 numbers (C1, C2, C3)")
    ks = []
    for c, v in enumerate(raw):
        try:
            x = float(v)
        except (TypeError, ValueError):
            x = math.nan
        k = round(x * 3) if math.isfinite(x) else -1
        if not 0 <= k <= 3 or abs(x - k / 3) > _THIRDS_TOL:
            raise DataError(f"{where}: rater mean {v!r} for C{c + 1} is not one of 0, 1/3, 2/3, 1 "
                            "(the mean of 3 binary raters); fix the label")
        ks.append(k)
    return tuple(k / 3 for k in ks), tuple(int(k >= 2) for k in ks)  # type: ignore[return-value]


def _check_frame_file(path: Path, cache: dict[Path, DataError | None], sid: str) -> None:
    """Existence (and link-placeholder) check of a clip frame: one stat per distinct path."""
    if path not in cache:
        cache[path] = _frame_file_problem(path)
    if cache[path] is not None:
        raise DataError(f"clip of keyframe {sid}: {cache[path]}")


def _frame_file_problem(path: Path) -> DataError | None:
    try:
        st = os.stat(path)
    except OSError:
        return missing_file_error(path, "clip frame")
    if not os.path.isfile(path):
        return DataError(f"clip frame {path} is not a regular file")
    if st.st_size == 0:
        return DataError(f"clip frame {path} is empty; re-extract it")
    if st.st_size < 256 and looks_like_link_placeholder(path):
        return link_placeholder_error(path)
    return None


# ---- reading the label sources --------------------------------------------------------------

ANNOTATOR_COLUMNS = ("cvs_annotator_1", "cvs_annotator_2", "cvs_annotator_3")
CRITERION_COLUMNS = ("C1", "C2", "C3")  # all_metadata.csv's column names (a file format, not display names)
_JPEG_NAME = re.compile(r"(\d+)_(\d+)\.jpe?g", re.IGNORECASE)


@dataclass(frozen=True)
class SourcePaths:
    split_dir: Path
    ds_coco: Path
    coco_vid: Path
    csv: Path
    vids_txt: Path

    @classmethod
    def of(cls, root: Path, split: str) -> "SourcePaths":
        d = root / split
        return cls(d, d / "annotation_ds_coco.json", d / "annotation_coco_vid.json", root / "all_metadata.csv",
                   root / f"{split}_vids.txt")


@dataclass(frozen=True)
class Keyframe:
    """A keyframe as read, before its label is validated."""

    video_id: int
    frame: int
    raw_mean: object  # 3 rater means as found in the file
    where: str  # file and entry, for messages
    file_name: str | None  # JPEG name given by a COCO file


@dataclass
class CsvTable:
    path: Path
    columns: set[str]
    rows_by_vid: dict[int, list[tuple[int, dict]]]  # vid -> [(line number, row)]


def _as_int(value: object, where: str, what: str) -> int:
    """``12``, ``12.0``, ``"12"``, ``"12.0"`` -> 12; ``12.5``, ``""``, ``True`` -> DataError."""
    x = value
    if isinstance(value, str):
        try:
            return int(value.strip())
        except ValueError:
            try:
                x = float(value.strip())
            except ValueError:
                x = None
    if isinstance(x, int) and not isinstance(x, bool):
        return x
    if isinstance(x, float) and math.isfinite(x) and x.is_integer():
        return int(x)
    raise DataError(f"{where}: {what} {value!r} is not a whole number")


def _as_bool(value: object, where: str, what: str) -> bool:
    if isinstance(value, bool):
        return value
    if value is None:
        return False
    text = str(value).strip().lower()
    if text in ("true", "t", "yes", "y", "1", "1.0"):
        return True
    if text in ("false", "f", "no", "n", "0", "0.0", ""):
        return False
    raise DataError(f"{where}: {what} {value!r} is not true/false")


def _check_placeholder(path: Path) -> None:
    if looks_like_link_placeholder(path):
        raise link_placeholder_error(path)


def _read_json_images(path: Path) -> list:
    return read_coco(path)["images"]


def read_coco(path: Path) -> dict:
    """A COCO file's JSON object, with an ``images`` list; DataError naming the file otherwise."""
    _check_placeholder(path)
    try:
        data = json.loads(path.read_bytes())
    except json.JSONDecodeError as e:
        raise DataError(f"{path} is not valid JSON ({e.msg} at line {e.lineno}); the file looks truncated "
                        "or corrupt: re-extract it") from e
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"cannot read {path}: {e}") from e
    images = data.get("images") if isinstance(data, dict) else None
    if not isinstance(images, list):
        raise DataError(f"{path} has no 'images' list; expected a COCO file whose images[*] carry "
                        "file_name, video_id and ds")
    return data


def coco_image_ids(img: dict, where: str) -> tuple[int, int, str]:
    """(video_id, frame, file name) of a COCO image; the frame number comes from the file name."""
    name = img.get("file_name")
    if name is None:
        raise DataError(f"{where} has no file_name; expected {{video_id}}_{{frame}}.jpg")
    base = Path(str(name)).name
    vid_text, sep, frame_text = Path(base).stem.rpartition("_")
    if not sep:
        raise DataError(f"{where}: file_name {name!r} is not of the form {{video_id}}_{{frame}}.jpg")
    vid = _as_int(vid_text, where, "video id in file_name")
    frame = _as_int(frame_text, where, "frame number in file_name")
    if img.get("video_id") is not None and _as_int(img["video_id"], where, "video_id") != vid:
        raise DataError(f"{where}: video_id {img['video_id']!r} disagrees with file_name {name!r}")
    return vid, frame, base


def _keyframes_from_coco(path: Path, require_flag: bool, issues: _Issues) -> list[Keyframe]:
    """Keyframes of a COCO file. ``is_ds_keyframe`` absent means keyframe, unless ``require_flag``
    (annotation_coco_vid.json, where non-keyframes carry a forward-filled ``ds``)."""
    out = []
    for i, img in enumerate(_read_json_images(path)):
        where = f"{path} image {i}"
        try:
            if not isinstance(img, dict):
                raise DataError(f"{where} is not a JSON object")
            flag = img.get("is_ds_keyframe")
            is_key = _as_bool(flag, where, "is_ds_keyframe") if flag is not None else not require_flag
            if not is_key:
                continue
            vid, frame, name = coco_image_ids(img, where)
            where = f"{path} image {i} ({name})"
            if "ds" not in img:
                raise DataError(f"{where} has no 'ds' (the 3 rater means C1, C2, C3)")
        except DataError as e:
            issues.report(where, e)
            continue
        out.append(Keyframe(vid, frame, img["ds"], where, name))
    return out


def _frames_from_coco(path: Path, issues: _Issues) -> tuple[dict[int, set[int]], dict[tuple[int, int], str]]:
    frames: dict[int, set[int]] = {}
    names: dict[tuple[int, int], str] = {}
    for i, img in enumerate(_read_json_images(path)):
        where = f"{path} image {i}"
        try:
            if not isinstance(img, dict):
                raise DataError(f"{where} is not a JSON object")
            vid, frame, name = coco_image_ids(img, where)
        except DataError as e:
            issues.report(where, e)
            continue
        frames.setdefault(vid, set()).add(frame)
        names[(vid, frame)] = name
    return frames, names


def _read_metadata_csv(path: Path) -> CsvTable:
    """all_metadata.csv grouped by video; needs vid, frame and labels (annotators or C1-C3)."""
    _check_placeholder(path)
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            columns = {c.strip() for c in (reader.fieldnames or [])}
            _check_csv_columns(path, columns)
            rows: dict[int, list[tuple[int, dict]]] = {}
            for row in reader:
                row = {(k or "").strip(): v for k, v in row.items()}
                where = f"{path} line {reader.line_num}"
                rows.setdefault(_as_int(row.get("vid"), where, "vid"), []).append((reader.line_num, row))
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise DataError(f"cannot read {path}: {e}") from e
    return CsvTable(path, columns, rows)


def _check_csv_columns(path: Path, columns: set[str]) -> None:
    has_votes = set(ANNOTATOR_COLUMNS) <= columns
    has_means = set(CRITERION_COLUMNS) <= columns
    missing = [c for c in ("vid", "frame") if c not in columns]
    if not (has_votes or has_means):
        missing.append("cvs_annotator_1..3 or C1, C2, C3")
    if not (has_votes or "is_ds_keyframe" in columns):
        missing.append("is_ds_keyframe")
    if missing:
        raise DataError(f"{path} lacks column(s) {', '.join(missing)}; found {sorted(columns)}. Expected "
                        "vid, frame, avg_cvs, C1, C2, C3, is_ds_keyframe, cvs_annotator_1..3, mask_path, label_path")


def _keyframes_from_csv(table: CsvTable, vids: list[int], issues: _Issues) -> list[Keyframe]:
    out = []
    for vid in sorted(set(vids)):
        for line, row in table.rows_by_vid.get(vid, []):
            where = f"{table.path} line {line}"
            try:
                if not _csv_is_keyframe(row, table, where):
                    continue
                frame = _as_int(row.get("frame"), where, "frame")
                raw = _csv_rater_mean(row, table, where)
            except DataError as e:
                issues.report(where, e)
                continue
            out.append(Keyframe(vid, frame, raw, f"{where} ({vid}_{frame})", None))
    return out


def _csv_is_keyframe(row: dict, table: CsvTable, where: str) -> bool:
    if "is_ds_keyframe" in table.columns:
        return _as_bool(row.get("is_ds_keyframe"), where, "is_ds_keyframe")
    return any((row.get(c) or "").strip() for c in ANNOTATOR_COLUMNS)


def _csv_rater_mean(row: dict, table: CsvTable, where: str) -> object:
    """Mean of the 3 raters' votes ("[0, 1, 0]" each) when present, else the C1-C3 columns."""
    votes = [(row.get(c) or "").strip() for c in ANNOTATOR_COLUMNS]
    if all(votes):
        parsed = [_parse_votes(v, where, c) for v, c in zip(votes, ANNOTATOR_COLUMNS)]
        return [sum(p[c] for p in parsed) / 3 for c in range(3)]
    if set(CRITERION_COLUMNS) <= table.columns:
        return [row.get(c) for c in CRITERION_COLUMNS]
    raise DataError(f"{where}: keyframe row has empty rater votes ({', '.join(ANNOTATOR_COLUMNS)}) and no "
                    "C1, C2, C3 columns")


def _parse_votes(text: str, where: str, column: str) -> list[int]:
    try:
        votes = ast.literal_eval(text)
        ok = isinstance(votes, (list, tuple)) and len(votes) == 3 and all(v in (0, 1) for v in votes)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        ok = False
    if not ok:
        raise DataError(f"{where}: {column} {text!r} is not 3 votes of 0 or 1 such as \"[0, 1, 0]\"")
    return [int(v) for v in votes]


def _frames_from_csv(table: CsvTable, vid: int, issues: _Issues) -> set[int]:
    frames = set()
    for line, row in table.rows_by_vid.get(vid, []):
        where = f"{table.path} line {line}"
        try:
            frames.add(_as_int(row.get("frame"), where, "frame"))
        except DataError as e:
            issues.report(where, e)
    return frames


def _frames_from_jpegs(split_dir: Path) -> dict[int, set[int]]:
    """Last resort for a video's 1 fps list: the ``{vid}_{frame}.jpg`` files of the split folder."""
    out: dict[int, set[int]] = {}
    with os.scandir(split_dir) as entries:
        for entry in entries:
            m = _JPEG_NAME.fullmatch(entry.name)
            if m:
                out.setdefault(int(m.group(1)), set()).add(int(m.group(2)))
    return out
