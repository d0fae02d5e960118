"""`cvsjepa evaluate`: score a run's best checkpoint on val or test and write the results into the run.

    load RUN/checkpoints/best (and each --ensemble run's) -> re-index the data from the run's config
    -> predict val and the evaluated split (TTA views averaged; ensemble members averaged), and
       (time-to-CVS) every second of the split's videos
    -> on VAL only: temperature calibration, thresholds by balanced accuracy and every operating
       point policy -> metrics, operating points and time-to-CVS on the split -> bootstrap over videos
    -> eval_<split>.json, thresholds.json, calibration.json, predictions_<split>.csv,
       pr_curves_<split>.png, reliability_<split>.png

Thresholds and calibration never see the evaluated split's labels unless that split is val itself
(then the JSON says so: balanced accuracy and F1 on val are optimistic). Members are run one at a
time, so an ensemble of ViT-L runs needs the memory of one.

On another dataset than the run was trained on (``--data-root`` elsewhere) every output name carries
``rundir.data_tag(root)``: the run's own predictions and thresholds.json (which ``predict`` uses) are
never replaced by an evaluation on other data.
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from ..version import __version__
from ..config import RunConfig
from ..data.endoscapes import Sample
from ..data.loaders import SplitData, build_splits
from ..errors import ConfigError
from ..io import atomic_write_json, json_safe
from ..card import refresh_card
from ..checkpoint import check_probabilities
from ..reopen import Reopen, load_run, run_config
from ..rundir import (BEST_DIR, RunDir, calibration_file, data_tag, eval_file, pr_curves_file, reliability_file,
                      thresholds_file)
from .bootstrap import bootstrap_ci
from .calibration import ECE_BINS, reliability_bins
from .challenge import challenge_metrics
from .decision_report import decision_report
from .operating_points import DEFAULT_POLICY, POLICIES
from .temperature import Temperature
from .threshold_file import THRESHOLD_RULE, build_document, undefined_on_val as _undefined
from .time_to_cvs import METHODS as TIME_TO_CVS_METHODS
from .figures import plot_pr_curves, plot_reliability, pr_curve
from .inference import Predictions, predict_loader
from .metrics import prevalence
from .scores import (FULL_CVS_LABEL, FULL_CVS_SCORE, bootstrap_statistic, full_cvs, per_video_ap,
                     per_video_summary, point_metrics)
from .thresholds import balanced_accuracy
from .temporal import embed_videos, predict_temporal
from .tta import TTASettings, predict_tta

log = logging.getLogger("cvsjepa")

ROLES = ("val", "test")
SECONDS = "seconds"  # predict_members' role of the evaluated split's every-second clips (time-to-CVS)


@dataclass(frozen=True)
class EvalOptions:
    """What ``cvsjepa evaluate`` computes (how it re-opens the run is a :class:`~cvsjepa.reopen.Reopen`)."""
    split: str = "test"  # val | test; thresholds always come from val
    tta: TTASettings = TTASettings()
    ensemble: tuple[str | Path, ...] = ()  # more runs whose probabilities are averaged with RUN's
    per_video: bool = False
    bootstrap: int = 1000  # resamples over videos for the 95 % CIs; 0 = none
    seed: int = 0
    tag: str | None = None  # output file suffix; None: derived from TTA / ensemble
    policy: str = DEFAULT_POLICY  # the operating point time-to-CVS declares CVS with (as predict does)
    targets: tuple[tuple[str, float], ...] = ()  # (policy, target) pairs replacing the default targets
    time_to_cvs: str = "seconds"  # seconds (every 1 fps clip) | keyframes (cheaper approximation) | off
    consecutive: float = 3.0  # seconds of "cvs" in a row before CVS is declared (predict --consecutive)


@dataclass
class EvalResult:
    run_dir: Path
    split: str
    files: dict[str, Path]
    report: dict


def role_split(cfg: RunConfig, role: str) -> str:
    name = {"val": cfg.data.val_split, "test": cfg.data.test_split}[role]
    if not name:
        raise ConfigError(f"the run has no {role} split (data.{role}_split is empty in its config)")
    return name


def predict_split(model, cfg: RunConfig, split: SplitData, tta: TTASettings, device: torch.device,
                  batch_size: int, desc: str, progress: bool) -> Predictions:
    """Probabilities of one split: the plain loader without TTA, else the mean over TTA views."""
    if tta.is_plain:
        loader = split.loader(batch_size, False, cfg.data.num_workers)
        return predict_loader(model, loader, device, desc=desc, progress=progress)
    crop = model.backbone.crop_size
    # a resized frame is ~2.5x a cropped one (854x480 frames); same RAM budget as training's cache
    cache = max(64, cfg.data.frame_cache_mb * 2**20 // int(3 * crop * crop * 4 * 2.5) // 2)
    return predict_tta(model, split.index, crop, cfg.data.stride, tta, device, batch_size, cfg.data.num_workers,
                       cache, cfg.data.target, cfg.data.on_bad_sample, desc=desc, progress=progress,
                       view=cfg.data.view)


def check_same_samples(reference: list[str], other: list[str], ref_run: Path, run: Path, role: str) -> None:
    if reference == other:
        return
    a, b = set(reference), set(other)
    only = sorted(a - b)[:3] or sorted(b - a)[:3]
    raise ConfigError(f"cannot ensemble {run} with {ref_run}: their {role} splits hold different keyframes "
                      f"({len(other)} vs {len(reference)}; e.g. {', '.join(only) or 'same ids in another order'}); "
                      f"members must be indexed on the same data (data.root, splits, limit_per_split)")


def predict_members(runs: list[Path], roles: tuple[str, ...], tta: TTASettings, reopen: Reopen,
                    device: torch.device, seconds_of: str | None = None, video_frames: dict | None = None
                    ) -> tuple[dict[str, Predictions], dict[str, dict[str, Sample]]]:
    """Per role, the mean probability over the members (one member = no ensemble), and the first
    member's samples by id (the labels beyond the batch keys: SAGES confidence-aware labels).
    ``seconds_of``: a role whose every 1 fps clip is scored too, under the role :data:`SECONDS`;
    ``video_frames`` (a dict) receives, per role, each video's 1 fps frame list."""
    # Index every member first (cheap, no model): refuse a mismatch before any forward pass.
    ids: dict[str, list[str]] = {}
    for run in runs if len(runs) > 1 else ():
        cfg, meta = run_config(run, reopen)
        crop = int(meta["backbone"]["crop_size"])
        for role, sd in build_splits(cfg, crop, roles=roles).items():
            sids = [s.sample_id for s in sd.index.samples]
            check_same_samples(ids.setdefault(role, sids), sids, runs[0], run, role)
    summed: dict[str, Predictions] = {}
    samples: dict[str, dict[str, Sample]] = {}
    for i, run in enumerate(runs):
        model, cfg, _ = load_run(run, reopen, device)
        splits = build_splits(cfg, model.backbone.crop_size, roles=roles)
        if not samples:
            samples = {role: {s.sample_id: s for s in splits[role].index.samples} for role in roles}
        if seconds_of is not None:
            from ..data.seconds import seconds_split

            splits[SECONDS] = seconds_split(splits[seconds_of], cfg, model.backbone.crop_size)
        if video_frames is not None:
            video_frames.update({role: sd.index.video_frames for role, sd in splits.items()})
        embedded = temporal_embeddings(model, cfg, splits, tta, device, reopen)
        for role in splits:
            tag = f"{role}" + (f" [{i + 1}/{len(runs)}]" if len(runs) > 1 else "")
            p = (predict_split(model, cfg, splits[role], tta, device, reopen.batch(cfg), tag, reopen.progress)
                 if embedded is None else predict_temporal(model, splits[role], embedded, device))
            check_probabilities(p.probs, Path(run) / BEST_DIR)
            if role not in summed:
                summed[role] = p
                continue
            check_same_samples(summed[role].sample_ids, p.sample_ids, runs[0], run, role)
            summed[role].probs = summed[role].probs + p.probs
        del model
    for p in summed.values():
        p.probs = p.probs / len(runs)
    return summed, samples


