"""The SAGES CVS Challenge 2024 metrics (tasks A, B, C), as its official ``util/metrics.py`` computes
them where it is public, over the annotated frames of a split.

* **Task A, assessment**: ``mAP`` = sklearn's ``average_precision_score(labels, probs, average="macro")``
  with the majority labels: the mean of the three APs where, as in sklearn, a criterion without a
  positive frame counts as AP 0 (``evaluate``'s own ``map`` leaves it out instead).
* **Task B, calibration**, per criterion ``c`` with probability ``p`` and confidence-aware label
  ``q = 0.5 + (1/3) sum_i (l_i - 0.5) w_i``:
  ``brier_official = mean (p - [q > 0])^2`` — the official code's ``brier_score_loss(y_true=q > 0)``,
  reproduced as written [sic: ``q > 0`` is 1 unless all three raters say 0 with full confidence];
  ``brier_majority = mean (p - majority)^2``; ``brier_soft = mean (p - q)^2`` (the Brier score
  against the soft label itself); ``official_ece = mean |q - p|`` (what the official code calls ECE).
* **At 0.5** (also in the official code): ``f1_samples`` (sklearn ``f1_score(average="samples",
  zero_division=1)``: F1 of each frame's predicted set of criteria, averaged) and ``accuracy``
  (every criterion right).
* **Task C, robustness**: the challenge's resamples are hidden; the stand-in here is the **minimum
  task-A mAP over seeded resamples that over-represent hard strata** (:func:`robustness`; the
  scheme is in docs/evaluation.md).
"""

from __future__ import annotations

import math
import warnings
from typing import Sequence

import numpy as np
import torch

from .metrics import cvs_average_precision

OVERSAMPLE = 3.0  # a frame in the stratum is drawn this many times as often as one outside it
RESAMPLES = 50  # per stratum
STRATA = {
    "low_confidence": "frames of videos whose mean rater confidence is below the split's median video",
    "rater_disagreement": "frames where the 3 raters disagree on at least one criterion",
    "positive": "frames with at least one criterion positive (majority)",
    "video_bootstrap": "videos drawn with replacement (all their frames), no over-representation: case mix",
}


