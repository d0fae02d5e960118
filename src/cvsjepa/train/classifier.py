"""`cvsjepa train`: one classifier (backbone adaptation + head [+ segmentation decoder]) through the
training loop, stage by stage, into a run directory.

    build the model; data from JPEG clips or a feature store; claim the run directory (or resume it)
    stage 1 (train.*), then stage 2 (stage2.*, exp9) from stage 1's best weights with the backbone opened
    reload the best checkpoint; score val and test; predictions, curve, summary.json (finish.py)
"""

from __future__ import annotations

import logging
import shutil
import time
from dataclasses import dataclass

import torch

from .. import distributed
from ..adapt import apply_adaptation, params_breakdown
from ..checkpoint import load_weights_strict, read_checkpoint_meta, restore_weights, save_classifier
from ..config import RunConfig
from ..data.masks import seg_class_names
from ..errors import ConfigError
from ..evaluate.inference import predict_dataset
from ..evaluate.segmentation import ConfusionMatrix, constant_prediction_miou
from ..heads.segmentation import masked_seg_loss
from ..model import CVSClassifier, count_params
from ..rundir import STAGE1_BEST_DIR, RunDir
from ..tracking import history_of, tracking
from .build import (StagePlan, build_model, classifier_param_groups, load_data, open_run, prepare, run_log, split_labels,
                    stage_plans, with_loaded_backbone)
from .finish import finish
from .loop import Fit, fit_stage
from .members import Member

log = logging.getLogger("cvsjepa")


@dataclass
class RunResult:
    run_dir: RunDir
    summary: dict


class ClassifierTrainee:
    """The loop's view of one classifier: a single member owning every trainable parameter."""

    def __init__(self, cfg: RunConfig, model: CVSClassifier, run: RunDir, device: torch.device):
        self.cfg, self.model, self.run, self.device = cfg, model, run, device
        self.members = [Member(0, "", cfg.train.lr, cfg.train.weight_decay)]
        self.ddp = model
        self._seg_warned = False  # val mIoU undefined: said once, not every epoch

    def begin_stage(self, plan: StagePlan) -> list[dict]:
        self.ddp = _wrap_ddp(self.model, self.cfg, self.device)
        groups = classifier_param_groups(self.model, self.cfg, plan.head_lr, plan.backbone_lr)
        return [{**g, "member": 0} for g in groups]

    def clip_params(self, member: Member) -> list[torch.nn.Parameter]:
        return [p for p in self.model.parameters() if p.requires_grad]

    def train_mode(self) -> None:
        self.ddp.train()

    def forward(self, batch: dict) -> list[tuple[torch.Tensor, torch.Tensor | None]]:
        logits, seg_logits = self.ddp(batch, multitask=True)  # through forward() so DDP sees it
        extra = None
        if seg_logits is not None:  # multi-task: only samples with a mask count (exp8 weight 0.5)
            extra = self.cfg.seg.weight * masked_seg_loss(seg_logits.float(), batch["mask"], batch["has_mask"])
        return [(logits, extra)]

    def score(self, split, batch_size: int, loss_fn, desc: str):
        cm = ConfusionMatrix(len(self.cfg.seg.classes)) if self.model.seg_head is not None else None
        preds = predict_dataset(self.model, split.dataset, batch_size, self.cfg.data.num_workers, self.device,
                                loss_fn, desc=desc, progress=False, seg_confusion=cm)
        extra = {}
        if cm is not None:
            extra = {"val_miou": cm.miou(), "val_miou_constant": constant_prediction_miou(cm),
                     **{f"val_iou_{n}": v for n, v in zip(seg_class_names(self.cfg), cm.iou())}}
            if cm.undefined_reason() and not self._seg_warned:
                log.warning("%s: val mIoU is NaN: %s", desc, cm.undefined_reason())
                self._seg_warned = True
        return [(preds, extra)]

    def on_improved(self, member: Member, epoch: int, stage: int, score: float) -> None:
        member.snapshot(self.model.trainable_state_dict())
        if distributed.is_main():
            save_classifier(self.run.best_dir, self.model, self.cfg,
                            extra={"epoch": epoch, "stage": stage, "val_map": score})

    def end_epoch(self, epoch: int, plan: StagePlan) -> None:
        m = self.members[0]
        row = m.progress.rows[-1]
        if distributed.is_main():
            self.run.write_metrics(m.progress.rows)
        log.info("epoch %d (stage %d): train loss %.4f mAP %.4f | val loss %.4f mAP %.4f AP %s%s", epoch, plan.stage,
                 row["train_loss"], row["train_map"], row["val_loss"], row["val_map"],
                 [round(row[k], 4) for k in row if k.startswith("val_ap_")],
                 "  *best*" if m.progress.best_epoch == epoch else "")

    def weights(self) -> dict[str, torch.Tensor]:
        return self.model.trainable_state_dict()

    def restore(self, state: dict) -> None:
        """Weights, member progress and best weights from a resume state; the best checkpoint on disk
        is rewritten from it when a crash left it out of step (saved for an epoch the state never recorded)."""
        if state["stage"] == 2:  # the weights were saved in stage 2's structure
            apply_adaptation(self.model.backbone, self.cfg.adapt, mode=self.cfg.stage2.mode,
                             unfreeze_last=self.cfg.stage2.unfreeze_last)
            self.model.to(self.device)
        load_weights_strict(self.model, state["weights"], self.run.path / "resume state")
        self.members[0].load_record(state["members"][0])
        m, best = self.members[0], state["best"].get("0")
        m.best_state = best
        on_disk = read_checkpoint_meta(self.run.best_dir) if self.run.has_best() else {}
        if best is not None and (on_disk.get("epoch"), on_disk.get("stage")) != (m.progress.best_epoch,
                                                                                  m.progress.best_stage):
            log.warning("%s holds epoch %s, but the last complete save recorded epoch %s as the best: rewriting it "
                        "from the resume state", self.run.best_dir, on_disk.get("epoch"), m.progress.best_epoch)
            current = {k: v.clone() for k, v in self.model.trainable_state_dict().items()}
            load_weights_strict(self.model, best, self.run.path / "resume state (best)")
            if distributed.is_main():
                save_classifier(self.run.best_dir, self.model, self.cfg, extra={
                    "epoch": m.progress.best_epoch, "stage": m.progress.best_stage, "val_map": m.progress.best_map})
            load_weights_strict(self.model, current, self.run.path / "resume state")