def temporal_embeddings(model, cfg: RunConfig, splits: dict, tta: TTASettings, device, reopen: Reopen) -> dict | None:
    """A temporal run (evaluate/temporal.py): every second of the splits' videos embedded once; None
    for a clip model."""
    if not model.temporal:
        return None
    if not tta.is_plain:
        raise ConfigError("test-time augmentation averages views of one clip; a temporal run scores histories of "
                          "seconds: evaluate it without --tta")
    return embed_videos(model, cfg, splits, device, reopen.batch(cfg), reopen.progress)


def undefined_on_val(val: Predictions, names: tuple[str, ...]) -> list[str]:
    """Criteria whose val labels are all 0 or all 1: no threshold can be chosen, 0.5 is used."""
    return _undefined(val.labels, names)


def output_tag(tta: TTASettings, n_members: int, tag: str | None, other_data: str = "") -> str:
    """File-name suffix: empty for the plain setting, else e.g. ``tta3x2_ens3`` (or the user's tag),
    so TTA or ensemble results never overwrite the plain ones. ``other_data``: the
    :func:`~cvsjepa.rundir.data_tag` of a dataset the run was not trained on; it always leads."""
    if tag is not None:
        if tag and not re.fullmatch(r"[A-Za-z0-9_.-]+", tag):
            raise ConfigError(f"--tag {tag!r} must be letters, digits, '_', '-' or '.' (it becomes part of file names)")
        parts = [tag] if tag else []
    else:
        parts = ([] if tta.is_plain else [f"tta{tta.views}x{len(tta.offsets)}"]) + (
            [f"ens{n_members}"] if n_members > 1 else [])
    return "_".join(([other_data] if other_data else []) + parts)


