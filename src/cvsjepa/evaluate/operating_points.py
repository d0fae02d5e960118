"""Operating points: named rules that turn a probability into a decision, chosen on **val** only.

A prediction is positive when ``score >= threshold``. Every policy is a pure function of the val
scores, the val labels and a target; the candidate thresholds are the distinct val scores (each
gives a different split of val), so a chosen threshold is always a score seen on val.

===============  ==========================================================================
``balanced``     the threshold maximising balanced accuracy (TPR + TNR) / 2 (the official
                 Endoscapes rule; ties go to the threshold closest to 0.5). No target.
``specificity``  the **lowest** threshold whose val specificity TN / N reaches the target
                 (default 0.95): of the rules that call at most 5 % of negatives positive,
                 the one that finds the most positives.
``precision``    the lowest threshold whose val PPV TP / (TP + FP) reaches the target
                 (default 0.80), with at least ``min_count(target)`` predicted positives.
``sensitivity``  the **highest** threshold whose val sensitivity TP / P reaches the target
                 (default 0.90): below it, few true positives remain.
===============  ==========================================================================

When val cannot support a policy, the threshold is ``None`` and ``reason`` says why, instead of a
threshold being invented:

* a class is missing on val (no positive, or no negative);
* the rate the target is set on has fewer than ``min_count(target) = ceil(1 / (1 - target))``
  cases in its denominator (20 negatives for a specificity of 0.95): below that, meeting the
  target means making no error at all, and one or two keyframes would set the threshold;
* the only thresholds reaching the target are degenerate: they call no val positive positive
  (specificity, precision) or no val negative negative (sensitivity). A model no better than a
  constant lands here, and then never declares CVS.

``predict`` declares CVS with ``specificity`` (:data:`DEFAULT_POLICY`) and calls a second
*uncertain* between the ``sensitivity`` threshold and the ``specificity`` one (:data:`BAND_POLICY`).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Callable

import numpy as np

from .thresholds import choose_thresholds

DEFAULT_POLICY = "specificity"  # what predict uses for "CVS reached" unless told otherwise
BAND_POLICY = "sensitivity"  # lower edge of the "uncertain" state
DEFAULT_TARGETS: dict[str, float | None] = {"balanced": None, "specificity": 0.95, "precision": 0.80,
                                            "sensitivity": 0.90}


def min_count(target: float) -> int:
    """Cases needed in a rate's denominator before a target on it means anything (see module doc)."""
    return math.ceil(1.0 / (1.0 - target) - 1e-9)


@dataclass(frozen=True)
class OperatingPoint:
    """A chosen threshold (or ``None`` + ``reason``) and the val counts at it."""

    policy: str
    target: float | None
    threshold: float | None
    reason: str | None = None
    val: dict | None = None  # n_pos, n_neg, tp, fp, tn, fn, sensitivity, specificity, ppv, npv at the threshold

    @property
    def supported(self) -> bool:
        return self.threshold is not None

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class _Counts:
    """For every candidate threshold u (distinct val scores, ascending): counts of ``score >= u``."""

    u: np.ndarray
    tp: np.ndarray
    fp: np.ndarray
    n_pos: int
    n_neg: int

    @classmethod
    def of(cls, scores, labels) -> "_Counts":
        s, y = np.asarray(scores, dtype=np.float64), np.asarray(labels, dtype=np.float64).round().astype(bool)
        u = np.unique(s)
        pos, neg = np.sort(s[y]), np.sort(s[~y])
        tp = len(pos) - np.searchsorted(pos, u, side="left")
        fp = len(neg) - np.searchsorted(neg, u, side="left")
        return cls(u, tp, fp, len(pos), len(neg))


def rates(tp: int, fp: int, tn: int, fn: int) -> dict:
    """Counts and sensitivity, specificity, PPV, NPV (NaN where a denominator is 0)."""
    div = (lambda a, b: a / b if b else math.nan)  # noqa: E731
    return {"tp": int(tp), "fp": int(fp), "tn": int(tn), "fn": int(fn), "sensitivity": div(tp, tp + fn),
            "specificity": div(tn, tn + fp), "ppv": div(tp, tp + fp), "npv": div(tn, tn + fn)}