def _wrap_ddp(model: CVSClassifier, cfg: RunConfig, device: torch.device):
    """DDP around the classifier when several processes train; adapters and partially unfrozen
    backbones may leave parameters without a gradient in a step, hence find_unused_parameters."""
    if distributed.world()[1] == 1:
        return model
    from torch.nn.parallel import DistributedDataParallel as DDP

    return DDP(model, device_ids=[device.index] if device.type == "cuda" else None,
               find_unused_parameters=cfg.adapt.mode != "frozen" or cfg.seg.enabled)


def train(cfg: RunConfig, progress: bool = True) -> RunResult:
    t0 = time.time()
    device = prepare(cfg)
    model = build_model(cfg, device)
    cfg = with_loaded_backbone(cfg, model.backbone)
    splits = load_data(cfg, model.backbone.crop_size, backbone=model.backbone)
    if "train" not in splits or "val" not in splits:
        raise ConfigError("training needs data.train_split and data.val_split")
    run, resume = open_run(cfg, splits)
    if run.is_finished():
        log.info("%s already finished; nothing to resume", run)
        return RunResult(run, run.read_summary())
    failed = True
    try:
        done = resume["epoch"] if resume else 0
        with run_log(run, cfg), tracking(cfg, run.path, done, distributed.is_main()) as tracker:
            result = _fit(cfg, model, splits, run, device, t0, progress and distributed.is_main(), resume, tracker)
        failed = False
        return result
    finally:
        distributed.teardown(failed)


def _fit(cfg, model, splits, run: RunDir, device, t0, progress, resume: dict | None, tracker) -> RunResult:
    trainable, total = count_params(model)
    log.info("run directory: %s", run)
    log.info("backbone: %s (%s) | head: %s | trainable %s / total %s params %s", model.backbone.name,
             cfg.adapt.mode, cfg.head.type, f"{trainable:,}", f"{total:,}", params_breakdown(model))
    for role, sd in splits.items():
        log.info("%s: %d keyframe clips from %d videos, positive rate %s", role, len(sd.index.samples),
                 len(sd.index.video_frames), [round(float(p), 3) for p in split_labels(sd).mean(0)])
    fit = Fit(cfg, run, device, splits, progress, tracker=tracker)
    trainee = ClassifierTrainee(cfg, model, run, device)
    if resume:
        trainee.restore(resume)
        tracker.log_history(history_of(trainee.members))
        fit.epoch = resume["epoch"]
        log.info("resuming %s after epoch %d (stage %d)", run, resume["epoch"], resume["stage"])
    for plan in stage_plans(cfg):
        if resume and (plan.stage < resume["stage"] or (plan.stage == resume["stage"] and resume["stage_done"])):
            continue  # finished before the interruption
        if plan.stage == 2 and not (resume and resume["stage"] == 2):
            _enter_stage2(cfg, trainee)
        run_stage(fit, plan, trainee, resume if resume and resume["stage"] == plan.stage else None)
        resume = None
    best = trainee.members[0]
    distributed.barrier()
    if best.progress.best_epoch is not None:
        restore_weights(model, run.best_dir)
    summary = finish(fit, model, best, t0)
    log.info("best val mAP %.4f (stage %s, epoch %s); run directory %s", best.progress.best_map,
             best.progress.best_stage, best.progress.best_epoch, run)
    return RunResult(run, summary)


def run_stage(fit: Fit, plan: StagePlan, trainee: ClassifierTrainee, resume: dict | None) -> None:
    """One stage of the classifier (a seam for tests that look at the model between stages)."""
    fit_stage(fit, plan, trainee, resume)


def _enter_stage2(cfg: RunConfig, trainee: ClassifierTrainee) -> None:
    """Stage 2 starts from stage 1's best weights, then opens the backbone (exp9)."""
    model, run, m = trainee.model, trainee.run, trainee.members[0]
    distributed.barrier()
    restore_weights(model, run.best_dir)
    apply_adaptation(model.backbone, cfg.adapt, mode=cfg.stage2.mode, unfreeze_last=cfg.stage2.unfreeze_last)
    model.to(next(model.head.parameters()).device)
    if distributed.is_main():
        shutil.copytree(run.best_dir, run / STAGE1_BEST_DIR, dirs_exist_ok=True)
        # re-save stage 1's best in stage 2's structure, so `best` always loads into the final model
        save_classifier(run.best_dir, model, cfg, extra={"epoch": m.progress.best_epoch, "stage": 1,
                                                          "val_map": m.progress.best_map})
    m.snapshot(model.trainable_state_dict())
    log.info("stage 2: %s (last %d block(s)), backbone lr %.1e, head lr %.1e, from stage 1's best (epoch %s)",
             cfg.stage2.mode, cfg.stage2.unfreeze_last, cfg.stage2.backbone_lr, cfg.stage2.lr, m.progress.best_epoch)
