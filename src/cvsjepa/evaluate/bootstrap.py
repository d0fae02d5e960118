"""Confidence intervals by bootstrap over **videos**, not keyframes.

Keyframes of one video are strongly correlated (5 s apart, same patient, same surgeon), so
resampling keyframes would treat ~30 correlated samples as independent and give intervals that
are far too narrow. Each resample draws ``V`` video ids with replacement from the ``V`` videos of
the split and takes *all* keyframes of every drawn video (a video drawn twice counts twice).
The 95 % interval is the percentile interval (2.5th and 97.5th percentiles) of the statistic over
the resamples; resamples where the statistic is undefined (e.g. no positive for a criterion) are
left out and counted.
"""

from __future__ import annotations

import math
import warnings
from typing import Callable, Iterator, Sequence

import numpy as np
from tqdm.auto import tqdm


def video_groups(video_ids: Sequence[int]) -> tuple[list[int], list[np.ndarray]]:
    """Distinct video ids (sorted) and, for each, the row indices of its keyframes."""
    vids = np.asarray(list(video_ids))
    order = sorted(set(vids.tolist()))
    return order, [np.flatnonzero(vids == v) for v in order]


def video_draws(n_videos: int, n_resamples: int, seed: int = 0) -> np.ndarray:
    """int ``[n_resamples, n_videos]``: for each resample, the indices (into the sorted distinct
    videos) of the ``n_videos`` videos drawn with replacement. Deterministic for a given ``seed``
    (numpy ``default_rng``); the same draws as :func:`bootstrap_indices` makes, so statistics that
    use one or the other on the same split see the same resamples."""
    rng = np.random.default_rng(seed)
    if n_videos == 0:
        return np.zeros((n_resamples, 0), dtype=np.int64)
    return np.stack([rng.integers(0, n_videos, size=n_videos) for _ in range(n_resamples)]) if n_resamples \
        else np.zeros((0, n_videos), dtype=np.int64)


def multiplicity(draws: np.ndarray, n_videos: int) -> np.ndarray:
    """``draws [R, V]`` -> float ``[R, V]``: how many times each video was drawn in each resample, so a
    per-video sum ``x [V, ...]`` over a resample is ``multiplicity @ x``."""
    m = np.zeros((len(draws), n_videos))
    for r, d in enumerate(draws):
        m[r] = np.bincount(d, minlength=n_videos)
    return m


def bootstrap_indices(video_ids: Sequence[int], n_resamples: int, seed: int = 0) -> Iterator[np.ndarray]:
    """Yield ``n_resamples`` row-index arrays, each the union of whole videos drawn with replacement
    (:func:`video_draws`). Rows of a video drawn k times appear k times."""
    _, groups = video_groups(video_ids)
    if not groups:
        return
    for drawn in video_draws(len(groups), n_resamples, seed):
        yield np.concatenate([groups[g] for g in drawn])


def percentile_ci(values: Sequence[float], level: float = 0.95) -> tuple[float, float]:
    """Percentile interval of the finite values; (NaN, NaN) when none is finite."""
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return math.nan, math.nan
    a = (1 - level) / 2 * 100
    lo, hi = np.percentile(v, [a, 100 - a])
    return float(lo), float(hi)


def bootstrap_ci(statistic: Callable[[np.ndarray], dict[str, float]], video_ids: Sequence[int],
                 n_resamples: int = 1000, seed: int = 0, level: float = 0.95,
                 progress: bool = True) -> dict[str, dict]:
    """Bootstrap over videos. ``statistic(rows) -> {name: value}`` is evaluated on each resample.

    Returns ``{name: {"ci": [lo, hi], "undefined": k}}`` where ``k`` counts resamples in which the
    value was NaN (those are left out of the percentiles).
    """
    draws: dict[str, list[float]] = {}
    it = bootstrap_indices(video_ids, n_resamples, seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "no positive in this split" would fire on many resamples
        for rows in tqdm(it, total=n_resamples, desc="bootstrap", leave=False, disable=not progress,
                         unit="resample"):
            for name, value in statistic(rows).items():
                draws.setdefault(name, []).append(float(value))
    out = {}
    for name, vals in draws.items():
        lo, hi = percentile_ci(vals, level)
        out[name] = {"ci": [lo, hi], "undefined": int(sum(1 for v in vals if not math.isfinite(v)))}
    return out