def _at(policy: str, target: float | None, c: _Counts, t: float | None, reason: str | None,
        scores, labels) -> OperatingPoint:
    """The operating point at threshold ``t`` (None: unsupported, with ``reason``) and val's counts there."""
    base = {"n_pos": c.n_pos, "n_neg": c.n_neg}
    if t is None:
        return OperatingPoint(policy, target, None, reason, base)
    s, y = np.asarray(scores, dtype=np.float64), np.asarray(labels, dtype=np.float64).round().astype(bool)
    tp, fp = int((s[y] >= t).sum()), int((s[~y] >= t).sum())
    return OperatingPoint(policy, target, float(t), None, {**base, **rates(tp, fp, c.n_neg - fp, c.n_pos - tp)})


def _missing_class(c: _Counts) -> str | None:
    if c.n_pos == 0 or c.n_neg == 0:
        return f"val has no {'positive' if c.n_pos == 0 else 'negative'} keyframe ({c.n_pos + c.n_neg} in all)"
    return None


def _too_few(n: int, what: str, rate: str, target: float) -> str | None:
    need = min_count(target)
    return (f"val has {n} {what}; a {rate} of {target:g} needs at least {need} "
            f"(below that it could only be met with no error at all)") if n < need else None


def balanced(scores, labels, target: float | None = None) -> OperatingPoint:
    c = _Counts.of(scores, labels)
    why = _missing_class(c)
    t = None if why else choose_thresholds(np.asarray(scores, dtype=np.float64)[:, None],
                                           np.asarray(labels, dtype=np.float64)[:, None])[0]
    return _at("balanced", None, c, t, why, scores, labels)


def specificity(scores, labels, target: float) -> OperatingPoint:
    c = _Counts.of(scores, labels)
    why = _missing_class(c) or _too_few(c.n_neg, "negative keyframe(s)", "specificity", target)
    if why is not None:
        return _at("specificity", target, c, None, why, scores, labels)
    allowed_fp = math.floor((1.0 - target) * c.n_neg + 1e-9)
    ok = np.flatnonzero((c.fp <= allowed_fp) & (c.tp >= 1))  # fp falls and tp falls as u rises
    if len(ok) == 0:
        return _at("specificity", target, c, None,
                   f"no threshold reaches a specificity of {target:g} on val and still calls a val positive "
                   f"keyframe positive (every positive scores below the top {allowed_fp} of {c.n_neg} negatives)",
                   scores, labels)
    return _at("specificity", target, c, float(c.u[ok[0]]), None, scores, labels)


def precision(scores, labels, target: float) -> OperatingPoint:
    c = _Counts.of(scores, labels)
    if (why := _missing_class(c)) is not None:
        return _at("precision", target, c, None, why, scores, labels)
    need = min_count(target)
    called = c.tp + c.fp
    with np.errstate(invalid="ignore", divide="ignore"):
        ppv = np.where(called > 0, c.tp / np.maximum(called, 1), 0.0)
    ok = np.flatnonzero((ppv >= target - 1e-12) & (called >= need))
    if len(ok) == 0:
        return _at("precision", target, c, None,
                   f"no threshold reaches a PPV of {target:g} on val with at least {need} keyframes called "
                   f"positive (best PPV with {need}+: {float(np.max(ppv[called >= need], initial=0)):.3f})",
                   scores, labels)
    return _at("precision", target, c, float(c.u[ok[0]]), None, scores, labels)


def sensitivity(scores, labels, target: float) -> OperatingPoint:
    c = _Counts.of(scores, labels)
    why = _missing_class(c) or _too_few(c.n_pos, "positive keyframe(s)", "sensitivity", target)
    if why is not None:
        return _at("sensitivity", target, c, None, why, scores, labels)
    ok = np.flatnonzero((c.tp >= target * c.n_pos - 1e-9) & (c.fp < c.n_neg))  # tp falls as u rises
    if len(ok) == 0:
        return _at("sensitivity", target, c, None,
                   f"no threshold reaches a sensitivity of {target:g} on val and still calls a val negative "
                   f"keyframe negative", scores, labels)
    return _at("sensitivity", target, c, float(c.u[ok[-1]]), None, scores, labels)


POLICIES: dict[str, Callable[..., OperatingPoint]] = {
    "balanced": balanced, "specificity": specificity, "precision": precision, "sensitivity": sensitivity}


def check_target(policy: str, target: float | None) -> float | None:
    """The target to use (the default when None); ValueError for an unknown policy or a bad target."""
    if policy not in POLICIES:
        raise ValueError(f"unknown policy {policy!r}; choose one of {', '.join(POLICIES)}")
    if DEFAULT_TARGETS[policy] is None:
        return None
    t = DEFAULT_TARGETS[policy] if target is None else float(target)
    if not 0.0 < t < 1.0:
        raise ValueError(f"the {policy} target must be in (0, 1), got {t}")
    return t


