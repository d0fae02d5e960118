"""The ``operating_points`` and ``calibration`` blocks of ``eval_<split>.json``.

Operating points are chosen on val (:mod:`.operating_points`) and applied unchanged to the evaluated
split. For every policy the report gives, per criterion, for full CVS (product score) and for the
``decision`` predict makes at one second (every criterion at or above its threshold, scored against
the full-CVS label): the threshold, and the split's sensitivity, specificity, PPV and NPV with 95 %
intervals from the bootstrap over videos (:mod:`.bootstrap`; the same resamples for every entry).

A resample's rates come from the summed per-video confusion counts of the drawn videos, so the
bootstrap costs one matrix product per entry.
"""

from __future__ import annotations

import math

import numpy as np

from .bootstrap import multiplicity, percentile_ci, video_draws, video_groups
from .calibration import ECE_BINS, brier_score, expected_calibration_error
from .operating_points import FULL_CVS_KEY, POLICIES, rates
from .temperature import Temperature

DECISION_KEY = "decision"  # every criterion >= its threshold, against the full-CVS label (what predict declares)
RATE_KEYS = ("sensitivity", "specificity", "ppv", "npv")


def video_counts(pred: np.ndarray, label: np.ndarray, video_ids) -> np.ndarray:
    """float ``[V, 4]``: TP, FP, TN, FN of each video (videos in sorted order, as the bootstrap)."""
    _, groups = video_groups(video_ids)
    p, y = np.asarray(pred, bool), np.asarray(label, dtype=np.float64).round().astype(bool)
    return np.array([[(p[g] & y[g]).sum(), (p[g] & ~y[g]).sum(), (~p[g] & ~y[g]).sum(), (~p[g] & y[g]).sum()]
                     for g in groups], dtype=np.float64).reshape(-1, 4)


def _rates_of(counts: np.ndarray) -> dict[str, np.ndarray]:
    """``counts [..., 4]`` (TP, FP, TN, FN) -> each rate ``[...]`` (NaN where its denominator is 0)."""
    tp, fp, tn, fn = np.moveaxis(counts, -1, 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return {"sensitivity": tp / (tp + fn), "specificity": tn / (tn + fp), "ppv": tp / (tp + fp),
                "npv": tn / (tn + fn)}


def rates_with_ci(pred, label, video_ids, mult: np.ndarray | None) -> dict:
    """Counts, the four rates and (``mult`` = :func:`multiplicity` of the draws) their 95 % CIs."""
    per_video = video_counts(pred, label, video_ids)
    out = rates(*per_video.sum(axis=0).astype(int))
    if mult is not None and len(mult):
        boot = _rates_of(mult @ per_video)
        out["ci95"] = {k: list(percentile_ci(boot[k])) for k in RATE_KEYS}
        out["undefined_resamples"] = {k: int((~np.isfinite(boot[k])).sum()) for k in RATE_KEYS
                                      if (~np.isfinite(boot[k])).any()}
    return out


def operating_points_report(policies: dict, probs_raw, labels, video_ids, names: tuple[str, ...],
                            calibration: Temperature | None, n_boot: int, seed: int) -> dict:
    """Per policy: the val-chosen thresholds applied to the evaluated split, with bootstrap CIs.

    ``probs_raw, labels [N, C]`` of the evaluated split; ``policies`` from
    :func:`~cvsjepa.evaluate.operating_points.choose_policies` (val only). Per-criterion decisions
    compare raw probabilities with ``threshold_raw`` (exactly the calibrated comparison, without a
    round trip through the map); full CVS compares the product of calibrated probabilities.
    """
    raw = np.asarray(probs_raw, dtype=np.float64).reshape(-1, len(names))
    y = np.asarray(labels, dtype=np.float64).reshape(-1, len(names)).round()
    cal = calibration.apply(raw) if calibration is not None else raw
    full_label = (y == 1).all(axis=1)
    n_videos = len(set(video_ids))
    mult = multiplicity(video_draws(n_videos, n_boot, seed), n_videos) if n_boot > 0 else None
    out: dict = {}
    for policy in POLICIES:
        block = policies[policy]
        entry: dict = {"target": block["target"], "criteria": {}}
        preds = []
        for c, n in enumerate(names):
            chosen = block["criteria"][n]
            row = {"threshold": chosen["threshold"], "threshold_raw": chosen["threshold_raw"], "val": chosen["val"]}
            if chosen["threshold_raw"] is None:
                row["reason"] = chosen["reason"]
                preds.append(None)
            else:
                pred = raw[:, c] >= chosen["threshold_raw"]
                preds.append(pred)
                row.update(rates_with_ci(pred, y[:, c], video_ids, mult))
            entry["criteria"][n] = row
        full = block[FULL_CVS_KEY]
        entry[FULL_CVS_KEY] = {"threshold": full["threshold"], "val": full["val"]}
        if full["threshold"] is None:
            entry[FULL_CVS_KEY]["reason"] = full["reason"]
        else:
            entry[FULL_CVS_KEY].update(rates_with_ci(cal.prod(axis=1) >= full["threshold"], full_label, video_ids, mult))
        if any(p is None for p in preds):
            entry[DECISION_KEY] = {"reason": "; ".join(
                f"{n}: {block['criteria'][n]['reason']}" for n, p in zip(names, preds) if p is None)}
        else:
            entry[DECISION_KEY] = rates_with_ci(np.all(preds, axis=0), full_label, video_ids, mult)
        out[policy] = entry
    return {"chosen_on": "val", "policies": out,
            "rule": "positive when probability >= threshold; thresholds chosen on val (evaluate/operating_points.py)",
            DECISION_KEY: "every criterion >= its threshold, scored against the full-CVS label "
                          "(what predict declares at one second, before the consecutive-seconds rule)",
            "ci": {"unit": "video", "resamples": n_boot, "seed": seed, "method": "percentile", "level": 0.95}
            if n_boot > 0 else None}


def calibration_report(calibration: Temperature, probs_raw, labels, names: tuple[str, ...]) -> dict:
    """Brier and ECE of the evaluated split before and after the val-fitted temperatures."""
    raw = np.asarray(probs_raw, dtype=np.float64).reshape(-1, len(names))
    y = np.asarray(labels, dtype=np.float64).reshape(-1, len(names)).round()
    cal = calibration.apply(raw)
    out = {"method": calibration.to_dict(), "ece_bins": ECE_BINS, "before": {}, "after": {}}
    for key, p in (("before", raw), ("after", cal)):
        for c, n in enumerate(names):
            out[key][f"brier_{n}"] = brier_score(p[:, c], y[:, c])
            out[key][f"ece_{n}"] = expected_calibration_error(p[:, c], y[:, c], ECE_BINS)
        for m in ("brier", "ece"):
            vals = [out[key][f"{m}_{n}"] for n in names if not math.isnan(out[key][f"{m}_{n}"])]
            out[key][f"{m}_mean"] = sum(vals) / len(vals) if vals else math.nan
    return out
