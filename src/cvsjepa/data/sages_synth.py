"""``cvsjepa synth --layout sages2024``: a small SYNTHETIC dataset in the SAGES CVS Challenge 2024 layout.

Nothing here is real surgical data. The scenes are the Endoscapes writer's (:mod:`.synth`: the same
drawn anatomy whose three structures grow with a latent dissection), rendered once per second,
scaled down to ``width`` px and written as H.264 mp4s at ``fps`` (30 by default, like the release).
The frame at second ``k`` is frame ``k * fps``; the frames between two seconds repeat it **dimmed to
half brightness**, so a loader that samples any other frame than ``k * fps`` sees it at once.

Labels follow the reference (shared/reference/sages2024.md), criterion order C1, C2, C3: one row
per annotated frame (``frame_id % (5 * fps) == 0``) in ``labels/{video}/frame.csv`` with three
raters' 0/1 votes per criterion, and ``labels/{video}/video.csv`` with each rater's confidence for
the video, drawn in [0.4, 1]. A rater with confidence ``w`` says yes to criterion c with
probability ``p = sigmoid(K * w * (v_c - 0.5))`` (``K`` the Endoscapes writer's slope, ``v_c`` the
drawn visibility): the less confident, the noisier. The majority label's true posterior
``P(>= 2 of 3) = p1 p2 + p1 p3 + p2 p3 - 2 p1 p2 p3`` gives ``oracle.json`` (the best mAP to expect).

Written under ``out``::

    train/videos/{video}.mp4  train/labels/{video}/{frame.csv,video.csv}   (and the same under test/)
    oracle.json  synth.json  synth_truth.csv (per annotated frame: visibilities, posteriors)  README.txt

Video names are ``case_{nnn}`` (names, not numbers, as SAGES has). Deterministic for a ``seed``.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import DataError
from .oracle import ORACLE_FILE
from .sages import ANNOTATION_EVERY_S, CONFIDENCE_COLUMNS, VOTE_COLUMNS
from .sages_layout import FRAME_CSV, LABELS_DIR, VIDEO_CSV, VIDEOS_DIR
from .synth import (
    HEIGHT,
    RATER_SLOPE,
    WIDTH,
    Texture,
    _check_target,
    _remove_stale_temps,
    average_precision,
    draw_scene,
    render_frame,
    write_csv,
    write_video_mp4,
)

SPLITS = ("train", "test")
GENERATOR_VERSION = 1
CONFIDENCE_RANGE = (0.4, 1.0)
ENCODER = {"crf": "20", "preset": "ultrafast"}  # tiny frames: quality is not the point, speed is


def video_name(vid: int) -> str:
    return f"case_{vid:03d}"


def majority_of_three(p: np.ndarray) -> np.ndarray:
    """``p [..., 3 raters]`` -> P(at least 2 of the 3 independent raters say yes)."""
    a, b, c = p[..., 0], p[..., 1], p[..., 2]
    return a * b + a * c + b * c - 2 * a * b * c


def _votes(rng: np.random.Generator, v: np.ndarray, confidence: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``v [K, 3 criteria]`` visibilities -> votes ``[K, 3 criteria, 3 raters]`` and the majority
    posterior ``[K, 3]``."""
    p = 1.0 / (1.0 + np.exp(-RATER_SLOPE * confidence[None, None, :] * (v[:, :, None] - 0.5)))
    return (rng.random(p.shape) < p).astype(np.int64), majority_of_three(p)


def write_sages_dataset(out: Path, *, seed: int = 0, videos: tuple[int, int] = (10, 5), min_seconds: int = 45,
                        max_seconds: int = 90, fps: int = 30, width: int = 192, overwrite: bool = False,
                        progress: bool = True) -> dict:
    """Write the dataset (module docstring) to ``out`` and return a summary with the oracle mAP.

    ``videos``: train and test counts. ``fps``: the videos' frame rate (frame ids count at it).
    ``width``: frame width in px (height keeps the 854x480 aspect, both even). Built in a temporary
    sibling folder and renamed into place, so an interrupted run leaves no half dataset.
    """
    t0 = time.perf_counter()
    out = Path(out)
    videos = tuple(int(v) for v in videos)
    if len(videos) != 2 or min(videos) < 1:
        raise DataError(f"videos must be 2 positive counts (train, test), got {videos}")
    if not 1 <= min_seconds <= max_seconds:
        raise DataError(f"need 1 <= min_seconds <= max_seconds, got {min_seconds}, {max_seconds}")
    if fps < 1 or width < 16:
        raise DataError(f"need fps >= 1 and width >= 16, got fps={fps}, width={width}")
    _check_target(out, overwrite)
    size = (width - width % 2, int(round(width * HEIGHT / WIDTH / 2)) * 2)
    firsts = (1, videos[0] + 1)  # video numbers run on across the splits
    plan = [(split, vid) for split, n, first in zip(SPLITS, videos, firsts) for vid in range(first, first + n)]
    out.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_temps(out)
    tmp = out.parent / f".{out.name}.synth-tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        from tqdm.auto import tqdm

        truth: list[list[str]] = []
        per_split: dict[str, tuple[list, list]] = {s: ([], []) for s in SPLITS}
        for split, vid in tqdm(plan, desc="synth sages2024", unit="video", disable=not progress):
            q, y = _write_video(tmp, split, vid, seed, min_seconds, max_seconds, fps, size, truth)
            per_split[split][0].append(q)
            per_split[split][1].append(y)
        summary = _write_metadata(tmp, per_split, truth, dict(seed=seed, videos=list(videos), fps=fps, size=list(size),
                                                             min_seconds=min_seconds, max_seconds=max_seconds))
        if out.exists():
            shutil.rmtree(out) if any(out.iterdir()) else out.rmdir()
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return {"out": str(out), "layout": "sages2024", "seconds": round(time.perf_counter() - t0, 2), **summary}


