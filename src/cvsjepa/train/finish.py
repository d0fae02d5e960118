"""The end of every run (`train` and `sweep` alike): score the best weights on val and test, write
the predictions, the training curve and ``summary.json`` (written last: it marks the run finished);
then the final metrics and the curve go to the experiment trackers and the model card is written."""

from __future__ import annotations

import logging
import time

from .. import distributed
from ..adapt import has_lora, params_breakdown
from ..data.masks import seg_class_names
from ..data.oracle import read_oracle
from ..evaluate.inference import predict_dataset
from ..evaluate.metrics import prevalence
from ..evaluate.segmentation import ConfusionMatrix, seg_report
from ..model import CVSClassifier, count_params
from ..plots import plot_training_curve
from ..card import refresh_card
from ..rundir import CURVE_FILE, run_environment
from .loop import Fit
from .members import Member

log = logging.getLogger("cvsjepa")


def finish(fit: Fit, model: CVSClassifier, best: Member, t0: float, extra: dict | None = None,
           title: str = "") -> dict:
    """``model`` already holds the best weights of ``best``. Returns (and, on rank 0, writes) the summary."""
    cfg, run = fit.cfg, fit.run
    trainable, total = count_params(model)
    p = best.progress
    summary = {
        "name": cfg.name, "best_epoch": p.best_epoch, "best_stage": p.best_stage, "epochs_run": len(p.rows),
        "backbone": model.backbone.name, "backbone_preset": model.backbone.preset,
        "backbone_path": model.backbone.path, "backbone_random_weights": model.backbone.is_random,
        "adapt": cfg.adapt.mode, "trainable_params": trainable, "total_params": total,
        "trainable_breakdown": params_breakdown(model), "lora_adapter": has_lora(model.backbone),
        "features_store": cfg.features.store or None, "nonfinite_batches_skipped": best.skipped,
        **run_environment(), "world_size": distributed.world()[1],
    }
    if len(p.stage_best) > 1:
        summary["stage_best_val_map"] = {str(k): v for k, v in p.stage_best.items()}
    oracle = read_oracle(cfg.data.root)
    for role in ("val", "test"):
        if role not in fit.splits or (role == "test" and not cfg.train.eval_test):
            continue
        split = fit.splits[role]
        cm = ConfusionMatrix(len(cfg.seg.classes)) if model.seg_head is not None else None
        preds = predict_dataset(model, split.dataset, cfg.train.batch_size, cfg.data.num_workers, fit.device,
                                desc=role, progress=fit.progress, seg_confusion=cm)
        if cm is not None:
            summary[f"{role}_seg"] = seg_report(cm, seg_class_names(cfg), role)
        ap = preds.ap(role)
        summary[f"{role}_map"], summary[f"{role}_ap"] = ap.map, list(ap.ap)
        summary[f"{role}_prevalence"] = prevalence(preds.labels)
        if oracle and split.index.split in oracle:
            summary[f"{role}_oracle_map"] = oracle[split.index.split]["map"]
        if distributed.is_main():
            run.write_predictions(role, preds, tuple(cfg.data.criteria))
    summary["best_val_map"] = summary.get("val_map")
    best_row = next((r for r in p.rows if r["epoch"] == p.best_epoch), None)
    summary["train_val_gap_at_best"] = (best_row["train_map"] - best_row["val_map"]) if best_row else None
    summary.update(extra or {})
    summary["budget"] = {str(k): v for k, v in fit.budgets.items()}  # per stage, in optimizer steps
    summary["timing"] = {k: round(v, 3) for k, v in fit.timing.items()}
    summary["seconds"] = round(time.time() - t0, 1)
    if distributed.is_main():
        if p.rows:
            plot_training_curve(run / CURVE_FILE, p.rows, p.best_epoch, title or f"{cfg.name} - {model.backbone.name}",
                                tuple(cfg.data.criteria))
        run.write_summary(summary)
        fit.tracker.log_summary(final_metrics(summary, tuple(cfg.data.criteria)))
        if (run / CURVE_FILE).is_file():
            fit.tracker.log_figure(run / CURVE_FILE)
        refresh_card(run)
    return summary


def final_metrics(summary: dict, names: tuple[str, ...]) -> dict:
    """What the trackers get at the end: best epoch and val mAP, val/test mAP and per-criterion AP
    (``test_ap_C1``...), the oracle mAP of synthetic data, the run's seconds."""
    out = {k: summary.get(k) for k in ("best_epoch", "best_val_map", "val_map", "test_map", "val_oracle_map",
                                       "test_oracle_map", "trainable_params", "seconds")}
    for role in ("val", "test"):
        out.update({f"{role}_ap_{n}": ap for n, ap in zip(names, summary.get(f"{role}_ap") or [])})
    return out