def other_data_tag(trained_root: str, reopen: Reopen) -> str:
    """:func:`~cvsjepa.rundir.data_tag` when ``--data-root`` names another folder than the run's, else ""."""
    if not reopen.data_root or Path(reopen.data_root).resolve() == Path(trained_root).resolve():
        return ""
    return data_tag(reopen.data_root)


def evaluate_run(run_dir: str | Path, options: EvalOptions = EvalOptions(), reopen: Reopen = Reopen()) -> EvalResult:
    t0 = time.time()
    o = options
    split, tta, bootstrap, progress = o.split, o.tta, o.bootstrap, reopen.progress
    if split not in ROLES:
        raise ConfigError(f"--split must be one of {', '.join(ROLES)}, got {split!r}")
    if bootstrap < 0:
        raise ConfigError(f"--bootstrap must be >= 0 (0 = no confidence intervals), got {bootstrap}")
    check_decision_options(o)
    run = Path(run_dir)
    runs = [run] + [Path(r) for r in o.ensemble]
    if len(set(map(str, (r.resolve() for r in runs)))) < len(runs):
        raise ConfigError("an ensemble member is listed twice (RUN itself counts as the first member)")
    cfgs = [run_config(r, reopen) for r in runs]  # every run checked before any work
    cfg, meta = cfgs[0]
    other_data = other_data_tag(run_config(run)[0].data.root, reopen)
    for role in ("val", split):
        role_split(cfg, role)
    names = tuple(cfg.data.criteria)
    dev = reopen.torch_device()
    roles = ("val",) if split == "val" else ("val", split)

    frames: dict = {}
    preds, samples = predict_members(runs, roles, tta, reopen, dev, split if o.time_to_cvs == "seconds" else None,
                                     frames)
    seconds = preds.pop(SECONDS, None)
    val, ev = preds["val"], preds[split]
    if len(ev.sample_ids) == 0:
        raise ConfigError(f"the {split} split has no keyframe to evaluate")
    # Everything decided from here on sees val labels only: calibration, thresholds, every policy.
    calibration = Temperature.fit_val(val.probs, val.labels, names, cfg.data.val_split)
    doc = build_document(val.probs, val.labels, val.video_ids, names, cfg.data.val_split, calibration,
                         targets=dict(o.targets))
    thresholds = doc["thresholds"]
    log.info("thresholds chosen on val (%d keyframes): %s; temperatures %s", len(val.sample_ids),
             ", ".join(f"{n} {t:.3f}" for n, t in zip(names, thresholds)),
             ", ".join(f"{n} {t:.3g}" for n, t in zip(names, calibration.temperature)))
    report = build_report(ev, val, thresholds, names, o.per_video, bootstrap, o.seed, progress, split)
    report["challenge"] = challenge_report(ev, samples[split], names, o.seed)
    report.update(decision_report(doc, calibration, ev, seconds, frames[split], names, o.policy, o.consecutive,
                                  o.time_to_cvs, bootstrap, o.seed))
    if split == "val":
        report["time_to_cvs"]["note"] = "evaluated on val, where the thresholds were chosen: optimistic"
    report = {
        "run": str(run), "split": split, "split_name": role_split(cfg, split), "data_root": cfg.data.root,
        "checkpoint": {"path": str(run / BEST_DIR), "epoch": meta.get("epoch"),
                       "val_map_at_training": meta.get("val_map")},
        "backbone": (meta.get("backbone") or {}).get("name"),
        **report,
        "thresholds": {"values": thresholds, "chosen_on": "val", "val_split": cfg.data.val_split,
                       "rule": THRESHOLD_RULE, "undefined_on_val": undefined_on_val(val, names),
                       "note": ("the evaluated split is val itself: the thresholds were chosen on these labels, so "
                                "balanced accuracy and F1 are optimistic") if split == "val" else
                               f"chosen on val, applied unchanged to {split}"},
        "tta": tta.describe(),
        "ensemble": {"runs": [str(r) for r in runs], "average": "mean of the members' probabilities"}
        if len(runs) > 1 else None,
        "cvsjepa_version": __version__,
    }
    suffix = output_tag(tta, len(runs), o.tag, other_data)
    files = write_outputs(run, split, suffix, report, preds, doc, calibration, names)
    report["seconds"] = round(time.time() - t0, 1)
    atomic_write_json(files["json"], json_safe(report))
    if not suffix:  # the run's own thresholds (and test metrics) changed: the model card shows them
        refresh_card(run)
    return EvalResult(run, split, files, report)