def choose(policy: str, scores, labels, target: float | None = None) -> OperatingPoint:
    """The operating point of ``policy`` on val ``scores, labels [N]`` (``target`` None: the default)."""
    return POLICIES[policy](scores, labels, check_target(policy, target))


# ---------------------------------------------------------------------------------- all policies at once
FULL_CVS_KEY = "full_cvs"  # the full-CVS entry next to the criteria (score: evaluate.scores.FULL_CVS_SCORE)


def choose_policies(val_probs, val_labels, names: tuple[str, ...], calibration=None,
                    targets: dict[str, float | None] | None = None) -> dict:
    """Every policy on val, for each criterion and for full CVS: the ``policies`` block of
    ``thresholds.json`` (its shape is in docs/evaluation.md).

    ``val_probs`` are the model's raw probabilities ``[N, C]``; ``calibration`` (a
    :class:`~cvsjepa.evaluate.temperature.Temperature`, or None) maps them to the probabilities people
    read. Per criterion the policy is applied to the raw scores (the map is increasing, so the
    decisions are the same) and both thresholds are stored: ``threshold`` (calibrated) and
    ``threshold_raw``. Full CVS is scored by the product of the calibrated probabilities.
    """
    raw = np.asarray(val_probs, dtype=np.float64).reshape(-1, len(names))
    y = np.asarray(val_labels, dtype=np.float64).reshape(-1, len(names)).round()
    cal = calibration.apply(raw) if calibration is not None else raw
    full_score, full_label = cal.prod(axis=1), (y == 1).all(axis=1).astype(float)
    out = {}
    for policy in POLICIES:
        target = check_target(policy, (targets or {}).get(policy))
        crit = {}
        for c, n in enumerate(names):
            op = choose(policy, raw[:, c], y[:, c], target)
            t_cal = calibration.apply_one(op.threshold, c) if (op.supported and calibration is not None) \
                else op.threshold
            crit[n] = {"threshold": t_cal, "threshold_raw": op.threshold, "reason": op.reason, "val": op.val}
        full = choose(policy, full_score, full_label, target)
        out[policy] = {"target": target, "criteria": crit,
                       FULL_CVS_KEY: {"threshold": full.threshold, "reason": full.reason, "val": full.val}}
    return out


@dataclass(frozen=True)
class PolicyThresholds:
    """One policy's per-criterion thresholds as read back (``None`` where val could not support it)."""

    policy: str
    target: float | None
    thresholds: tuple[float | None, ...]
    reasons: tuple[str | None, ...]

    @property
    def supported(self) -> bool:
        return all(t is not None for t in self.thresholds)

    def why_not(self, names: tuple[str, ...]) -> str | None:
        """One sentence naming the criteria val could not support, or None."""
        bad = [f"{n}: {r}" for n, t, r in zip(names, self.thresholds, self.reasons) if t is None]
        return f"val cannot support the {self.policy} policy ({'; '.join(bad)})" if bad else None


def read_policy(policies: dict, policy: str, names: tuple[str, ...], where: str) -> PolicyThresholds:
    """``policy`` from a ``policies`` block written by :func:`choose_policies`; ValueError (naming
    ``where``) when it is missing or malformed."""
    block = policies.get(policy) if isinstance(policies, dict) else None
    crit = block.get("criteria") if isinstance(block, dict) else None
    if not isinstance(crit, dict):
        raise ValueError(f"{where} has no {policy!r} policy (it has: {', '.join(policies or {}) or 'none'})")
    ts, reasons = [], []
    for n in names:
        entry = crit.get(n)
        if not isinstance(entry, dict):
            raise ValueError(f"{where}: policy {policy!r} has no entry for criterion {n!r}")
        t = entry.get("threshold")
        if t is not None and not (isinstance(t, (int, float)) and 0.0 <= float(t) <= 1.0):
            raise ValueError(f"{where}: policy {policy!r}, {n}: threshold must be a number in [0, 1] or null, got {t!r}")
        ts.append(None if t is None else float(t))
        reasons.append(entry.get("reason") or (None if t is not None else "no threshold recorded"))
    return PolicyThresholds(policy, block.get("target"), tuple(ts), tuple(reasons))
