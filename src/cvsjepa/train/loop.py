"""The training loop: one readable function from a config to a finished run directory.

    build: backbone (frozen / last-N unfrozen / LoRA) + head; data from JPEG clips or a feature store
    for each stage (1, then 2 if stage2.enabled, starting from stage 1's best):
        for each epoch:
            train: [MixUp/CutMix] -> loss / grad_accum -> backward; every grad_accum: clip, step, LR step
            validate: AP per criterion on val, mAP (nanmean)
            log a metrics.csv row; keep the best checkpoint by val mAP; write the resume state
            stop when val mAP has not improved for `patience` epochs
    reload the best checkpoint, score val and test, write predictions, summary.json, the curve

Checkpoints are chosen on val only; the test split is scored once, at the end, on the best model.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import random
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from .. import __version__
from ..adapt import apply_adaptation, backbone_param_groups, has_lora, params_breakdown
from ..backbones import build_backbone
from ..checkpoint import load_weights_strict, restore_weights, save_classifier
from ..config import RunConfig
from ..errors import ConfigError
from ..data.dataset import collate_skip_none
from ..evaluate.inference import Predictions, move_batch, predict_loader
from ..evaluate.metrics import cvs_average_precision, prevalence
from ..heads import build_head
from ..io import atomic_save_safetensors, atomic_torch_save, atomic_write_json, load_safetensors, safe_torch_load
from ..evaluate.segmentation import ConfusionMatrix, constant_prediction_miou
from ..heads.segmentation import masked_seg_loss
from ..model import CVSClassifier, build_seg_head, count_params
from .losses import build_loss
from .mixing import mix_batch
from .rundir import create_run_dir, open_run_dir_for_resume, plot_training_curve, write_metrics, write_predictions
from . import distributed
from .sampling import balanced_weights
from .schedule import warmup_cosine

log = logging.getLogger("cvsjepa")
CRITERIA = ("C1", "C2", "C3")


@dataclass
class TrainResult:
    run_dir: Path
    summary: dict


@dataclass
class StagePlan:
    """What differs between stage 1 and stage 2 of a run."""
    stage: int
    epochs: int
    patience: int
    batch_size: int
    grad_accum: int
    head_lr: float
    backbone_lr: float
    warmup_epochs: float


@dataclass
class Progress:
    """Best-so-far and early-stopping state, carried from epoch to epoch and stage to stage."""
    rows: list[dict] = field(default_factory=list)
    best_map: float = -math.inf
    best_epoch: int | None = None
    best_stage: int | None = None
    bad_epochs: int = 0
    stage_best: dict[int, float] = field(default_factory=dict)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"train.device={name} but CUDA is not available on this machine; use train.device=cpu")
    return torch.device(name)


def build_model(cfg: RunConfig, device: torch.device | str = "cpu", allow_random: bool = False) -> CVSClassifier:
    """Backbone (with the configured adaptation) + head. ``allow_random`` lets a dry run count the
    parameters of a preset without its weights."""
    bcfg = cfg.backbone
    if allow_random and not bcfg.path and bcfg.preset != "tiny":
        bcfg = type(bcfg)(**{**bcfg.__dict__, "random_weights": True})
    backbone = build_backbone(bcfg, device=device).freeze()
    if cfg.data.frames % backbone.tubelet_size:
        raise ConfigError(f"data.frames={cfg.data.frames} must be a multiple of the backbone's tubelet size "
                          f"({backbone.tubelet_size})")
    fingerprint = backbone.weights_fingerprint()  # of the weights as loaded, before any adapter
    apply_adaptation(backbone, cfg.adapt)
    head = build_head(cfg.head, backbone.embed_dim)
    return CVSClassifier(backbone, head, base_fingerprint=fingerprint, seg_head=build_seg_head(cfg, backbone)).to(device)


def dry_run(cfg: RunConfig) -> dict:
    """Build the model without data or training: parameter accounting for `train --dry-run`."""
    model = build_model(cfg, "cpu", allow_random=True)
    trainable, total = count_params(model)
    return {"name": cfg.name, "backbone": model.backbone.name, "adapt": cfg.adapt.mode,
            "trainable_params": trainable, "total_params": total,
            "trainable_breakdown": params_breakdown(model),
            "trainable_fraction": round(trainable / total, 5)}


def build_optimizer(model: CVSClassifier, cfg: RunConfig, head_lr: float | None = None,
                    backbone_lr: float | None = None) -> torch.optim.AdamW:
    """AdamW, one group per part so each carries its own LR: the head, and (when it trains) the
    backbone, one group per block for layer-wise LR decay. Biases and norms get no weight decay."""
    head_lr = cfg.train.lr if head_lr is None else head_lr
    backbone_lr = cfg.adapt.lr if backbone_lr is None else backbone_lr
    wd = cfg.train.weight_decay
    heads = [model.head] + ([model.seg_head] if model.seg_head is not None else [])
    head = [p for h in heads for p in h.parameters() if p.requires_grad]
    groups = [{"params": [p for p in head if p.ndim > 1], "lr": head_lr, "weight_decay": wd, "name": "head"},
              {"params": [p for p in head if p.ndim <= 1], "lr": head_lr, "weight_decay": 0.0,
               "name": "head.no_decay"}]
    if model.backbone is not None and not model.backbone_frozen:
        groups += backbone_param_groups(model.backbone, backbone_lr, cfg.adapt.llrd, wd)
    groups = [g for g in groups if g["params"]]
    for g in groups:
        g["base_lr"] = g["lr"]
    return torch.optim.AdamW(groups)


class NonFiniteGuard:
    """A NaN/inf loss stops the run, naming the step, the samples and the last good checkpoint, or
    (``train.on_nonfinite=skip``) drops that batch's gradients and counts it. Never trains on."""

    def __init__(self, policy: str, last_good: Path):
        self.policy, self.last_good, self.skipped = policy, last_good, 0

    def check(self, loss: torch.Tensor, epoch: int, step: int, batch: dict) -> bool:
        """True if the batch can be used."""
        if torch.isfinite(loss):
            return True
        ids = list(batch["sample_id"])
        if self.policy == "skip":
            self.skipped += 1
            log.warning("non-finite loss (%s) at epoch %d step %d: batch skipped (samples %s); %d skipped so far",
                        loss.item(), epoch, step, ids[:8], self.skipped)
            return False
        good = self.last_good if (self.last_good / "model.safetensors").is_file() else "none yet"
        raise FloatingPointError(f"non-finite loss ({loss.item()}) at epoch {epoch}, step {step}, samples "
                                 f"{ids[:8]}{' ...' if len(ids) > 8 else ''}; last good checkpoint: {good}. "
                                 f"Lower the learning rate, or set train.on_nonfinite=skip")