def build_report(ev: Predictions, val: Predictions, thresholds: list[float], names: tuple[str, ...],
                 per_video: bool, n_boot: int, seed: int, progress: bool, split: str = "") -> dict:
    """Metrics, bootstrap CIs, per-video aggregation and the figure data of one evaluated split."""
    metrics = point_metrics(ev.probs, ev.labels, thresholds, names, where=split)
    pv_rows = per_video_ap(ev.probs, ev.labels, ev.video_ids, names) if per_video else None
    if pv_rows is not None:
        metrics["per_video_map"] = per_video_summary(pv_rows, names)["map"]
    ci, boot = {}, None
    if n_boot > 0:
        stat = bootstrap_statistic(ev.probs, ev.labels, ev.video_ids, thresholds, pv_rows, names)
        res = bootstrap_ci(stat, ev.video_ids, n_boot, seed, progress=progress)
        ci = {k: v["ci"] for k, v in res.items()}
        boot = {"unit": "video", "resamples": n_boot, "seed": seed, "method": "percentile", "level": 0.95,
                "undefined_resamples": {k: v["undefined"] for k, v in res.items() if v["undefined"]},
                "note": "each resample draws the split's videos with replacement and keeps all their keyframes"}
    score, full = full_cvs(ev.probs, ev.labels)
    prev = prevalence(ev.labels)
    curves = {n: {**pr_curve(ev.probs[:, c], ev.labels[:, c]), "ap": metrics[f"ap_{n}"], "prevalence": prev[c],
                  "n_pos": int(ev.labels[:, c].round().sum())} for c, n in enumerate(names)}
    curves["full CVS"] = {**pr_curve(score, full), "ap": metrics["full_cvs_ap"], "prevalence": float(full.mean()),
                          "n_pos": int(full.sum())}
    bins = {n: reliability_bins(ev.probs[:, c], ev.labels[:, c], ECE_BINS) for c, n in enumerate(names)}
    val_pred = val.probs >= torch.tensor(thresholds)
    return {
        "n_samples": len(ev.sample_ids), "n_videos": len(set(ev.video_ids)),
        "n_val_samples": len(val.sample_ids), "n_val_videos": len(set(val.video_ids)),
        "criteria": list(names),
        "prevalence": {n: p for n, p in zip(names, prev)},
        "metrics": metrics,
        "ci95": ci,
        "bootstrap": boot,
        "full_cvs": {"score": FULL_CVS_SCORE, "label": FULL_CVS_LABEL, "n_pos": int(full.sum())},
        "ece": {"bins": ECE_BINS, "binning": "equal width on [0, 1]; per criterion on its own probability"},
        "val_balanced_accuracy_at_thresholds": [balanced_accuracy(val_pred[:, c], val.labels[:, c])
                                                for c in range(len(names))],
        "per_video": ({**per_video_summary(pv_rows, names), "videos": pv_rows} if pv_rows is not None else None),
        "figures": {"pr_curves": curves, "reliability": {n: b.as_dict() for n, b in bins.items()}},
    }


