"""Which decision rule and calibration ``predict`` and :class:`cvsjepa.CVSModel` use, and where from.

The thresholds document (:mod:`cvsjepa.evaluate.threshold_file`), first found wins:

1. ``RUN/thresholds.json`` (written by ``cvsjepa evaluate``);
2. ``CKPT/thresholds.json``: a copy cached there by an earlier call, so the checkpoint directory
   alone is enough later;
3. computed from ``RUN/predictions_val.csv`` exactly as ``evaluate`` would from the same val
   predictions (temperature fit, every policy);
4. none: 0.5 for every criterion, no calibration, with a warning.

1 and 3 are cached into ``CKPT/thresholds.json`` (best effort). From a version-2 document the rule
is the chosen policy (default ``specificity``) with the ``sensitivity`` thresholds as the lower edge
of *uncertain*, and the probabilities are calibrated. A version-1 document (no policies) gives its
thresholds as they are, with a warning, unless a policy was asked for explicitly (then an error).
Thresholds given by hand (``--thresholds``) replace the rule and apply to the probabilities shown
(calibrated when a document with a calibration was found).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

from ..criteria import CRITERIA
from ..errors import CheckpointError
from ..evaluate.decision import DecisionRule
from ..evaluate.operating_points import DEFAULT_POLICY, POLICIES
from ..evaluate.temperature import Temperature
from ..evaluate.threshold_file import ThresholdsDoc, build_document, parse_document, validate_legacy
from ..io import atomic_write_json
from ..rundir import THRESHOLDS_FILE, RunDir, predictions_file

log = logging.getLogger("cvsjepa")


@dataclass(frozen=True)
class Operating:
    """The rule, the calibration (None: raw probabilities) and where they came from."""

    rule: DecisionRule
    calibration: Temperature | None
    source: str


def read_document(path: Path) -> ThresholdsDoc:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path} cannot be read as JSON ({e})") from e
    return parse_document(data, str(path))


def document_from_predictions(run: RunDir) -> dict:
    """The version-2 document computed from the run's val predictions (val labels only)."""
    names = tuple(run.read_config().data.criteria)
    preds = run.read_predictions("val", names)
    if not preds["probs"]:
        raise CheckpointError(f"{run / predictions_file('val')} holds no predictions; cannot choose thresholds from it")
    return build_document(preds["probs"], preds["labels"], preds["video_ids"], names, "val",
                          extra={"written_by": f"cvsjepa predict, from {run / predictions_file('val')}"})


def find_document(run_dir: RunDir | None, ckpt_dir: Path) -> tuple[ThresholdsDoc | None, str]:
    """The first document found (order in the module docstring) and a phrase saying where from."""
    if run_dir is not None and (run_dir / THRESHOLDS_FILE).is_file():
        doc = read_document(run_dir / THRESHOLDS_FILE)
        _cache(ckpt_dir, doc, f"copied from {run_dir / THRESHOLDS_FILE}")
        return doc, str(run_dir / THRESHOLDS_FILE)
    if (ckpt_dir / THRESHOLDS_FILE).is_file():
        return read_document(ckpt_dir / THRESHOLDS_FILE), str(ckpt_dir / THRESHOLDS_FILE)
    preds = run_dir / predictions_file("val") if run_dir is not None else None
    if preds is not None and preds.is_file():
        data = document_from_predictions(run_dir)
        doc = parse_document(data, f"computed from {preds}")
        _cache(ckpt_dir, doc, f"computed from {preds}")
        return doc, f"computed from {preds}"
    return None, ""


def resolve_operating(run_dir: RunDir | None, ckpt_dir: Path, names: tuple[str, ...] = CRITERIA,
                      policy: str | None = None, thresholds: list[float] | None = None) -> Operating:
    """The rule and calibration for a checkpoint. ``policy`` None: the default policy (and an old
    document's thresholds if it has no policies); ``thresholds``: given by hand."""
    if policy is not None and policy not in POLICIES:
        raise CheckpointError(f"unknown policy {policy!r}; choose one of {', '.join(POLICIES)}")
    doc, where = find_document(run_dir, ckpt_dir)
    calibration = doc.calibration if doc is not None else None
    if thresholds is not None:
        given = validate_legacy(thresholds, "thresholds argument")
        return Operating(DecisionRule(given, "given", source="given"), calibration, "given")
    if doc is None:
        if policy is not None:
            raise CheckpointError(f"no {THRESHOLDS_FILE} and no {predictions_file('val')} next to {ckpt_dir}: the "
                                  f"{policy} policy needs val predictions; run `cvsjepa evaluate` on the run")
        log.warning("no %s and no %s next to %s: using 0.5 for every criterion (run `cvsjepa evaluate` on the run "
                    "to choose them on val)", THRESHOLDS_FILE, predictions_file("val"), ckpt_dir)
        return Operating(DecisionRule((0.5, 0.5, 0.5), "default 0.5", source="default"), None,
                         "default 0.5 (no thresholds found)")
    if not doc.has_policies:
        if policy is not None:
            doc.rule(policy, names)  # raises: the file predates the policies
        log.warning("%s predates the operating-point policies: using its thresholds %s as they are (run `cvsjepa "
                    "evaluate` on the run for the %s policy and the uncertain state)", where,
                    "/".join(f"{t:.3g}" for t in doc.legacy), DEFAULT_POLICY)
        return Operating(DecisionRule(doc.legacy, "legacy", source=where), None, where)
    return Operating(doc.rule(policy or DEFAULT_POLICY, names), calibration, where)


def _cache(ckpt_dir: Path, doc: ThresholdsDoc, source: str) -> None:
    """Copy the document into the checkpoint directory (version 1: the three thresholds)."""
    data = dict(doc.data) if doc.data is not None else {"thresholds": list(doc.legacy), "criteria": list(CRITERIA)}
    data["source"] = source
    path = ckpt_dir / THRESHOLDS_FILE
    try:
        if path.is_file() and json.loads(path.read_text()) == data:
            return
    except (OSError, json.JSONDecodeError):
        pass  # a damaged cache is simply rewritten
    try:
        atomic_write_json(path, data)
    except OSError as e:
        log.warning("could not cache the thresholds into %s (%s); the run directory is still needed", path, e)