_FAULT_KILL_AFTER = int(os.environ.get("CVSJEPA_FAULT_KILL_AFTER_STEPS", "0"))  # test hook: SIGKILL self
_steps_taken = 0


def _fault_hook() -> None:
    global _steps_taken
    _steps_taken += 1
    if _FAULT_KILL_AFTER and _steps_taken >= _FAULT_KILL_AFTER:
        os.kill(os.getpid(), signal.SIGKILL)


def train_one_epoch(model, loader, loss_fn, optimizer, scheduler, device, cfg: RunConfig, grad_accum: int,
                    epoch: int, mix_gen: torch.Generator, progress: bool,
                    guard: NonFiniteGuard | None = None) -> tuple[float, float]:
    """Returns (mean train loss, train mAP over the epoch's own predictions)."""
    model.train()
    guard = guard or NonFiniteGuard("error", Path("<none>"))
    loss_sum, n, probs, labels, micro = 0.0, 0, [], [], 0
    optimizer.zero_grad(set_to_none=True)
    bar = tqdm(loader, desc=f"epoch {epoch}", leave=False, disable=not progress, unit="batch")
    for batch in bar:
        if batch is None:  # every sample of the batch was skipped (on_bad_sample=skip)
            continue
        batch = move_batch(batch, device)
        batch = mix_batch(batch, cfg.train.mixup_alpha, cfg.train.cutmix_alpha, cfg.train.mix_prob, mix_gen)
        step_now = (micro + 1) % grad_accum == 0
        with distributed.no_sync(model, sync=step_now), \
                torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            logits, seg_logits = model(batch, multitask=True)
            loss = loss_fn(logits, batch["target"])
            if seg_logits is not None:  # multi-task: only samples with a mask count (exp8 weight 0.5)
                loss = loss + cfg.seg.weight * masked_seg_loss(seg_logits.float(), batch["mask"], batch["has_mask"])
            if not guard.check(loss, epoch, micro + 1, batch):
                continue
            (loss / grad_accum).backward()
        micro += 1
        if micro % grad_accum == 0:
            _optimizer_step(model, optimizer, scheduler, cfg.train.grad_clip)
            _fault_hook()
        loss_sum += loss.item() * len(logits)
        n += len(logits)
        probs.append(torch.sigmoid(logits.detach()).cpu())
        labels.append(batch["label"].cpu())
        bar.set_postfix(loss=f"{loss_sum / n:.4f}", lr=f"{optimizer.param_groups[0]['lr']:.2e}")
    if micro % grad_accum != 0:  # a partial accumulation at the end of the epoch still counts
        _optimizer_step(model, optimizer, scheduler, cfg.train.grad_clip)
    if n == 0:
        raise RuntimeError("the training loader produced no sample (every batch skipped?)")
    mean_loss, _ = distributed.all_reduce_mean(loss_sum / n, n)
    parts = distributed.gather_objects((torch.cat(probs), torch.cat(labels)))  # train mAP over all ranks
    return mean_loss, cvs_average_precision(torch.cat([p for p, _ in parts]), torch.cat([y for _, y in parts])).map


