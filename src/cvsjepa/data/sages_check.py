"""`cvsjepa check-data ROOT` on a SAGES CVS Challenge 2024 copy.

For every labelled video of every split: ``frame.csv`` has the columns and 0/1 votes, ``video.csv``
numeric confidences; its pixels exist (the video, or a frame folder); the video decodes to the end
(every frame, with :mod:`cvsjepa.data.video`'s checks for corrupt and truncated streams) and holds
at least as many frames as its highest labelled frame id + 1; no video is in two splits (the layout
refuses that, naming both places). Problems are collected, each with its file; nothing stops early.
"""

from __future__ import annotations

import math
from pathlib import Path

from tqdm.auto import tqdm

from ..errors import DataError
from .sages import CRITERION_KEYS, FRAME_CSV, VIDEO_CSV, annotated, read_frame_csv, read_video_csv, sages_labels
from .sages_layout import SOURCE_FPS, SagesVideo, find_layout, pixels_of
from .video import open_frames
from .video_frames import probe_video


def check_sages(root: Path, report, frame_source: str = "auto", decode: bool = True, progress: bool = True):
    """Fill ``report`` (a :class:`cvsjepa.data.check.CheckReport`) for the SAGES copy at ``root``."""
    try:
        layout = find_layout(root)
    except DataError as e:
        report.problems.append((str(root), str(e)))
        return report
    todo = [(split, layout.videos[v]) for split, vids in sorted(layout.official.items()) for v in vids]
    stats: dict[str, dict] = {s: {"videos": 0, "annotated": 0, "pos": [0, 0, 0], "conf": []} for s in layout.official}
    for split, video in tqdm(todo, desc="checking videos", unit="video", disable=not progress):
        found = _check_video(video, frame_source, decode, report)
        if found is None:
            continue
        labels, confidence = found
        st = stats[split]
        st["videos"] += 1
        st["annotated"] += len(labels)
        st["conf"].append(sum(confidence) / 3)
        for lab in labels:
            for c in range(3):
                st["pos"][c] += lab[c]
    for split, st in stats.items():
        n = st["annotated"]
        report.rows.append({"split": split, "videos": st["videos"], "annotated_frames": n,
                            **{f"pos_C{c + 1}": (st["pos"][c] / n if n else math.nan) for c in range(3)},
                            "mean_confidence": sum(st["conf"]) / len(st["conf"]) if st["conf"] else math.nan,
                            "from": str(layout.origin.get(split, ""))})
    return report


def _check_video(video: SagesVideo, frame_source: str, decode: bool, report):
    """``(majority labels of the annotated frames, confidences)``, or None after recording a problem."""
    try:
        rows = read_frame_csv(video.labels / FRAME_CSV)
        confidence = read_video_csv(video.labels / VIDEO_CSV)
        source = pixels_of(video, frame_source)
    except DataError as e:
        report.problems.append((str(video.labels), str(e)))
        return None
    last = max((r.frame_id for r in rows), default=-1)
    if source == "video":
        try:
            frames, fps = _decoded_frames(video.video) if decode else _declared_frames(video.video)
        except DataError as e:
            report.problems.append((str(video.video), str(e)))
            return None
        report.videos_decoded += int(decode)
        if frames <= last:
            report.problems.append((str(video.video), f"{'decodes to' if decode else 'declares'} {frames} frames but "
                                                      f"{video.labels / FRAME_CSV} labels frame {last}: the video is "
                                                      f"shorter than its labels"))
    else:
        fps = SOURCE_FPS
        seconds = video.frames.seconds(fps)
        if last >= 0 and last // fps >= seconds:
            report.problems.append((str(video.frames.where), f"frames cover {seconds} s but {video.labels / FRAME_CSV} "
                                                             f"labels frame {last} ({last / fps:.1f} s at {fps} fps)"))
    keep = annotated(rows, fps)
    if not keep:
        report.problems.append((str(video.labels / FRAME_CSV), f"no row on the 5-s grid (frame_id % "
                                                               f"{5 * round(fps)} == 0); no frame of {video.name} "
                                                               f"can be used ({', '.join(CRITERION_KEYS)} labels)"))
    return [sages_labels(r.votes, confidence)[1] for r in keep], confidence


def _decoded_frames(path: Path) -> tuple[int, float]:
    """Decode every frame (the reader's corrupt/truncation checks apply): ``(frames, nominal fps)``."""
    with open_frames(path, 1.0) as reader:
        for _ in reader:
            pass
        r = reader.report
        if not r.complete or r.corrupt_frames or r.skipped_packets:
            why = "; ".join(r.errors + r.warnings) or "decoding errors"
            raise DataError(f"does not decode cleanly ({why}); re-download or re-encode it")
        return r.decoded_frames, round(reader.info.source_fps or SOURCE_FPS)


def _declared_frames(path: Path) -> tuple[int, float]:
    p = probe_video(path)
    return p.frames, p.nominal_fps
