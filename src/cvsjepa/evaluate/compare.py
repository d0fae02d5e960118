"""Paired comparison of runs on the same keyframes: mAP and per-criterion AP differences, with a
bootstrap over videos.

Paired: every resample draws the split's videos with replacement (:func:`.bootstrap.video_draws`)
and scores **both** runs on the same drawn keyframes, so what the two runs share (which videos are
easy, which are hard) cancels out of the difference. For each resample ``b``::

    d*_b = mAP_other(rows_b) - mAP_reference(rows_b)        (and AP_c the same way)

* ``ci95``: the 2.5th and 97.5th percentiles of ``d*`` (resamples where a value is undefined, e.g.
  no positive for a criterion among the drawn videos, are left out and counted);
* ``p_value`` (two-sided): ``min(1, 2 * min(#{d* <= 0}, #{d* >= 0}) / B)`` over the ``B`` defined
  resamples: twice the share of the bootstrap distribution on the far side of zero. It is small
  exactly when the percentile interval keeps away from 0 (p < 0.05 when the 95 % interval excludes
  0), and 1 when the runs give the same scores on every keyframe. With ``B`` resamples it cannot
  resolve values below ``2 / B``.

A seed group (:data:`cvsjepa.rundir.GROUP_FILE`) enters as the mean over its seeds of the mAP (and
of each AP), computed on the same resample for every seed.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
import numpy as np

from ..errors import ConfigError
from .bootstrap import multiplicity, percentile_ci, video_draws, video_groups

P_VALUE_DEFINITION = ("two-sided paired bootstrap over videos: min(1, 2 * min(#{d* <= 0}, #{d* >= 0}) / B), "
                      "d* = the difference on each of the B resamples where it is defined")


@dataclass
class Scored:
    """What is compared: one run (one probability matrix) or a seed group (several, averaged after
    scoring). ``probs``: list of float ``[N, C]``, rows in the order of the shared sample ids."""

    name: str
    sample_ids: list[str]
    video_ids: list[int]
    labels: np.ndarray  # [N, C] 0/1
    probs: list[np.ndarray]


def align(entries: list[Scored]) -> list[Scored]:
    """The entries with rows in the first entry's order; ConfigError naming a differing keyframe when
    they were scored on different samples (or with different labels)."""
    ref = entries[0]
    pos = {s: i for i, s in enumerate(ref.sample_ids)}
    out = [ref]
    for e in entries[1:]:
        a, b = set(ref.sample_ids), set(e.sample_ids)
        if a != b or len(e.sample_ids) != len(ref.sample_ids):
            only = sorted(a - b)[:1] or sorted(b - a)[:1] or ["(a duplicated id)"]
            where = ref.name if only[0] in a else e.name
            raise ConfigError(f"cannot compare {e.name} with {ref.name}: they were scored on different keyframes "
                              f"({len(e.sample_ids)} vs {len(ref.sample_ids)}; e.g. {only[0]} is only in {where}); "
                              f"compare runs evaluated on the same split of the same data")
        order = np.array([pos[s] for s in e.sample_ids])
        inv = np.empty_like(order)
        inv[order] = np.arange(len(order))
        labels = e.labels[inv]
        bad = np.flatnonzero((labels != ref.labels).any(axis=1))
        if len(bad):
            raise ConfigError(f"cannot compare {e.name} with {ref.name}: keyframe {ref.sample_ids[bad[0]]} has "
                              f"different labels in the two (different data?)")
        out.append(Scored(e.name, ref.sample_ids, ref.video_ids, ref.labels, [p[inv] for p in e.probs]))
    return out


def resampled_ap(scores: np.ndarray, labels: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """AP of one criterion on many resamples at once: ``scores, labels [N]``, ``weights [R, N]`` (how
    many times each keyframe is drawn) -> ``[R]`` (NaN where a resample holds no positive).

    A keyframe drawn k times is k tied copies, and AP groups tied scores into one threshold, so this
    is exactly the AP of the concatenated resample (sklearn's ``average_precision_score`` with
    ``sample_weight``; the tests check it against :func:`.metrics.cvs_average_precision`):
    ``AP = sum_k (R_k - R_{k-1}) P_k`` over the distinct scores in descending order.
    """
    order = np.argsort(-scores, kind="stable")
    s, y, w = scores[order], labels[order].astype(np.float64), weights[:, order]
    last = np.r_[np.flatnonzero(np.diff(s) != 0), len(s) - 1]  # the last row of each group of tied scores
    tp = np.cumsum(w * y, axis=1)[:, last]
    fp = np.cumsum(w * (1.0 - y), axis=1)[:, last]
    pos = tp[:, -1:]
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = np.where(tp + fp > 0, tp / (tp + fp), 0.0)
        recall = tp / pos
    steps = np.diff(np.concatenate([np.zeros((len(w), 1)), recall], axis=1), axis=1)
    ap = (steps * precision).sum(axis=1)
    return np.where(pos[:, 0] > 0, ap, np.nan)


def scores_of(entry: Scored, weights: np.ndarray) -> np.ndarray:
    """``[R, C + 1]``: AP per criterion and mAP (nanmean) on each resample, averaged over the
    entry's matrices (the seeds of a group)."""
    out = []
    for p in entry.probs:
        ap = np.stack([resampled_ap(p[:, c], entry.labels[:, c], weights) for c in range(p.shape[1])], axis=1)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a resample where every criterion is undefined: NaN
            out.append(np.concatenate([ap, np.nanmean(ap, axis=1, keepdims=True)], axis=1))
    return np.mean(out, axis=0)