def macro_ap(probs, labels) -> tuple[float, list[float]]:
    """sklearn-style macro AP: ``(mean, per criterion)`` with 0 for a criterion without positives."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "no positive label": counted as 0 here, as sklearn does
        ap = cvs_average_precision(torch.as_tensor(probs), torch.as_tensor(labels)).ap
    ap = [0.0 if math.isnan(a) else float(a) for a in ap]
    return (sum(ap) / len(ap) if ap else math.nan), ap


def f1_samples(pred: np.ndarray, labels: np.ndarray) -> float:
    """Per frame, F1 of the predicted set of criteria against the true set (1 when both are empty:
    sklearn's ``zero_division=1``), averaged over frames."""
    pred, labels = pred.astype(bool), labels.astype(bool)
    tp = (pred & labels).sum(1)
    denom = pred.sum(1) + labels.sum(1)
    f1 = np.where(denom > 0, 2 * tp / np.maximum(denom, 1), 1.0)
    return float(f1.mean()) if len(f1) else math.nan


def _per_criterion(values: np.ndarray, names: Sequence[str]) -> dict:
    out = {n: float(v) for n, v in zip(names, values)}
    out["mean"] = float(np.mean(values)) if len(values) else math.nan
    return out


def challenge_metrics(probs, labels, rater_means, conf_labels, video_confidence, video_ids: list,
                      names: Sequence[str] = ("C1", "C2", "C3"), seed: int = 0, resamples: int = RESAMPLES) -> dict:
    """All three tasks. ``probs``, ``labels`` (majority, 0/1), ``rater_means``, ``conf_labels``: ``[N, 3]``;
    ``video_confidence`` ``[N]``: the mean of the 3 raters' confidences for the frame's video;
    ``video_ids`` ``[N]``: the grouping key of each frame."""
    p = np.asarray(probs, dtype=np.float64)
    y = np.asarray(labels, dtype=np.float64).round()
    q = np.asarray(conf_labels, dtype=np.float64)
    if not (p.shape == y.shape == q.shape and p.ndim == 2 and len(p)):
        raise ValueError(f"probs {p.shape}, labels {y.shape}, conf_labels {q.shape} must be one [N, 3] shape, N > 0")
    mean_ap, ap = macro_ap(p, y)
    pred = p > 0.5
    return {
        "task_a": {"map": mean_ap, "ap": dict(zip(names, ap)),
                   "definition": "sklearn average_precision_score(majority labels, probs, average='macro'); a "
                                 "criterion without a positive frame counts as 0"},
        "task_b": {"brier_official": _per_criterion(((p - (q > 0)) ** 2).mean(0), names),
                   "brier_majority": _per_criterion(((p - y) ** 2).mean(0), names),
                   "brier_soft": _per_criterion(((p - q) ** 2).mean(0), names),
                   "official_ece": _per_criterion(np.abs(q - p).mean(0), names),
                   "definition": "brier_official: mean (p - [q > 0])^2 as util/metrics.py computes it [sic]; "
                                 "brier_majority: against the majority label; brier_soft: against q itself; "
                                 "official_ece: mean |q - p|; q = 0.5 + (1/3) sum_i (l_i - 0.5) conf_i"},
        "task_c": robustness(p, y, np.asarray(rater_means, dtype=np.float64), np.asarray(video_confidence, float),
                             list(video_ids), seed=seed, resamples=resamples),
        "at_0.5": {"f1_samples": f1_samples(pred, y), "accuracy": float((pred == y.astype(bool)).all(1).mean())},
        "n_frames": int(len(p)), "n_videos": len(set(video_ids)),
    }


def strata(labels: np.ndarray, rater_means: np.ndarray, video_confidence: np.ndarray,
           video_ids: list) -> dict[str, np.ndarray]:
    """Boolean membership ``[N]`` of each frame-level hard stratum (see ``STRATA``); the confidence
    median is over the split's videos (each counted once), not over frames."""
    conf = np.asarray(video_confidence, dtype=np.float64)
    per_video = {v: c for v, c in zip(video_ids, conf.tolist()) if math.isfinite(c)}
    low = conf < np.median(list(per_video.values())) if per_video else np.zeros(len(conf), bool)
    unanimous = np.isclose(rater_means, 0) | np.isclose(rater_means, 1)
    return {"low_confidence": low, "rater_disagreement": ~unanimous.all(1), "positive": labels.any(1)}


def robustness(probs: np.ndarray, labels: np.ndarray, rater_means: np.ndarray, video_confidence: np.ndarray,
               video_ids: list, seed: int = 0, resamples: int = RESAMPLES, factor: float = OVERSAMPLE) -> dict:
    """Task C stand-in: the minimum macro mAP over ``resamples`` seeded draws per stratum.

    Frame strata: N frames drawn with replacement, a frame in the stratum ``factor`` times as likely
    as one outside it. ``video_bootstrap``: the split's videos drawn with replacement, all their frames
    kept. A stratum with no frame, or every frame, is not resampled (it shifts nothing)."""
    rng = np.random.default_rng([int(seed), 2024])
    n = len(probs)
    per: dict[str, dict] = {}
    members = strata(labels, rater_means, video_confidence, video_ids)
    for name, inside in members.items():
        share = float(inside.mean()) if n else math.nan
        if not 0 < inside.sum() < n:
            per[name] = {"share": share, "min_map": None, "mean_map": None, "note": "empty or whole split: skipped"}
            continue
        w = np.where(inside, factor, 1.0)
        maps = [macro_ap(probs[rows], labels[rows])[0]
                for rows in (rng.choice(n, size=n, replace=True, p=w / w.sum()) for _ in range(resamples))]
        per[name] = {"share": share, "min_map": min(maps), "mean_map": float(np.mean(maps))}
    vids = np.asarray(video_ids)
    groups = [np.flatnonzero(vids == v) for v in sorted(set(vids.tolist()))]
    maps = []
    for _ in range(resamples if len(groups) > 1 else 0):
        rows = np.concatenate([groups[g] for g in rng.integers(0, len(groups), size=len(groups))])
        maps.append(macro_ap(probs[rows], labels[rows])[0])
    per["video_bootstrap"] = ({"share": 1.0, "min_map": min(maps), "mean_map": float(np.mean(maps))} if maps else
                              {"share": 1.0, "min_map": None, "mean_map": None, "note": "one video: skipped"})
    done = {k: v["min_map"] for k, v in per.items() if v["min_map"] is not None}
    worst = min(done, key=done.get) if done else None
    return {"robustness_map": done[worst] if worst else None, "worst_stratum": worst, "strata": per,
            "scheme": {"resamples_per_stratum": resamples, "oversample": factor, "seed": seed,
                       "strata": STRATA, "statistic": "task A mAP of each resample; robustness = the minimum",
                       "note": "a stand-in: the challenge's own shifted resamples are not public"}}
