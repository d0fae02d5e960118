"""The decision blocks of ``eval_<split>.json``: ``calibration``, ``operating_points`` and ``time_to_cvs``.

Everything here is chosen on val (the calibration, the thresholds of every policy) and applied
unchanged to the evaluated split; :func:`decision_report` only assembles the three blocks so that
``evaluate/runner.py`` stays a sequence of steps.
"""

from __future__ import annotations

import math

import numpy as np

from ..data.seconds import frame_seconds
from .decision import DecisionRule, consecutive_samples
from .operating_report import calibration_report, operating_points_report
from .temperature import Temperature
from .threshold_file import parse_document
from .time_to_cvs import time_to_cvs_report, video_time_to_cvs


def _by_video(preds) -> dict:
    """video id (int for Endoscapes, name for SAGES) -> its rows, videos in sorted order."""
    rows: dict = {}
    for i, v in enumerate(preds.video_ids):
        rows.setdefault(v, []).append(i)
    return {v: np.asarray(rows[v]) for v in sorted(rows)}


def time_to_cvs_rows(keyframes, series, video_frames: dict[int, list[int]], rule: DecisionRule,
                     calibration: Temperature | None, n_consecutive: int) -> list[dict]:
    """One row per video of ``keyframes`` (labels at keyframe times); ``series`` gives the
    probabilities over time (every second, or the keyframes themselves). Both are
    :class:`~cvsjepa.evaluate.inference.Predictions` of raw probabilities."""
    kf_rows, s_rows = _by_video(keyframes), _by_video(series)
    out = []
    for vid, rows in kf_rows.items():
        frames = video_frames[vid]
        kf_t = [frame_seconds(frames, keyframes.frames[i]) for i in rows]
        idx = s_rows.get(vid, np.zeros(0, int))
        t = np.array([frame_seconds(frames, series.frames[i]) for i in idx], dtype=np.float64)
        order = np.argsort(t, kind="stable")
        p = series.probs[idx].double().numpy()[order] if len(idx) else np.zeros((0, keyframes.probs.shape[1]))
        if calibration is not None:
            p = calibration.apply(p)
        kf_order = np.argsort(kf_t, kind="stable")
        out.append(video_time_to_cvs(vid, t[order], p, np.asarray(kf_t)[kf_order],
                                     keyframes.labels[rows].numpy()[kf_order], rule, n_consecutive))
    return out


def keyframe_spacing(keyframes, video_frames: dict[int, list[int]]) -> float:
    """Median seconds between consecutive keyframes of a video (5 on Endoscapes)."""
    gaps = []
    for vid, rows in _by_video(keyframes).items():
        t = sorted(frame_seconds(video_frames[vid], keyframes.frames[i]) for i in rows)
        gaps += list(np.diff(t))
    return float(np.median(gaps)) if gaps else 1.0


def decision_report(doc: dict, calibration: Temperature, ev, seconds, video_frames: dict[int, list[int]],
                    names: tuple[str, ...], policy: str, consecutive_s: float, method: str, n_boot: int,
                    seed: int) -> dict:
    """``ev``: keyframe predictions of the evaluated split; ``seconds``: its every-second predictions
    (None unless ``method == "seconds"``); ``doc``: the thresholds document chosen on val."""
    out = {"calibration": calibration_report(calibration, ev.probs, ev.labels, names),
           "operating_points": operating_points_report(doc["policies"], ev.probs, ev.labels, ev.video_ids, names,
                                                       calibration, n_boot, seed)}
    if method == "off":
        out["time_to_cvs"] = {"method": "off"}
        return out
    rule = parse_document(doc, "thresholds chosen on val").rule(policy, names)
    if method == "seconds":
        series, n = seconds, consecutive_samples(consecutive_s, 1.0)
    else:
        series = ev
        n = max(1, math.ceil(consecutive_s / keyframe_spacing(ev, video_frames) - 1e-9))
    rows = time_to_cvs_rows(ev, series, video_frames, rule, calibration, n)
    out["time_to_cvs"] = time_to_cvs_report(rows, rule, names, method, consecutive_s, n, n_boot, seed)
    return out