def _optimizer_step(model, optimizer, scheduler, grad_clip: float) -> None:
    if grad_clip > 0:
        torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], grad_clip)
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)


def load_data(cfg: RunConfig, crop: int, roles=("train", "val", "test"), backbone=None) -> dict:
    """JPEG clips, or stored tokens when ``features.store`` is set (same batch keys but ``tokens``).
    ``backbone``: the one already built, so the store's key is checked against it without a rebuild."""
    if cfg.features.store:
        from ..features.dataset import open_store_splits

        return open_store_splits(cfg, roles=roles, backbone=backbone)
    from ..data.loaders import build_splits

    return build_splits(cfg, crop=crop, roles=roles)


def train(cfg: RunConfig, progress: bool = True) -> TrainResult:
    t0 = time.time()
    if not cfg.data.root:
        raise ConfigError("data.root is not set: pass data.root=/path/to/endoscapes (or a `cvsjepa synth` folder)")
    seed_everything(cfg.seed)
    device = distributed.setup() or resolve_device(cfg.train.device)
    model = build_model(cfg, device)
    splits = load_data(cfg, model.backbone.crop_size, backbone=model.backbone)
    if "train" not in splits or "val" not in splits:
        raise ConfigError("training needs data.train_split and data.val_split")

    resume = None
    if cfg.resume:
        run_dir = open_run_dir_for_resume(cfg)
        if (run_dir / "summary.json").is_file():
            log.info("%s already finished; nothing to resume", run_dir)
            return TrainResult(run_dir, json.loads((run_dir / "summary.json").read_text()))
        resume = safe_torch_load(run_dir / "checkpoints" / "last_state.pt")
        if resume.get("stage") == 2:  # the weights were saved in stage 2's structure
            apply_adaptation(model.backbone, cfg.adapt, mode=cfg.stage2.mode, unfreeze_last=cfg.stage2.unfreeze_last)
            model.to(device)
        load_weights_strict(model, load_safetensors(run_dir / "checkpoints" / "last.safetensors"),
                            run_dir / "checkpoints" / "last.safetensors")
    else:
        run_dir = create_run_dir(cfg) if distributed.is_main() else None
        run_dir = Path(distributed.gather_objects(str(run_dir))[0])  # rank 0 named it
    file_log = logging.FileHandler(run_dir / "train.log") if distributed.is_main() else logging.NullHandler()
    file_log.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    log.addHandler(file_log)
    failed = True
    try:
        result = _fit(cfg, model, splits, run_dir, device, t0, progress and distributed.is_main(), resume)
        failed = False
        return result
    finally:
        log.removeHandler(file_log)
        file_log.close()
        distributed.teardown(failed)


