"""Time-to-CVS on the videos of a split: when would ``predict`` have declared CVS, and was it too early?

For every video:

* ``declared_at_s``: the first second at which the decision rule (:mod:`.decision`, the default
  ``specificity`` policy) declares CVS, i.e. the start of the first run of ``consecutive``
  seconds in state ``cvs``; ``None`` if never;
* ``first_full_cvs_label_s``: the time of the first keyframe labelled full CVS (all three criteria
  positive by the raters' majority); ``None`` if the video has none;
* ``latency_s = declared_at_s - first_full_cvs_label_s`` (negative = declared early);
* ``false_early_call``: CVS was declared before any keyframe labelled full CVS (including videos
  with no such keyframe at all). This is the costly error for a safety check.

Times are seconds from the video's first 1 fps frame (its position in the split's frame list), the
clock ``predict`` uses. Labels exist only on keyframes (every 5 s on Endoscapes), so a declaration
less than one keyframe interval before the first positive keyframe counts as early although the
truth in between is unknown: the measure is conservative.

Two sources of per-second probabilities (``evaluate --time-to-cvs``):

* ``seconds`` (default): the causal clip ending at **every** 1 fps frame is scored, exactly the
  clips ``predict`` builds for a video (:mod:`cvsjepa.data.seconds`);
* ``keyframes``: only the keyframe clips already scored (5x cheaper). A keyframe stands for the
  interval up to the next one, so the consecutive rule needs ``ceil(consecutive / spacing)``
  passing keyframes (one at 5 s spacing for the default 3 s) and a declaration can only fall on a
  keyframe: up to one interval later than ``seconds`` would find.

Summary: ``false_early_call_rate`` (over all videos), ``missed_rate`` (videos with a full-CVS
keyframe that were never declared, over those videos), ``median_latency_s`` (over videos with both a
declaration and a full-CVS keyframe; signed), each with a 95 % interval from the bootstrap over
videos.
"""

from __future__ import annotations

import math
import warnings
from typing import get_args

import numpy as np

from ..config import TimeToCvsMethod
from .bootstrap import percentile_ci, video_draws
from .decision import DecisionRule, first_run_start

METHODS = get_args(TimeToCvsMethod)
SUMMARY_KEYS = ("false_early_call_rate", "missed_rate", "median_latency_s")


def first_full_cvs_time(kf_times, kf_labels) -> float | None:
    """Time of the first keyframe whose labels are all positive (majority), or None."""
    y = np.asarray(kf_labels, dtype=np.float64).round()
    hit = np.flatnonzero((y == 1).all(axis=1)) if y.size else np.zeros(0, int)
    return float(np.asarray(kf_times, dtype=np.float64)[hit[0]]) if len(hit) else None


def video_time_to_cvs(video_id: int | str, times, probs, kf_times, kf_labels, rule: DecisionRule,
                      n_consecutive: int) -> dict:
    """One video's row (keys in the module docstring). ``times [T]`` ascending with ``probs [T, C]``
    (calibrated, as predict shows them); ``kf_times [K]`` with ``kf_labels [K, C]``."""
    times = np.asarray(times, dtype=np.float64)
    i = first_run_start(rule.passing(probs), n_consecutive)
    declared = None if i is None else float(times[i])
    first = first_full_cvs_time(kf_times, kf_labels)
    early = declared is not None and (first is None or declared < first)
    return {"video_id": video_id, "declared_at_s": declared, "first_full_cvs_label_s": first,
            "latency_s": None if declared is None or first is None else declared - first,
            "false_early_call": bool(early), "n_seconds": int(len(times)), "n_keyframes": int(len(kf_times))}


def summarise(rows: list[dict]) -> dict[str, float]:
    """The summary numbers of a list of video rows (NaN where undefined)."""
    n = len(rows)
    labelled = [r for r in rows if r["first_full_cvs_label_s"] is not None]
    lat = [r["latency_s"] for r in rows if r["latency_s"] is not None]
    return {
        "false_early_call_rate": sum(r["false_early_call"] for r in rows) / n if n else math.nan,
        "missed_rate": (sum(r["declared_at_s"] is None for r in labelled) / len(labelled)) if labelled else math.nan,
        "median_latency_s": float(np.median(lat)) if lat else math.nan,
    }


def time_to_cvs_report(rows: list[dict], rule: DecisionRule, names: tuple[str, ...], method: str,
                       consecutive_s: float, n_consecutive: int, n_boot: int, seed: int) -> dict:
    """``time_to_cvs`` of ``eval_<split>.json``: per video, summary and bootstrap CIs over videos."""
    rows = sorted(rows, key=lambda r: r["video_id"])
    summary = summarise(rows)
    summary.update({"n_videos": len(rows), "n_declared": sum(r["declared_at_s"] is not None for r in rows),
                    "n_false_early_calls": sum(r["false_early_call"] for r in rows),
                    "n_with_full_cvs_label": sum(r["first_full_cvs_label_s"] is not None for r in rows)})
    ci: dict = {}
    if n_boot > 0 and rows:
        draws: dict[str, list[float]] = {k: [] for k in SUMMARY_KEYS}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for d in video_draws(len(rows), n_boot, seed):
                s = summarise([rows[j] for j in d])
                for k in SUMMARY_KEYS:
                    draws[k].append(s[k])
        ci = {k: list(percentile_ci(v)) for k, v in draws.items()}
    return {"method": method, "rule": rule.to_dict(), "rule_text": rule.describe(names),
            "consecutive_s": consecutive_s, "consecutive_samples": n_consecutive,
            "declares": rule.can_declare, "reason": rule.reason,
            "summary": summary, "ci95": ci,
            "ci": {"unit": "video", "resamples": n_boot, "seed": seed, "method": "percentile", "level": 0.95}
            if n_boot > 0 else None,
            "videos": rows,
            "definitions": {"false_early_call": "declared before the first keyframe labelled full CVS (or in a video "
                                                "with none)",
                            "latency_s": "declared_at_s - first_full_cvs_label_s (negative = early)",
                            "false_early_call_rate": "over all videos",
                            "missed_rate": "videos with a full-CVS keyframe never declared / videos with one",
                            "median_latency_s": "over videos with both a declaration and a full-CVS keyframe"}}
