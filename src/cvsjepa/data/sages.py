"""The SAGES CVS Challenge 2024 index: annotated frames, their labels, splits and causal 1 fps clips.

Labels (shared/reference/sages2024.md), criterion order C1, C2, C3 in every file::

    labels/{video}/frame.csv   frame_id, c1_rater1, c1_rater2, c1_rater3, c2_rater1, ..., c3_rater3   (0 or 1)
    labels/{video}/video.csv   confidence_rater1, confidence_rater2, confidence_rater3             (floats)

Annotated frames: one every ``ANNOTATION_EVERY_S`` = 5 s, i.e. ``frame_id % (5 * fps) == 0`` with
``fps`` the video's whole-number rate (``% 150`` at 30 fps, ``% 125`` at 25 fps); other rows of
frame.csv are left out (and counted). Per criterion, with votes ``l_i`` and confidences ``w_i``:

    rater_mean = (l_1 + l_2 + l_3) / 3                        (as Endoscapes' ds)
    label      = 1 if at least 2 of the 3 raters say 1         (majority; the task A target)
    conf_label = 0.5 + (1/3) * sum_i (l_i - 0.5) * w_i        (confidence-aware; the task B reference)

Each sample's clip is causal, as for Endoscapes: the annotated frame and the ``frames - 1`` earlier
1 fps frames ``stride`` s apart, the video's first frame standing in before its start. Frame numbers
(``Sample.frame``, ``clip_frames``, ``video_frames``) count the source frames (``k * fps`` for second
``k``); ``clip_paths`` hold :class:`~cvsjepa.data.video_frames.VideoFrame` references (decoded from the
video) or the JPEG of a frame folder. Sample ids are ``{video}_{frame_id}``; ``video_id`` is the name.
"""

from __future__ import annotations

import csv
import logging
import math
from dataclasses import dataclass
from pathlib import Path

from ..errors import DataError
from .endoscapes import Sample, SplitIndex, causal_clip
from .sages_layout import (FRAME_CSV, SOURCE_FPS, VIDEO_CSV, SagesLayout, SagesVideo, find_layout, pixels_of)
from .splits import SplitPlan, plan_splits, read_split_file
from .video_frames import VideoFrame, probe_video

log = logging.getLogger("cvsjepa")

FORMAT = "sages2024"
ANNOTATION_EVERY_S = 5
RATERS = 3
CRITERION_KEYS = ("c1", "c2", "c3")  # the files' criterion prefixes, in C1, C2, C3 order
VOTE_COLUMNS = tuple(f"{c}_rater{r}" for c in CRITERION_KEYS for r in range(1, RATERS + 1))
CONFIDENCE_COLUMNS = tuple(f"confidence_rater{r}" for r in range(1, RATERS + 1))


# ---- labels --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FrameVotes:
    frame_id: int
    votes: tuple[tuple[int, ...], ...]  # [criterion][rater], each 0 or 1
    where: str  # file and line, for messages


def annotation_step(fps: float) -> int:
    """Frames between annotated frames: 5 s at the whole-number rate (150 at 30 fps, 125 at 25 fps)."""
    return ANNOTATION_EVERY_S * max(1, round(fps))


def annotated(rows: list[FrameVotes], fps: float) -> list[FrameVotes]:
    """The rows on the 5-s annotation grid, sorted by frame id."""
    step = annotation_step(fps)
    return sorted((r for r in rows if r.frame_id % step == 0), key=lambda r: r.frame_id)


def sages_labels(votes: tuple[tuple[int, ...], ...], confidence: tuple[float, ...]):
    """``(rater_mean [3], majority label [3], confidence-aware label [3])`` of one frame (module docstring)."""
    mean = tuple(sum(v) / RATERS for v in votes)
    label = tuple(int(sum(v) * 2 > RATERS) for v in votes)
    conf = tuple(0.5 + sum((l - 0.5) * w for l, w in zip(v, confidence)) / RATERS for v in votes)
    return mean, label, conf


