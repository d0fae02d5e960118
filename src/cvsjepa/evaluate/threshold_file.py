"""``thresholds.json`` (:data:`cvsjepa.rundir.THRESHOLDS_FILE`): the one writer and reader of its format.

Version 2 (written by ``cvsjepa evaluate``, or computed from ``predictions_val.csv`` by ``predict``)
keeps every key of version 1 and adds the calibration and the policies::

    {"format": "cvsjepa-thresholds", "format_version": 2, "criteria": ["C1", "C2", "C3"],
     "thresholds": [t1, t2, t3],          # v1 meaning kept: balanced accuracy, on RAW probabilities
     "chosen_on": "val", "val_split": ..., "rule": ..., "undefined_on_val": [...], ...
     "calibration": {...},                # evaluate/temperature.py: T per criterion, fitted on val
     "default_policy": "specificity", "band_policy": "sensitivity",
     "policies": {"specificity": {"target": 0.95,
                                  "criteria": {"C1": {"threshold": ..., "threshold_raw": ..., "reason": null,
                                                      "val": {...}}, ...},
                                  "full_cvs": {"threshold": ..., "reason": ..., "val": {...}}}, ...}}

``threshold`` applies to calibrated probabilities (what predict shows), ``threshold_raw`` to the
model's raw sigmoid outputs; ``null`` + ``reason`` where val could not support the policy.
Version 1 files (``{"thresholds": [...]}``, ``{"thresholds": {"C1": ...}}``, ``{"C1": ...}`` or a
plain list) still load: they give the legacy thresholds and no policy.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..criteria import CRITERIA
from ..errors import CheckpointError
from ..io import json_safe
from .decision import DecisionRule
from .operating_points import BAND_POLICY, DEFAULT_POLICY, POLICIES, choose_policies, read_policy
from .scores import FULL_CVS_SCORE
from .temperature import Temperature
from .thresholds import choose_thresholds

FORMAT, FORMAT_VERSION = "cvsjepa-thresholds", 2
THRESHOLD_RULE = "per criterion, the threshold maximising balanced accuracy on val (evaluate/thresholds.py)"


def undefined_on_val(labels, names: tuple[str, ...]) -> list[str]:
    """Criteria whose val labels are all 0 or all 1: no balanced threshold, 0.5 is used."""
    y = np.asarray(labels, dtype=np.float64).reshape(-1, len(names)).round()
    pos = y.sum(axis=0)
    return [n for c, n in enumerate(names) if pos[c] == 0 or pos[c] == len(y)]


def build_document(val_probs, val_labels, val_video_ids, names: tuple[str, ...], val_split: str,
                   calibration: Temperature | None = None, extra: dict | None = None,
                   targets: dict[str, float] | None = None) -> dict:
    """The version-2 document from val predictions alone (raw probabilities ``[N, C]``). Fits the
    calibration when none is given; ``targets`` replace the policies' default targets."""
    raw = np.asarray(val_probs, dtype=np.float64).reshape(-1, len(names))
    y = np.asarray(val_labels, dtype=np.float64).reshape(-1, len(names))
    if calibration is None:
        calibration = Temperature.fit_val(raw, y, names, val_split)
    return json_safe({
        "format": FORMAT, "format_version": FORMAT_VERSION, "criteria": list(names),
        "thresholds": choose_thresholds(raw, y), "chosen_on": "val", "val_split": val_split,
        "rule": THRESHOLD_RULE, "undefined_on_val": undefined_on_val(y, names),
        "n_val_samples": len(raw), "n_val_videos": len(set(val_video_ids)),
        "probabilities": "'thresholds' and 'threshold_raw' apply to the model's raw probabilities; 'threshold' "
                         "to the calibrated ones (calibration below)",
        "calibration": calibration.to_dict(),
        "default_policy": DEFAULT_POLICY, "band_policy": BAND_POLICY,
        "full_cvs_score": FULL_CVS_SCORE + ", of the calibrated probabilities",
        "policies": choose_policies(raw, y, names, calibration, targets),
        **(extra or {}),
    })


def validate_legacy(values, where: str) -> tuple[float, float, float]:
    try:
        out = tuple(float(v) for v in values)
    except (TypeError, ValueError):
        out = ()
    if len(out) != 3 or not all(math.isfinite(v) and 0.0 <= v <= 1.0 for v in out):
        raise CheckpointError(f"{where}: thresholds must be 3 numbers in [0, 1] (C1, C2, C3), got {values!r}")
    return out  # type: ignore[return-value]


@dataclass(frozen=True)
class ThresholdsDoc:
    """A parsed thresholds file: the legacy thresholds, and (version 2) the calibration and policies."""

    legacy: tuple[float, float, float]
    where: str
    policies: dict | None = None
    calibration: Temperature | None = None
    data: dict | None = None  # the document as read (version 2)

    @property
    def has_policies(self) -> bool:
        return self.policies is not None

    def rule(self, policy: str, names: tuple[str, ...]) -> DecisionRule:
        """``policy`` for "CVS" with the band policy's thresholds as the lower edge of "uncertain"."""
        if self.policies is None:
            raise CheckpointError(f"{self.where} predates the operating-point policies (it holds only balanced-"
                                  f"accuracy thresholds); run `cvsjepa evaluate` on the run to write them")
        try:
            main = read_policy(self.policies, policy, names, self.where)
            band = read_policy(self.policies, BAND_POLICY, names, self.where)
        except ValueError as e:
            raise CheckpointError(str(e)) from e
        return DecisionRule(main.thresholds, policy, main.target, band.thresholds, BAND_POLICY, band.target,
                            main.why_not(names), band.why_not(names), self.where)


def parse_document(data, where: str) -> ThresholdsDoc:
    """Any version of the file (see the module docstring); CheckpointError naming ``where`` if malformed."""
    if isinstance(data, dict) and isinstance(data.get("policies"), dict):
        try:
            cal = Temperature.from_dict(data["calibration"], where) if data.get("calibration") else None
        except ValueError as e:
            raise CheckpointError(str(e)) from e
        unknown = sorted(set(data["policies"]) - set(POLICIES))
        if unknown:
            raise CheckpointError(f"{where}: unknown policies {unknown}; known: {', '.join(POLICIES)}")
        return ThresholdsDoc(validate_legacy(data.get("thresholds"), where), where, data["policies"], cal, data)
    values = data
    if isinstance(values, dict) and "thresholds" in values:
        values = values["thresholds"]
    if isinstance(values, dict):  # {"C1": t1, "C2": t2, "C3": t3}
        values = [values.get(c) for c in CRITERIA]
    return ThresholdsDoc(validate_legacy(values, where), where)
