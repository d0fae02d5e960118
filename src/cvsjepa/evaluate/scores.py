"""Every number of ``eval_<split>.json`` from probabilities, labels and fixed thresholds.

All metrics are pooled over the keyframes of the split unless named ``per_video``:

* ``ap_<c>``, ``map``: non-interpolated AP per criterion and their nanmean (``metrics.py``).
* ``full_cvs_ap``: AP of "full CVS achieved" (label = all three criteria positive) scored by the
  **product** of the three criterion probabilities (the probability that all three hold if the
  criteria were independent given the clip).
* ``balanced_accuracy_<c>``, ``f1_<c>``: on ``prob >= threshold_c``, thresholds chosen on val.
  F1 = 2 TP / (2 TP + FP + FN) (NaN when there is neither a positive label nor a positive
  prediction). ``full_cvs_balanced_accuracy``: predicted full CVS = all three above threshold.
* ``brier_<c>``, ``ece_<c>``: calibration (``calibration.py``; ECE with 15 equal-width bins).
* ``*_mean``: nanmean over the three criteria.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import torch
from torchmetrics.functional.classification import binary_average_precision

from ..criteria import CRITERIA
from .calibration import ECE_BINS, brier_score, expected_calibration_error
from .metrics import cvs_average_precision, split_phrase
from .thresholds import balanced_accuracy

FULL_CVS_SCORE = "product of the three criterion probabilities"
FULL_CVS_LABEL = "all three criteria positive (majority of raters for each)"


def full_cvs(probs: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``probs, labels [N, 3]`` -> full-CVS score ``[N]`` (product) and label ``[N]`` (all three)."""
    probs, labels = torch.as_tensor(probs).float(), torch.as_tensor(labels).round()
    return probs.prod(dim=1), (labels == 1).all(dim=1).float()


def f1_score(pred: torch.Tensor, label: torch.Tensor) -> float:
    """Binary F1 of 0/1 predictions; NaN when there is no positive label and no positive prediction."""
    pred, label = torch.as_tensor(pred).bool(), torch.as_tensor(label).float().round().bool()
    tp = (pred & label).sum().item()
    fp = (pred & ~label).sum().item()
    fn = (~pred & label).sum().item()
    denom = 2 * tp + fp + fn
    return 2 * tp / denom if denom else math.nan


def nanmean(values) -> float:
    v = [float(x) for x in values if not math.isnan(float(x))]
    return sum(v) / len(v) if v else math.nan


def point_metrics(probs: torch.Tensor, labels: torch.Tensor, thresholds: list[float],
                  names: tuple[str, ...] = CRITERIA, where: str = "") -> dict[str, float]:
    """The flat metric dict (keys in the module docstring). ``probs, labels [N, 3]``; ``where``:
    the split's name, for the warnings."""
    probs = torch.as_tensor(probs, dtype=torch.float32)
    labels = torch.as_tensor(labels, dtype=torch.float32).round()
    out: dict[str, float] = {}
    ap = cvs_average_precision(probs, labels, names, where)
    out.update({f"ap_{n}": a for n, a in zip(names, ap.ap)})
    out["map"] = ap.map
    score, full = full_cvs(probs, labels)
    if full.sum() > 0:
        out["full_cvs_ap"] = float(binary_average_precision(score, full.long(), thresholds=None))
    else:
        warnings.warn(f"no keyframe with all three criteria positive in {split_phrase(where)}: full-CVS AP is "
                      f"undefined (NaN)", stacklevel=2)
        out["full_cvs_ap"] = math.nan
    pred = probs >= torch.tensor(thresholds, dtype=probs.dtype)
    for c, n in enumerate(names):
        out[f"balanced_accuracy_{n}"] = balanced_accuracy(pred[:, c], labels[:, c])
        out[f"f1_{n}"] = f1_score(pred[:, c], labels[:, c])
        out[f"brier_{n}"] = brier_score(probs[:, c], labels[:, c])
        out[f"ece_{n}"] = expected_calibration_error(probs[:, c], labels[:, c], ECE_BINS)
    for metric in ("balanced_accuracy", "f1", "brier", "ece"):
        out[f"{metric}_mean"] = nanmean(out[f"{metric}_{n}"] for n in names)
    out["full_cvs_balanced_accuracy"] = balanced_accuracy(pred.all(dim=1), full)
    return out


def per_video_ap(probs: torch.Tensor, labels: torch.Tensor, video_ids: list[int | str],
                 names: tuple[str, ...] = CRITERIA) -> list[dict]:
    """AP per criterion and mAP computed within each video (NaN where the video has no positive)."""
    vids = np.asarray(video_ids)
    rows = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # most videos lack a positive for some criterion
        for v in sorted(set(vids.tolist())):
            idx = torch.from_numpy(np.flatnonzero(vids == v))
            r = cvs_average_precision(probs[idx], labels[idx], names)
            rows.append({"video_id": v, "n": len(idx), "ap": list(r.ap), "map": r.map})
    return rows


def per_video_summary(rows: list[dict], names: tuple[str, ...] = CRITERIA) -> dict:
    """Means over videos: per criterion over the videos with a positive; mAP over videos whose
    mAP is defined (at least one criterion with a positive)."""
    return {
        "map": nanmean(r["map"] for r in rows),
        **{f"ap_{n}": nanmean(r["ap"][c] for r in rows) for c, n in enumerate(names)},
        "n_videos": len(rows),
        "n_videos_defined": sum(1 for r in rows if not math.isnan(r["map"])),
        "aggregation": "AP computed within each video, then averaged over the videos where it is defined",
    }


def bootstrap_statistic(probs: torch.Tensor, labels: torch.Tensor, video_ids: list[int],
                        thresholds: list[float], per_video: list[dict] | None = None,
                        names: tuple[str, ...] = CRITERIA):
    """``rows -> point_metrics(rows)`` (+ ``per_video_map`` when ``per_video`` rows are given:
    the mean of the precomputed per-video mAPs over the drawn videos, counted with multiplicity)."""
    probs = torch.as_tensor(probs, dtype=torch.float32)
    labels = torch.as_tensor(labels, dtype=torch.float32)
    vids = np.asarray(video_ids)
    if per_video is not None:
        pv_map = {r["video_id"]: r["map"] for r in per_video}
        size = {r["video_id"]: r["n"] for r in per_video}
        row_map = np.array([pv_map[v] for v in vids.tolist()], dtype=float)
        row_w = np.array([1.0 / size[v] for v in vids.tolist()])  # each drawn video weighs 1 in total

    def statistic(rows: np.ndarray) -> dict[str, float]:
        idx = torch.from_numpy(rows)
        out = point_metrics(probs[idx], labels[idx], thresholds, names)
        if per_video is not None:
            m, w = row_map[rows], row_w[rows]
            ok = np.isfinite(m)
            out["per_video_map"] = float((m[ok] * w[ok]).sum() / w[ok].sum()) if ok.any() else math.nan
        return out

    return statistic