def _stage_plans(cfg: RunConfig) -> list[StagePlan]:
    t, s2 = cfg.train, cfg.stage2
    plans = [StagePlan(1, t.epochs, t.patience, t.batch_size, t.grad_accum, t.lr, cfg.adapt.lr, t.warmup_epochs)]
    if s2.enabled:
        plans.append(StagePlan(2, s2.epochs, s2.patience, s2.batch_size, s2.grad_accum, s2.lr, s2.backbone_lr, 0.0))
    return plans


def _fit(cfg, model, splits, run_dir, device, t0, progress, resume: dict | None = None) -> TrainResult:
    trainable, total = count_params(model)
    log.info("run directory: %s", run_dir)
    log.info("backbone: %s (%s) | head: %s | trainable %s / total %s params %s", model.backbone.name,
             cfg.adapt.mode, cfg.head.type, f"{trainable:,}", f"{total:,}", params_breakdown(model))
    for role, sd in splits.items():
        log.info("%s: %d keyframe clips from %d videos, positive rate %s", role, len(sd.index.samples),
                 len(sd.index.video_frames), [round(p, 3) for p in _label_rates(sd)])
    state = Progress(**resume["progress"]) if resume else Progress()
    if resume:
        log.info("resuming %s after epoch %d (stage %d)", run_dir, resume["epoch"], resume["stage"])
    for plan in _stage_plans(cfg):
        if resume and (plan.stage < resume["stage"] or (plan.stage == resume["stage"] and resume["stage_done"])):
            continue  # finished before the interruption
        if plan.stage == 2 and not (resume and resume["stage"] == 2):
            _enter_stage2(cfg, model, run_dir, state)
        stage_resume = resume if resume and resume["stage"] == plan.stage else None
        _run_stage(cfg, plan, model, splits, run_dir, device, state, progress, stage_resume)
        resume = None

    summary = _finish(cfg, model, splits, run_dir, device, state, progress)
    summary["seconds"] = round(time.time() - t0, 1)
    summary["world_size"] = distributed.world()[1]
    if distributed.is_main():
        atomic_write_json(run_dir / "summary.json", summary)
    log.info("best val mAP %.4f (stage %s, epoch %s); run directory %s", state.best_map, state.best_stage,
             state.best_epoch, run_dir)
    return TrainResult(run_dir, summary)


def _enter_stage2(cfg: RunConfig, model: CVSClassifier, run_dir: Path, state: Progress) -> None:
    """Stage 2 starts from stage 1's best weights, then opens the backbone (exp9)."""
    best_dir = run_dir / "checkpoints" / "best"
    distributed.barrier()
    restore_weights(model, best_dir)
    apply_adaptation(model.backbone, cfg.adapt, mode=cfg.stage2.mode, unfreeze_last=cfg.stage2.unfreeze_last)
    model.to(next(model.head.parameters()).device)
    if distributed.is_main():
        shutil.copytree(best_dir, run_dir / "checkpoints" / "stage1_best", dirs_exist_ok=True)
        # re-save stage 1's best in stage 2's structure, so `best` always loads into the final model
        save_classifier(best_dir, model, cfg, extra={"epoch": state.best_epoch, "stage": 1, "val_map": state.best_map})
    state.bad_epochs = 0
    log.info("stage 2: %s (last %d block(s)), backbone lr %.1e, head lr %.1e, from stage 1's best (epoch %s)",
             cfg.stage2.mode, cfg.stage2.unfreeze_last, cfg.stage2.backbone_lr, cfg.stage2.lr, state.best_epoch)