def _read_csv(path: Path) -> tuple[list[str], list[tuple[int, dict]]]:
    if not path.is_file():
        raise DataError(f"{path} does not exist; every labels/<video>/ folder needs {FRAME_CSV} and {VIDEO_CSV}")
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            columns = [c.strip().lower() for c in (reader.fieldnames or [])]
            rows = [(reader.line_num, {(k or "").strip().lower(): (v or "").strip() for k, v in row.items()})
                    for row in reader]
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise DataError(f"cannot read {path}: {e}") from e
    return columns, rows


def _need_columns(path: Path, columns: list[str], needed: tuple[str, ...]) -> None:
    missing = [c for c in needed if c not in columns]
    if missing:
        raise DataError(f"{path} lacks column(s) {', '.join(missing)}; found {', '.join(columns) or 'none'}. "
                        f"Expected {', '.join(needed)}")


def _number(text: str, where: str, what: str) -> float:
    try:
        x = float(text)
    except ValueError:
        x = math.nan
    if not math.isfinite(x):
        raise DataError(f"{where}: {what} {text!r} is not a number")
    return x


def read_frame_csv(path: Path) -> list[FrameVotes]:
    """Every row of a ``frame.csv``; DataError naming the file and line for a bad value or a repeat."""
    columns, rows = _read_csv(path)
    _need_columns(path, columns, ("frame_id", *VOTE_COLUMNS))
    out, seen = [], set()
    for line, row in rows:
        where = f"{path} line {line}"
        fid = _number(row["frame_id"], where, "frame_id")
        if fid < 0 or not fid.is_integer():
            raise DataError(f"{where}: frame_id {row['frame_id']!r} is not a frame number (0, 1, 2, ...)")
        if fid in seen:
            raise DataError(f"{where}: frame_id {int(fid)} appears twice; keep one row")
        seen.add(fid)
        votes = []
        for c in CRITERION_KEYS:
            vs = []
            for r in range(1, RATERS + 1):
                x = _number(row[f"{c}_rater{r}"], where, f"{c}_rater{r}")
                if x not in (0.0, 1.0):
                    raise DataError(f"{where}: {c}_rater{r} is {row[f'{c}_rater{r}']!r}; labels must be 0 or 1")
                vs.append(int(x))
            votes.append(tuple(vs))
        out.append(FrameVotes(int(fid), tuple(votes), where))
    return out


def read_video_csv(path: Path) -> tuple[float, float, float]:
    """The three raters' confidences for the whole video (first row of ``video.csv``)."""
    columns, rows = _read_csv(path)
    _need_columns(path, columns, CONFIDENCE_COLUMNS)
    if not rows:
        raise DataError(f"{path} has a header but no row; expected one row of {', '.join(CONFIDENCE_COLUMNS)}")
    line, row = rows[0]
    return tuple(_number(row[c], f"{path} line {line}", c) for c in CONFIDENCE_COLUMNS)  # type: ignore[return-value]


# ---- the index -----------------------------------------------------------------------------------


def resolve_plan(layout: SagesLayout, roles: dict[str, str], val_fraction: float, seed: int,
                 splits_file: str = "") -> SplitPlan:
    """The split assignment: the split file when given, else the official splits plus seeded draws."""
    if splits_file:
        plan = read_split_file(splits_file)
        unknown = sorted(set(plan.owner()) - set(layout.videos))
        if unknown:
            raise DataError(f"split file {splits_file} names video(s) {unknown[:5]} that {layout.root} has no "
                            f"labels for; is data.root the dataset the run was trained on?")
        return plan
    return plan_splits(layout.official, roles, val_fraction, seed, str(layout.root))


