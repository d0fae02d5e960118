"""Seed groups: one config trained with several seeds, summarised together.

``cvsjepa train CONFIG --seeds 0 1 2`` writes ``GROUP/seed<k>/`` (a run each) and then
:func:`write_group` writes ``GROUP/group.json`` (layout in :mod:`cvsjepa.rundir`)::

    {"format": "cvsjepa-group", "format_version": 1, "name": ..., "seeds": [0, 1, 2],
     "members": ["seed0", "seed1", "seed2"], "criteria": ["C1", "C2", "C3"],
     "metrics": {"best_val_map": {"mean": m, "sd": s, "n": 3, "values": [...]}, "test_map": {...},
                 "val_ap_C1": {...}, ..., "test_ap_C3": {...}},
     "ensemble": {"average": "mean of the members' probabilities",
                  "val": {"map": ..., "ap": [...], "n_samples": ...}, "test": {...}}}

``sd`` is the sample standard deviation (n - 1; null for one seed): the spread one would see
retraining with another seed. The ensemble's probabilities are written as
``GROUP/predictions_<split>.csv`` (same columns as a run's), so ``compare`` and ``evaluate``-style
tools can read a group like a run.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from .criteria import CRITERIA
from .errors import ConfigError
from .io import atomic_write_json, json_safe, read_json_object
from .rundir import GROUP_FILE, RunDir, is_group, predictions_file, seed_dir

FORMAT, FORMAT_VERSION = "cvsjepa-group", 1
ROLES = ("val", "test")


def mean_sd(values: list[float | None]) -> dict:
    """``{"mean", "sd", "n", "values"}`` over the finite values (sd with n - 1; None below 2)."""
    v = [float(x) for x in values if x is not None and math.isfinite(float(x))]
    return {"mean": float(np.mean(v)) if v else None, "sd": float(np.std(v, ddof=1)) if len(v) > 1 else None,
            "n": len(v), "values": list(values)}


def member_dirs(group: Path, seeds: list[int]) -> list[Path]:
    return [Path(group) / seed_dir(k) for k in seeds]


def ensemble_predictions(members: list[RunDir], role: str, names: tuple[str, ...]):
    """The mean of the members' probabilities on ``role`` (a :class:`Predictions`), or None when a
    member has no predictions file for it. Members must hold the same keyframes."""
    from .evaluate.inference import Predictions

    if not all((m / predictions_file(role)).is_file() for m in members):
        return None
    rows = [m.read_predictions(role, names) for m in members]
    ref = rows[0]
    for m, r in zip(members[1:], rows[1:]):
        if r["sample_ids"] != ref["sample_ids"]:
            raise ConfigError(f"{m} scored other {role} keyframes than {members[0]}: the seeds of a group must use "
                              f"the same data")
    probs = torch.tensor(np.mean([np.asarray(r["probs"]) for r in rows], axis=0), dtype=torch.float32)
    return Predictions(ref["sample_ids"], ref["video_ids"], ref["frames"], torch.tensor(ref["labels"]),
                       torch.tensor(ref["rater_means"]), probs, math.nan)


def write_group(group: Path, seeds: list[int], name: str, names: tuple[str, ...] = CRITERIA) -> dict:
    """Summarise the finished member runs of ``group`` into group.json and the ensemble predictions."""
    members = [RunDir.open(d) for d in member_dirs(group, seeds)]
    summaries = [m.read_summary() for m in members]
    metrics = {"best_val_map": mean_sd([s.get("best_val_map") for s in summaries]),
               "test_map": mean_sd([s.get("test_map") for s in summaries])}
    for role in ROLES:
        for c, n in enumerate(names):
            metrics[f"{role}_ap_{n}"] = mean_sd([(s.get(f"{role}_ap") or [None] * len(names))[c] for s in summaries])
    ensemble: dict = {"average": "mean of the members' probabilities"}
    for role in ROLES:
        preds = ensemble_predictions(members, role, names)
        if preds is None:
            continue
        ap = preds.ap()
        ensemble[role] = {"map": ap.map, "ap": list(ap.ap), "n_samples": len(preds.sample_ids)}
        RunDir(Path(group)).write_predictions(role, preds, names)
    doc = {"format": FORMAT, "format_version": FORMAT_VERSION, "name": name, "seeds": list(seeds),
           "members": [seed_dir(k) for k in seeds], "criteria": list(names), "metrics": metrics,
           "ensemble": ensemble}
    atomic_write_json(Path(group) / GROUP_FILE, json_safe(doc))
    return doc


def read_group(group: str | Path) -> dict:
    """group.json, checked; ConfigError when it is not a group directory."""
    path = Path(group) / GROUP_FILE
    if not is_group(group):
        raise ConfigError(f"{group} is not a seed group (no {GROUP_FILE})")
    doc = read_json_object(path, ConfigError, "the group directory is damaged")
    if doc.get("format") != FORMAT or not isinstance(doc.get("members"), list):
        raise ConfigError(f"{path} is not a cvsjepa seed-group summary")
    return doc


def group_members(group: str | Path) -> list[RunDir]:
    return [RunDir.open(Path(group) / m) for m in read_group(group)["members"]]
