"""The decision rule of a CVS timeline: which state each second is in, and when CVS is declared.

Per sample (one second at 1 fps), with ``p`` the (calibrated) probabilities of the criteria:

* ``cvs``: every criterion ``p_c >= threshold_c`` (the declaring policy, ``specificity`` by default);
* ``no_cvs``: some criterion is below the lower edge of the band, ``p_c < min(band_c, threshold_c)``
  (``band`` = the ``sensitivity`` policy's thresholds): CVS can be ruled out;
* ``uncertain``: neither. Where val could not support the band policy for a criterion, that
  criterion can rule nothing out, so more seconds are uncertain.

A rule without a band (thresholds given by hand, or an old thresholds file) has two states only.
A rule whose declaring policy val could not support never declares (``reason`` says why).

CVS is **declared** at the start of the first run of ``n`` consecutive ``cvs`` samples
(:func:`first_run_start`; ``predict --consecutive K`` uses ``n = round(K * fps)``).
``predict`` and ``evaluate``'s time-to-CVS use this one rule.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

STATES = ("no_cvs", "uncertain", "cvs")  # state codes 0, 1, 2
NO_CVS, UNCERTAIN, CVS = 0, 1, 2


@dataclass(frozen=True)
class DecisionRule:
    """Thresholds per criterion for ``cvs`` and (optionally) the band's lower edges, with where they
    came from. ``None`` entries are thresholds val could not support."""

    thresholds: tuple[float | None, ...]
    policy: str = "given"  # specificity | balanced | precision | sensitivity | given | legacy | default
    target: float | None = None
    band: tuple[float | None, ...] | None = None  # None: no uncertain state
    band_policy: str | None = None
    band_target: float | None = None
    reason: str | None = None  # why CVS can never be declared (some threshold is None)
    band_reason: str | None = None  # which criteria the band policy could not support
    source: str = ""  # the file (or argument) the thresholds came from

    @property
    def can_declare(self) -> bool:
        return all(t is not None for t in self.thresholds)

    def passing(self, probs: np.ndarray) -> np.ndarray:
        """``probs [T, C]`` -> bool ``[T]``: every criterion at or above its threshold."""
        probs = np.asarray(probs, dtype=np.float64).reshape(-1, len(self.thresholds))
        if not self.can_declare:
            return np.zeros(len(probs), bool)
        return (probs >= np.asarray(self.thresholds, dtype=np.float64)).all(axis=1)

    def lower_edges(self) -> np.ndarray | None:
        """Per criterion, below this a sample is ``no_cvs`` (NaN: this criterion rules nothing out)."""
        if self.band is None:
            return None
        edges = []
        for t, b in zip(self.thresholds, self.band):
            cands = [x for x in (t, b) if x is not None]
            edges.append(min(cands) if b is not None else np.nan)
        return np.asarray(edges, dtype=np.float64)

    def states(self, probs: np.ndarray) -> np.ndarray:
        """int ``[T]`` codes into :data:`STATES`."""
        probs = np.asarray(probs, dtype=np.float64).reshape(-1, len(self.thresholds))
        out = np.full(len(probs), UNCERTAIN, dtype=np.int8)
        edges = self.lower_edges()
        if edges is None:  # two states: cvs or not
            out[:] = NO_CVS
        else:
            with np.errstate(invalid="ignore"):
                below = (probs < edges).any(axis=1)  # NaN edges compare False: rule nothing out
            out[below] = NO_CVS
        out[self.passing(probs)] = CVS
        return out

    def describe(self, names: tuple[str, ...]) -> str:
        """E.g. ``specificity >= 0.95 on val: C1/C2/C3 >= 0.61/0.55/0.70; uncertain from 0.20/0.11/0.31``."""
        fmt = (lambda ts: "/".join("n/a" if t is None else f"{t:.3g}" for t in ts))  # noqa: E731
        head = self.policy + (f" >= {self.target:g}" if self.target is not None else "")
        text = f"{head}: {'/'.join(names)} >= {fmt(self.thresholds)}"
        if self.band is not None:
            text += f"; uncertain from {fmt(self.band)} ({self.band_policy}" + \
                    (f" >= {self.band_target:g})" if self.band_target is not None else ")")
        return text

    def to_dict(self) -> dict:
        return {"policy": self.policy, "target": self.target, "thresholds": list(self.thresholds),
                "band_policy": self.band_policy, "band_target": self.band_target,
                "band": None if self.band is None else list(self.band), "reason": self.reason,
                "band_reason": self.band_reason, "source": self.source, "states": list(STATES)}

    @classmethod
    def from_dict(cls, d: dict) -> "DecisionRule":
        band = d.get("band")
        return cls(tuple(d["thresholds"]), d.get("policy", "given"), d.get("target"),
                   None if band is None else tuple(band), d.get("band_policy"), d.get("band_target"),
                   d.get("reason"), d.get("band_reason"), d.get("source", ""))


def first_run_start(passing: np.ndarray, n: int) -> int | None:
    """Index of the first ``n`` consecutive True values, or None."""
    run = 0
    for i, ok in enumerate(passing):
        run = run + 1 if ok else 0
        if run >= n:
            return i - n + 1
    return None


def consecutive_samples(consecutive_s: float, fps: float) -> int:
    """Samples that ``consecutive_s`` seconds span at ``fps`` (at least 1)."""
    return max(1, round(consecutive_s * fps))