def _run_stage(cfg, plan: StagePlan, model, splits, run_dir, device, state: Progress, progress,
               resume: dict | None = None) -> None:
    mix_gen = torch.Generator().manual_seed(cfg.seed + 7 + 1000 * distributed.world()[0])
    train_split = splits["train"]
    weights = balanced_weights(_labels(train_split)) if cfg.train.sampler == "balanced" else None
    sampler = distributed.GlobalBatchSampler(len(train_split.dataset), plan.batch_size,
                                             cfg.seed + 1000 * (plan.stage - 1), weights)
    train_loader = DataLoader(train_split.dataset, batch_sampler=sampler, num_workers=cfg.data.num_workers,
                              collate_fn=collate_skip_none)
    loss_fn = build_loss(cfg.loss).to(device)
    optimizer = build_optimizer(model, cfg, plan.head_lr, plan.backbone_lr)
    trained = _wrap_ddp(model, cfg, device)
    steps_per_epoch = math.ceil(len(train_loader) / plan.grad_accum)
    total_steps = steps_per_epoch * plan.epochs
    warmup_steps = round(plan.warmup_epochs * steps_per_epoch)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: warmup_cosine(s, total_steps, warmup_steps, cfg.train.min_lr_ratio))
    done = 0
    if resume:  # continue exactly where the interrupted process stopped
        optimizer.load_state_dict(resume["optimizer"])
        scheduler.load_state_dict(resume["scheduler"])
        if distributed.world()[1] == resume.get("world_size", 1):  # per-rank streams; else they restart
            mix_gen.set_state(resume["mix_rng"])
        torch.set_rng_state(resume["torch_rng"])
        done = resume["stage_epochs_done"]
    best_dir = run_dir / "checkpoints" / "best"
    state.stage_best.setdefault(plan.stage, -math.inf)
    guard = NonFiniteGuard(cfg.train.on_nonfinite, best_dir)
    for stage_epoch in range(done + 1, plan.epochs + 1):
        epoch = len(state.rows) + 1
        te = time.time()
        lrs = _group_lrs(optimizer)
        sampler.set_epoch(epoch)
        train_loss, train_map = train_one_epoch(trained, train_loader, loss_fn, optimizer, scheduler, device, cfg,
                                                plan.grad_accum, epoch, mix_gen, progress, guard)
        val, seg_cm = predict_split(model, splits["val"], cfg, device, plan.batch_size, loss_fn, "val", progress)
        val_ap = val.ap()
        state.rows.append({"epoch": epoch, "stage": plan.stage, "train_loss": train_loss, "train_map": train_map,
                           "val_loss": val.loss, "val_map": val_ap.map, "seconds": time.time() - te, **lrs,
                           **{f"val_ap_{c}": a for c, a in zip(CRITERIA, val_ap.ap)}, **_seg_columns(cfg, seg_cm)})
        if distributed.is_main():
            write_metrics(run_dir, state.rows)
        score = val_ap.map if not math.isnan(val_ap.map) else -math.inf
        state.stage_best[plan.stage] = max(state.stage_best[plan.stage], score)
        improved = score > state.best_map
        if improved:
            state.best_map, state.best_epoch, state.best_stage, state.bad_epochs = score, epoch, plan.stage, 0
            if distributed.is_main():
                save_classifier(best_dir, model, cfg, extra={"epoch": epoch, "stage": plan.stage, "val_map": score})
        else:
            state.bad_epochs += 1
        stop = bool(plan.patience and state.bad_epochs >= plan.patience)
        if distributed.is_main():
            _save_last(run_dir, model, optimizer, scheduler, state, {
                "epoch": epoch, "stage": plan.stage, "stage_epochs_done": stage_epoch,
                "stage_done": stop or stage_epoch == plan.epochs, "world_size": distributed.world()[1],
                "mix_rng": mix_gen.get_state(), "torch_rng": torch.get_rng_state()})
        distributed.barrier()  # no rank runs ahead of the checkpoint it may need
        log.info("epoch %d (stage %d): train loss %.4f mAP %.4f | val loss %.4f mAP %.4f AP %s%s", epoch,
                 plan.stage, train_loss, train_map, val.loss, val_ap.map, [round(a, 4) for a in val_ap.ap],
                 "  *best*" if improved else "")
        if stop:
            log.info("early stop (stage %d): val mAP has not improved for %d epochs (best %.4f at epoch %s)",
                     plan.stage, state.bad_epochs, state.best_map, state.best_epoch)
            break