def row_weights(video_ids, draws: np.ndarray) -> np.ndarray:
    """``draws [R, V]`` (indices into the sorted videos) -> ``[R, N]``: each keyframe's multiplicity."""
    vids, _ = video_groups(video_ids)
    col = {v: i for i, v in enumerate(vids)}
    return multiplicity(draws, len(vids))[:, [col[v] for v in video_ids]]


def p_value(d: np.ndarray) -> float:
    """Two-sided bootstrap p-value of differences ``d`` (NaNs dropped), see the module docstring."""
    d = d[np.isfinite(d)]
    if len(d) == 0:
        return math.nan
    return float(min(1.0, 2.0 * min((d <= 0).sum(), (d >= 0).sum()) / len(d)))


def summarise(point: float, d: np.ndarray) -> dict:
    return {"difference": point, "ci95": list(percentile_ci(d)), "p_value": p_value(d),
            "undefined_resamples": int((~np.isfinite(d)).sum())}


def compare(entries: list[Scored], names: tuple[str, ...], n_boot: int = 2000, seed: int = 0,
            draws: np.ndarray | None = None) -> dict:
    """Every entry after the first against the first (the reference), on the same resamples
    (``draws [R, V]``, default :func:`.bootstrap.video_draws`)."""
    entries = align(entries)
    ref = entries[0]
    n_videos = len(set(ref.video_ids))
    draws = video_draws(n_videos, n_boot, seed) if draws is None else draws
    weights = row_weights(ref.video_ids, draws)
    ones = np.ones((1, len(ref.sample_ids)))
    ref_point, ref_boot = scores_of(ref, ones)[0], scores_of(ref, weights)
    out = []
    for e in entries[1:]:
        point, dist = scores_of(e, ones)[0], scores_of(e, weights) - ref_boot
        m = summarise(point[-1] - ref_point[-1], dist[:, -1])
        out.append({"run": e.name, "map_reference": ref_point[-1], "map_run": point[-1],
                    "map_difference": m["difference"], "ci95": m["ci95"], "p_value": m["p_value"],
                    "undefined_resamples": m["undefined_resamples"],
                    "per_criterion": {n: {"ap_reference": ref_point[c], "ap_run": point[c],
                                          **summarise(point[c] - ref_point[c], dist[:, c])}
                                      for c, n in enumerate(names)}})
    return {"reference": ref.name, "n_samples": len(ref.sample_ids), "n_videos": n_videos,
            "difference": "run minus reference (positive: the run scores higher)",
            "bootstrap": {"unit": "video", "paired": True, "resamples": len(draws), "seed": seed,
                          "method": "percentile", "level": 0.95, "p_value": P_VALUE_DEFINITION},
            "comparisons": out}


def load_scored(path, split: str, tag: str = "") -> tuple[Scored, tuple[str, ...]]:
    """A run's (or a seed group's members') ``predictions_<split>[_tag].csv``, read through the run
    directory, and the criteria names; nothing is re-run. ConfigError when a file is missing."""
    from pathlib import Path

    from ..criteria import CRITERIA
    from ..groups import group_members, read_group
    from ..rundir import CONFIG_FILE, RunDir, is_group, predictions_file

    path = Path(path)
    if is_group(path):
        names = tuple(read_group(path)["criteria"])
        runs = group_members(path)
    else:
        run = RunDir.open(path)
        names = tuple(run.read_config().data.criteria) if (run / CONFIG_FILE).is_file() else CRITERIA
        runs = [run]
    parts = []
    for run in runs:
        if not (run / predictions_file(split, tag)).is_file():
            raise ConfigError(f"{run / predictions_file(split, tag)} does not exist: score the run first "
                              f"(`cvsjepa evaluate {run} --split {split}`; training writes it when it has that split)")
        p = run.read_predictions(split, names, tag)
        parts.append(Scored(str(run), p["sample_ids"], p["video_ids"], np.asarray(p["labels"]).round(),
                            [np.asarray(p["probs"], dtype=np.float64)]))
    parts = align(parts)  # the seeds of a group must hold the same keyframes
    return Scored(str(path), parts[0].sample_ids, parts[0].video_ids, parts[0].labels,
                  [q for e in parts for q in e.probs]), names
