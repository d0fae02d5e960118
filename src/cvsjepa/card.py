"""The model card: ``README.md`` (:data:`cvsjepa.checkpoint.CARD_FILE`) in ``RUN/checkpoints/best`` and
in every export, so a checkpoint directory that travels says what it is.

    write_card(run)                      # train/sweep at finish; evaluate refreshes it (eval_test.json)
    write_card(run, target=DIR, note=..) # an export: the same card in DIR, plus what the export changed

What it holds, each from the file that owns it: the backbone and its weights fingerprint, the head
and adaptation, the input (frames, stride, crop, preprocessing) from the checkpoint's
``config.json``; the data and splits, the training history and the test mAP from ``summary.json``;
test metrics with 95 % CIs over videos from ``eval_test.json`` (``cvsjepa evaluate``: until it ran,
the card says so and points to it); operating points and calibration from ``thresholds.json`` /
``calibration.json``; intended use, limitations and the command that reproduces the run. A value
that is missing or undefined is shown as missing, never guessed.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from jinja2 import TemplateError

from .checkpoint import CARD_FILE, read_checkpoint_meta
from .data.transforms import IMAGENET_MEAN, IMAGENET_STD, resize_short_side
from .io import atomic_write_text
from .rundir import (CALIBRATION_FILE, CONFIG_FILE, SUMMARY_FILE, THRESHOLDS_FILE, RunDir, eval_file)
from .templating import render
from .version import __version__

log = logging.getLogger("cvsjepa")

CARD_METRICS = ("map", "ap_{}", "full_cvs_ap", "balanced_accuracy_mean", "brier_mean", "ece_mean")
NOT_A_DEVICE = ("Research tool, not a medical device: it has not been validated for clinical use and must never "
                "guide a surgical decision.")


def _json(path: Path) -> dict | None:
    """A JSON object, or None when the file is absent or unreadable (the card then says it is missing)."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _first(*paths: Path) -> tuple[dict | None, Path | None]:
    for p in paths:
        data = _json(p)
        if data is not None:
            return data, p
    return None, None


def preprocessing(crop: int, frames: int, stride: int) -> dict[str, Any]:
    """The input a checkpoint expects (data/transforms.py is the one implementation)."""
    return {"frames": frames, "stride_s": stride, "fps": 1.0, "crop": crop,
            "resize_short_side": resize_short_side(crop),
            "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD),
            "steps": f"1 fps frames; a causal clip of {frames} frames {stride} s apart ending at the keyframe; "
                     f"resize the short side to {resize_short_side(crop)} (bilinear, antialiased), center-crop "
                     f"{crop}x{crop}, scale to [0, 1], normalise with the ImageNet mean and std"}


def card_context(run: Path | None, ckpt_dir: Path) -> dict[str, Any]:
    """Everything the card shows, as plain data (also the HTML report's model section)."""
    meta = read_checkpoint_meta(ckpt_dir)
    cfg = meta["config"]
    backbone = meta.get("backbone") or {}
    summary = _json(run / SUMMARY_FILE) if run else None
    evaluation = _json(run / eval_file("test")) if run else None
    places = ([run] if run else []) + [ckpt_dir]
    thresholds, thr_path = _first(*(p / THRESHOLDS_FILE for p in places))
    calibration, _ = _first(*(p / CALIBRATION_FILE for p in places))
    if calibration is None and thresholds:
        calibration = thresholds.get("calibration")
    names = list(cfg["data"]["criteria"])
    metrics = metric_rows(evaluation, names)
    return {
        "name": cfg.get("name", "run"), "description": cfg.get("description", ""), "run": str(run) if run else None,
        "checkpoint": meta, "config": cfg, "backbone": backbone, "fingerprint": meta.get("backbone_fingerprint"),
        "criteria": names, "summary": summary, "evaluation": evaluation, "metrics": metrics,
        "thresholds": thresholds, "thresholds_path": str(thr_path) if thr_path else None,
        "policies": _policies(thresholds, names), "calibration": calibration,
        "preprocessing": preprocessing(int(backbone.get("crop_size", 0)), int(cfg["data"]["frames"]),
                                       int(cfg["data"]["stride"])),
        "command": "sweep" if (summary or {}).get("sweep") or meta.get("sweep") else "train",
        "config_file": CONFIG_FILE, "not_a_device": NOT_A_DEVICE, "version": __version__,
    }


def metric_rows(evaluation: dict | None, names: list[str]) -> list[dict]:
    """``[{"key": "map", "value": .., "ci": [lo, hi]}, ...]`` of :data:`CARD_METRICS` from an ``eval_<split>.json``."""
    if not evaluation:
        return []
    m, ci = evaluation.get("metrics", {}), evaluation.get("ci95", {})
    keys = [k.format(n) for k in CARD_METRICS for n in (names if "{}" in k else [None])]
    return [{"key": k, "value": m.get(k), "ci": ci.get(k)} for k in keys if k in m]


def _policies(doc: dict | None, names: list[str]) -> list[dict]:
    """One row per policy of a version-2 thresholds document: target and per-criterion threshold
    (calibrated probabilities) or the reason there is none."""
    rows = []
    for policy, p in ((doc or {}).get("policies") or {}).items():
        crit = p.get("criteria", {})
        rows.append({"policy": policy, "target": p.get("target"),
                     "thresholds": [crit.get(n, {}).get("threshold") for n in names],
                     "reasons": [crit.get(n, {}).get("reason") for n in names],
                     "default": policy == doc.get("default_policy")})
    return rows


def write_card(run: RunDir | Path | None, ckpt_dir: Path | None = None, target: Path | None = None,
               note: str = "") -> Path:
    """Render the card of ``run``'s best checkpoint (or of ``ckpt_dir``) into ``target`` (default:
    the checkpoint directory itself). ``note``: what an export changed, shown at the top."""
    run_path = None if run is None else run.path if isinstance(run, RunDir) else Path(run)
    ckpt = Path(ckpt_dir) if ckpt_dir is not None else RunDir(run_path).best_dir
    out = Path(target or ckpt) / CARD_FILE
    atomic_write_text(out, render("card.md.j2", note=note, **card_context(run_path, ckpt)))
    return out


def refresh_card(run: RunDir | Path) -> Path | None:
    """``write_card`` when the run has a best checkpoint; a failure is a warning: the card describes a
    finished training or evaluation, it is never a reason to lose one."""
    r = run if isinstance(run, RunDir) else RunDir(Path(run))
    if not r.has_best():
        return None
    try:
        return write_card(r.path)
    except (OSError, TemplateError, KeyError, TypeError, ValueError) as e:
        log.warning("could not write the model card in %s (%s: %s)", r.best_dir, type(e).__name__, e)
        return None