def _wrap_ddp(model: CVSClassifier, cfg: RunConfig, device: torch.device):
    """DDP around the classifier when several processes train; adapters and partially unfrozen
    backbones may leave parameters without a gradient in a step, hence find_unused_parameters."""
    if distributed.world()[1] == 1:
        return model
    from torch.nn.parallel import DistributedDataParallel as DDP

    return DDP(model, device_ids=[device.index] if device.type == "cuda" else None,
               find_unused_parameters=cfg.adapt.mode != "frozen" or cfg.seg.enabled)


def predict_split(model: CVSClassifier, split, cfg: RunConfig, device, batch_size: int, loss_fn=None,
                  desc: str = "eval", progress: bool = True) -> tuple[Predictions, ConfusionMatrix | None]:
    """Predictions for every sample of a split exactly once: each rank scores its strided shard (no
    padding), then the shards are gathered and put back in dataset order."""
    from torch.utils.data import Subset

    idx = distributed.shard(len(split.dataset))
    loader = DataLoader(Subset(split.dataset, idx), batch_size=batch_size, shuffle=False,
                        num_workers=cfg.data.num_workers, collate_fn=collate_skip_none)
    cm = ConfusionMatrix(len(cfg.seg.classes)) if model.seg_head is not None else None
    preds = predict_loader(model, loader, device, loss_fn, desc=desc, progress=progress, seg_confusion=cm)
    parts = distributed.gather_objects((preds, cm.m if cm is not None else None))
    if len(parts) > 1:
        preds = _merge_predictions([p for p, _ in parts])
        if cm is not None:
            cm.m = sum(m for _, m in parts)
    return preds, cm