def _write_video(tmp: Path, split: str, vid: int, seed: int, min_s: int, max_s: int, fps: int,
                 size: tuple[int, int], truth: list) -> tuple[np.ndarray, np.ndarray]:
    """Render, encode and label one video; returns its annotated frames' posteriors and majority labels."""
    video = draw_scene(seed, vid, split, min_s, max_s)
    rng = np.random.default_rng(np.random.SeedSequence([seed, vid, 2024]))
    confidence = np.round(rng.uniform(*CONFIDENCE_RANGE, size=3), 2)
    texture = Texture(video.texture_seed)
    seconds = [np.asarray(Image.fromarray(render_frame(video, t, texture)).resize(size, Image.BILINEAR))
               for t in range(video.seconds)]
    dimmed = [s // 2 for s in seconds]
    frames = [seconds[i // fps] if i % fps == 0 else dimmed[i // fps] for i in range(video.seconds * fps)]
    name = video_name(vid)
    write_video_mp4(frames, tmp / split / VIDEOS_DIR / f"{name}.mp4", fps=fps, options=ENCODER)
    keys = np.arange(0, video.seconds, ANNOTATION_EVERY_S)
    votes, q = _votes(rng, video.v[keys], confidence)  # [K, criterion, rater], [K, criterion]
    labels = tmp / split / LABELS_DIR / name
    labels.mkdir(parents=True)
    write_csv(labels / FRAME_CSV, ["frame_id", *VOTE_COLUMNS],
               [[str(int(t) * fps), *(str(int(x)) for x in votes[k].reshape(-1))] for k, t in enumerate(keys)])
    write_csv(labels / VIDEO_CSV, list(CONFIDENCE_COLUMNS), [[f"{c:.2f}" for c in confidence]])
    majority = (votes.sum(2) >= 2).astype(int)
    for k, t in enumerate(keys):
        truth.append([split, name, str(int(t) * fps), *(f"{x:.6f}" for x in video.v[t]), *(f"{x:.6f}" for x in q[k])])
    return q, majority


def _write_metadata(tmp: Path, per_split: dict, truth: list, params: dict) -> dict:
    oracle, summary = {}, {}
    for split, (qs, ys) in per_split.items():
        q, y = np.concatenate(qs), np.concatenate(ys)
        ap = [average_precision(q[:, c], y[:, c]) for c in range(3)]
        valid = [a for a in ap if not math.isnan(a)]
        oracle[split] = {"ap": [None if math.isnan(a) else round(a, 6) for a in ap],
                         "map": round(sum(valid) / len(valid), 6) if valid else None,
                         "prevalence": [round(float(y[:, c].mean()), 6) for c in range(3)], "keyframes": len(y),
                         "note": "AP of the true posterior P(majority of 3 raters says yes | the drawn frame) against "
                                 "the realised majority labels: the best mAP any model can expect on this split"}
        summary[split] = {"videos": len(qs), "annotated_frames": len(y), "positive_rate": oracle[split]["prevalence"],
                          "oracle_map": oracle[split]["map"]}
    write_csv(tmp / "synth_truth.csv", ["split", "video", "frame_id", "v_C1", "v_C2", "v_C3", "q_C1", "q_C2", "q_C3"],
               truth)
    (tmp / ORACLE_FILE).write_text(json.dumps(oracle, indent=2) + "\n")
    (tmp / "synth.json").write_text(json.dumps({"generator": "cvsjepa synth --layout sages2024", "synthetic": True,
                                                "generator_version": GENERATOR_VERSION, **params,
                                                "confidence_range": list(CONFIDENCE_RANGE),
                                                "rater_slope": RATER_SLOPE}, indent=2) + "\n")
    (tmp / "README.txt").write_text(
        "SYNTHETIC DATA - NOT the SAGES CVS Challenge 2024 dataset, not surgical data, not for any clinical or\n"
        "research claim. Written by `cvsjepa synth --layout sages2024` in that challenge's on-disk layout so\n"
        "that cvsjepa's SAGES loader, metrics and submission path can be exercised without the real data.\n"
        "Between two seconds the frames are dimmed copies: only frame k * fps shows second k as labelled.\n")
    return {"splits": summary}