def challenge_report(ev: Predictions, samples: dict[str, Sample], names: tuple[str, ...], seed: int) -> dict | None:
    """The SAGES challenge's tasks A-C (:mod:`.challenge`) when the samples carry confidence-aware
    labels (a SAGES dataset); None otherwise."""
    rows = [samples[i] for i in ev.sample_ids]
    if not rows or any(s.conf_label is None for s in rows):
        return None
    return {"dataset": "SAGES CVS Challenge 2024",
            **challenge_metrics(ev.probs.numpy(), ev.labels.numpy(), ev.rater_means.numpy(),
                                [s.conf_label for s in rows], [sum(s.rater_confidence) / 3 for s in rows],
                                ev.video_ids, names, seed=seed)}


def write_outputs(run: Path, split: str, suffix: str, report: dict, preds: dict[str, Predictions],
                  doc: dict, calibration: Temperature, names: tuple[str, ...]) -> dict:
    files = {"json": run / eval_file(split, suffix), "thresholds": run / thresholds_file(suffix),
             "calibration": run / calibration_file(suffix),
             "pr_curves": run / pr_curves_file(split, suffix), "reliability": run / reliability_file(split, suffix)}
    for role, p in preds.items():
        files[f"predictions_{role}"] = RunDir(run).write_predictions(role, p, names, tag=suffix)
    atomic_write_json(files["thresholds"], json_safe({
        **doc, "val_balanced_accuracy": report["val_balanced_accuracy_at_thresholds"],
        "tta": report["tta"], "ensemble": report["ensemble"], "written_by": f"cvsjepa evaluate {__version__}",
        "note": "predictions are positive when prob >= threshold; use them with the same TTA/ensemble settings"}))
    atomic_write_json(files["calibration"], json_safe({**calibration.to_dict(), "tta": report["tta"],
                                                       "ensemble": report["ensemble"]}))
    title = (f"{run.name} - {split} ({report['n_samples']} keyframes, {report['n_videos']} videos)"
             + (f" [{suffix}]" if suffix else ""))
    plot_pr_curves(files["pr_curves"], report["figures"]["pr_curves"], f"Precision-recall, {title}")
    ev = preds[split]
    bins = {n: reliability_bins(ev.probs[:, c], ev.labels[:, c], ECE_BINS) for c, n in enumerate(names)}
    cal = calibration.apply(ev.probs.double())
    after = {n: reliability_bins(cal[:, c], ev.labels[:, c], ECE_BINS) for c, n in enumerate(names)}
    temps = ", ".join(f"{n} {t:.2f}" for n, t in zip(names, calibration.temperature))
    plot_reliability(files["reliability"], bins, {n: report["metrics"][f"ece_{n}"] for n in names},
                     f"Reliability ({ECE_BINS} bins), {title}", after,
                     {n: report["calibration"]["after"][f"ece_{n}"] for n in names},
                     f"calibrated on val (T = {temps})")
    report["files"] = {k: str(v) for k, v in files.items()}
    return files


def check_decision_options(o: EvalOptions) -> None:
    """One clear line for a bad policy, target, time-to-CVS method or consecutive value."""
    if o.policy not in POLICIES:
        raise ConfigError(f"--policy must be one of {', '.join(POLICIES)}, got {o.policy!r}")
    if o.time_to_cvs not in TIME_TO_CVS_METHODS:
        raise ConfigError(f"--time-to-cvs must be one of {', '.join(TIME_TO_CVS_METHODS)}, got {o.time_to_cvs!r}")
    if not o.consecutive > 0:
        raise ConfigError(f"--consecutive must be > 0 seconds, got {o.consecutive}")
    for policy, target in o.targets:
        if policy not in POLICIES or policy == "balanced":
            raise ConfigError(f"--target {policy}=...: only {', '.join(p for p in POLICIES if p != 'balanced')} "
                              f"take a target")
        if not 0.0 < target < 1.0:
            raise ConfigError(f"--target {policy}={target}: a target must lie strictly between 0 and 1")