def _merge_predictions(parts: list[Predictions]) -> Predictions:
    """Interleave strided shards back into dataset order (rank r held indices r, r + W, ...)."""
    w, n = len(parts), sum(len(p.sample_ids) for p in parts)
    order = [(i % w, i // w) for i in range(n)]
    pick = lambda attr: [getattr(parts[r], attr)[j] for r, j in order]  # noqa: E731
    stack = lambda attr: torch.stack(pick(attr)) if n else torch.zeros(0, 3)  # noqa: E731
    losses = [(p.loss, len(p.sample_ids)) for p in parts if len(p.sample_ids)]
    loss = sum(l * k for l, k in losses) / max(1, sum(k for _, k in losses))
    return Predictions(pick("sample_ids"), pick("video_ids"), pick("frames"), stack("labels"),
                       stack("rater_means"), stack("probs"), loss)


def seg_class_names(cfg: RunConfig) -> list[str]:
    from ..data.masks import DEFAULT_LABEL_MAP

    names = {v: k for k, v in DEFAULT_LABEL_MAP.items()}
    return [names.get(c, f"class{c}") for c in cfg.seg.classes]


def _seg_columns(cfg: RunConfig, cm: ConfusionMatrix | None) -> dict:
    if cm is None:
        return {}
    cols = {"val_miou": cm.miou(), "val_miou_constant": constant_prediction_miou(cm)}
    cols.update({f"val_iou_{n}": v for n, v in zip(seg_class_names(cfg), cm.iou())})
    return cols


def _group_lrs(optimizer) -> dict:
    lrs = {g["name"]: g["lr"] for g in optimizer.param_groups}
    backbone = [lr for name, lr in lrs.items() if name.startswith("backbone")]
    return {"lr_head": lrs.get("head"), "lr_backbone": max(backbone) if backbone else None}


def _labels(split) -> torch.Tensor:
    return torch.tensor([s.label for s in split.index.samples], dtype=torch.float32)


def _label_rates(split) -> list[float]:
    return prevalence(_labels(split))


def _save_last(run_dir, model, optimizer, scheduler, state: Progress, position: dict) -> None:
    """Everything a resumed process needs to continue as if never stopped. The weights go first; the
    state file, written last, is what marks the epoch complete."""
    ckpt = run_dir / "checkpoints"
    atomic_save_safetensors(ckpt / "last.safetensors", model.trainable_state_dict())
    atomic_torch_save(ckpt / "last_state.pt", {
        "version": 1, **position, "progress": dataclasses.asdict(state),
        "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
    })


def _git_hash() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                             cwd=Path(__file__).parent, timeout=5)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def _finish(cfg, model, splits, run_dir, device, state: Progress, progress) -> dict:
    """Reload the best weights, score val (and test), write predictions, the plot and the summary."""
    best_dir = run_dir / "checkpoints" / "best"
    distributed.barrier()
    if state.best_epoch is not None:
        restore_weights(model, best_dir)
    trainable, total = count_params(model)
    summary = {
        "name": cfg.name, "best_epoch": state.best_epoch, "best_stage": state.best_stage,
        "epochs_run": len(state.rows), "backbone": model.backbone.name,
        "backbone_random_weights": model.backbone.is_random, "adapt": cfg.adapt.mode,
        "trainable_params": trainable, "total_params": total, "trainable_breakdown": params_breakdown(model),
        "lora_adapter": has_lora(model.backbone), "features_store": cfg.features.store or None,
        "cvsjepa_version": __version__, "git": _git_hash(), "torch": torch.__version__,
    }
    if len(state.stage_best) > 1:
        summary["stage_best_val_map"] = {str(k): v for k, v in state.stage_best.items()}
    oracle = _read_oracle(cfg)
    for role in ("val", "test"):
        if role not in splits or (role == "test" and not cfg.train.eval_test):
            continue
        preds, seg_cm = predict_split(model, splits[role], cfg, device, cfg.train.batch_size, None, role, progress)
        if seg_cm is not None:
            summary[f"{role}_seg"] = {"miou": seg_cm.miou(), "constant_miou": constant_prediction_miou(seg_cm),
                                      "iou": dict(zip(seg_class_names(cfg), seg_cm.iou())), "pixels": seg_cm.pixels}
        ap = preds.ap()
        summary[f"{role}_map"] = ap.map
        summary[f"{role}_ap"] = list(ap.ap)
        summary[f"{role}_prevalence"] = prevalence(preds.labels)
        if oracle and splits[role].index.split in oracle:
            summary[f"{role}_oracle_map"] = oracle[splits[role].index.split]["map"]
        if distributed.is_main():
            write_predictions(run_dir / f"predictions_{role}.csv", preds.sample_ids, preds.video_ids, preds.frames,
                              preds.labels, preds.rater_means, preds.probs, tuple(cfg.data.criteria))
    summary["best_val_map"] = summary.get("val_map")
    if state.rows and distributed.is_main():
        best_row = next(r for r in state.rows if r["epoch"] == state.best_epoch) if state.best_epoch else None
        summary["train_val_gap_at_best"] = (best_row["train_map"] - best_row["val_map"]) if best_row else None
        plot_training_curve(run_dir, state.rows, state.best_epoch, f"{cfg.name} - {model.backbone.name}")
    return summary


def _read_oracle(cfg: RunConfig) -> dict | None:
    path = Path(cfg.data.root) / "oracle.json"
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        log.warning("could not read %s; oracle mAP not reported", path)
        return None