def load_sages_splits(root: str | Path, names: list[str], roles: dict[str, str], *, frames: int, stride: int,
                      val_fraction: float, seed: int, splits_file: str = "", frame_source: str = "auto",
                      on_bad_sample: str = "error", check_frames: bool = True, limit: int = 0) -> dict[str, SplitIndex]:
    """``{split name: SplitIndex}`` for ``names``; each index carries the whole assignment as ``plan``.

    ``roles``: role -> split name (from the config), used to draw missing val/test splits.
    With ``on_bad_sample="skip"`` a video or row that cannot be used is left out and recorded in
    ``skipped``; otherwise the first problem raises :class:`DataError` naming the file.
    """
    if frames < 1 or stride < 1 or limit < 0:
        raise ValueError(f"need frames >= 1, stride >= 1, limit >= 0; got {frames}, {stride}, {limit}")
    layout = find_layout(root)
    plan = resolve_plan(layout, roles, val_fraction, seed, splits_file)
    record = plan.to_dict(FORMAT, layout.root)
    out = {}
    for name in dict.fromkeys(names):
        if name not in plan.splits:
            raise DataError(f"{layout.root} has no split '{name}' ({plan.source}: {', '.join(sorted(plan.splits))}); "
                            f"set data.train_split / val_split / test_split to one of them")
        index = SplitIndex(name, [], {}, plan=record, frame_refs={})
        for vname in plan.splits[name]:
            try:
                _add_video(index, layout.videos[vname], frames, stride, frame_source, check_frames)
            except DataError as e:
                if on_bad_sample == "error":
                    raise
                index.skipped.append((f"video {vname}", str(e)))
        index.samples.sort(key=lambda s: (s.video_id, s.frame))
        if limit:
            index.samples = index.samples[:limit]
        if index.skipped:
            log.warning("%s: skipped %d video(s) (on_bad_sample=skip); first: %s — %s", name, len(index.skipped),
                        *index.skipped[0])
        out[name] = index
    return out


def _add_video(index: SplitIndex, video: SagesVideo, n: int, stride: int, frame_source: str,
               check_frames: bool) -> None:
    """Index one video's annotated frames into ``index`` (all or nothing: a problem raises)."""
    rows = read_frame_csv(video.labels / FRAME_CSV)
    confidence = read_video_csv(video.labels / VIDEO_CSV)
    source = pixels_of(video, frame_source)
    if source == "video":
        probe = probe_video(video.video)
        fps, seconds, total, what = probe.nominal_fps, probe.seconds, probe.frames, str(video.video)
    else:
        fps = probe_video(video.video).nominal_fps if video.video is not None else SOURCE_FPS
        seconds = video.frames.seconds(fps)
        total, what = seconds * fps, f"{video.frames.where} ({video.frames.convention} convention)"
    keep = annotated(rows, fps)
    if len(keep) < len(rows):
        log.info("%s: %d of %d labelled rows are not on the %d-s grid (frame_id %% %d != 0) and are not used",
                 video.labels / FRAME_CSV, len(rows) - len(keep), len(rows), ANNOTATION_EVERY_S, annotation_step(fps))
    if keep and keep[-1].frame_id >= total:
        last = keep[-1]
        raise DataError(f"{what} is shorter than its labels: {last.where} labels frame {last.frame_id} "
                        f"({last.frame_id / fps:.1f} s at {fps} fps) but the video has {total} frames "
                        f"({total / fps:.1f} s); re-download or re-encode it, or remove its labels")
    frame_list = [k * fps for k in range(seconds)]
    if source == "video":
        refs_of = {f: VideoFrame(video.video, f // fps) for f in frame_list}
    else:
        key = (lambda f: f // fps) if video.frames.convention == "fe.py" else (lambda f: f)
        refs_of = {f: video.frames.files[key(f)] for f in frame_list if key(f) in video.frames.files}
    samples = []
    for r in keep:
        clip = causal_clip(frame_list, r.frame_id, n, stride)
        if source == "video":
            refs = tuple(refs_of[f] for f in clip)
        else:
            refs = tuple(video.frames.path(f // fps, fps) for f in clip)  # a missing file: DataError naming it
            if check_frames:
                for p in dict.fromkeys(refs):
                    if not p.is_file():
                        raise DataError(f"clip frame {p} of {video.name}_{r.frame_id} does not exist")
        mean, label, conf = sages_labels(r.votes, confidence)
        samples.append(Sample(f"{video.name}_{r.frame_id}", video.name, r.frame_id, index.split, mean, label,
                              tuple(clip), refs, conf_label=conf, rater_confidence=confidence))
    index.samples += samples
    index.video_frames[video.name] = frame_list
    if index.frame_refs is not None:  # every 1 fps frame, for clips that end elsewhere (TTA offsets)
        index.frame_refs.update({(video.name, f): ref for f, ref in refs_of.items()})
