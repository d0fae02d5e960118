"""The training loop, the one `train` and `sweep` both run:

    for each epoch of a stage:
        train: for each batch: [MixUp/CutMix] -> every active member's loss (NaN/inf: stop, or skip
               that member's batch) -> one backward of their sum; every grad_accum micro-batches:
               clip each member's gradient on its own, one optimizer step, one LR-schedule step
        validate: every active member scores val in one pass -> AP per criterion, mAP (nanmean)
        each member: a metrics row; a new best (raw) val mAP -> the trainee keeps its weights; no better
               smoothed val mAP for `patience` epochs, and at least `min_steps` steps done -> it stops
        write the per-epoch tables and the resume state (one atomic unit, rundir.py)
    until every member has stopped or the stage's budget (build.stage_budget, in optimizer steps) is spent

What differs between a run and a sweep lives in its *trainee* (``classifier.py``, ``sweep.py``): how
a batch becomes each member's logits, how val is scored, what a new best does, which table is
written. Checkpoints are chosen on val only; test is scored once, at the end (``finish.py``).
"""

from __future__ import annotations

import logging
import math
import time
import warnings
from dataclasses import asdict, dataclass, field
from typing import Protocol

import torch
from tqdm.auto import tqdm

from ..criteria import CRITERIA

from .. import distributed
from ..config import RunConfig
from ..evaluate.inference import Predictions, move_batch
from ..evaluate.metrics import cvs_average_precision
from ..rundir import RunDir
from ..tracking import Tracker, epoch_metrics
from .build import StagePlan, make_scheduler, split_labels, stage_budget, train_loader
from .losses import build_loss
from .members import Member, NonFiniteGuard
from .mixing import mix_batch

log = logging.getLogger("cvsjepa")


class Trainee(Protocol):
    """What the loop needs from the thing it trains (see the module docstring)."""

    members: list[Member]
    ddp: torch.nn.Module  # what DDP's no_sync applies to (the module itself outside DDP)

    def begin_stage(self, plan: StagePlan) -> list[dict]:
        """Prepare the stage (e.g. wrap in DDP) and return the AdamW parameter groups of the members."""

    def clip_params(self, member: Member) -> list[torch.nn.Parameter]:
        """The parameters whose gradient norm is clipped together (one member's)."""

    def train_mode(self) -> None: ...

    def forward(self, batch: dict) -> list[tuple[torch.Tensor, torch.Tensor | None]]:
        """Per active member: (logits [B, 3], an extra loss term such as segmentation, or None)."""

    def score(self, split, batch_size: int, loss_fn, desc: str) -> list[tuple[Predictions, dict]]:
        """Per active member: its predictions on ``split`` and extra metrics.csv columns."""

    def on_improved(self, member: Member, epoch: int, stage: int, score: float) -> None: ...

    def end_epoch(self, epoch: int, plan: StagePlan) -> None:
        """Write the per-epoch table(s) and log the epoch."""

    def weights(self) -> dict[str, torch.Tensor]:
        """Every trainable tensor of every member (the resume state)."""


@dataclass
class Fit:
    """Where a run stands, shared by the stages of one run."""
    cfg: RunConfig
    run: RunDir
    device: torch.device
    splits: dict
    progress: bool
    epoch: int = 0  # epochs done, over all stages
    timing: dict = field(default_factory=lambda: {"read_s": 0.0, "compute_s": 0.0})
    budgets: dict = field(default_factory=dict)  # stage -> its Budget and the optimizer steps it ran (summary.json)
    tracker: Tracker = field(default_factory=Tracker)  # experiment trackers (train.loggers); the null one by default


# A criterion with fewer val positives than this makes val mAP (and early stopping on it) noisy.
FEW_VAL_POSITIVES = 20


def fit_stage(fit: Fit, plan: StagePlan, trainee: Trainee, resume: dict | None = None) -> None:
    """Run one stage of ``trainee`` (from the resume state of this stage, if given)."""
    cfg, device = fit.cfg, fit.device
    mix_gen = torch.Generator().manual_seed(cfg.seed + 7 + 1000 * distributed.world()[0])
    loader, sampler, steps_per_epoch = train_loader(cfg, fit.splits["train"], plan)
    budget = stage_budget(plan, steps_per_epoch)
    log.info(budget.describe(plan))
    warn_few_positives(fit.splits["val"], tuple(cfg.data.criteria))
    loss_fn = build_loss(cfg.loss).to(device)
    optimizer = torch.optim.AdamW(trainee.begin_stage(plan))
    scheduler = make_scheduler(optimizer, budget, cfg.train.min_lr_ratio)
    done = 0
    if resume:  # continue exactly where the interrupted process stopped
        optimizer.load_state_dict(resume["optimizer"])
        scheduler.load_state_dict(resume["scheduler"])
        if distributed.world()[1] == resume.get("world_size", 1):  # per-rank streams; else they restart
            mix_gen.set_state(resume["mix_rng"])
        torch.set_rng_state(resume["torch_rng"])
        done = resume["stage_epochs_done"]
    else:
        for m in trainee.members:  # stage 2 starts every member's early stopping afresh (exp9)
            m.active = True
            m.progress.start_stage()
    guard = NonFiniteGuard(cfg.train.on_nonfinite, fit.run.best_dir)
    for stage_epoch in range(done + 1, budget.epochs + 1):
        fit.epoch += 1
        epoch, te = fit.epoch, time.time()
        lrs = _group_lrs(optimizer)
        sampler.set_epoch(epoch)
        trained = train_epoch(fit, trainee, loader, loss_fn, optimizer, scheduler, plan.grad_accum, epoch,
                              mix_gen, guard, budget.total_steps)
        steps_done = scheduler.last_epoch  # optimizer steps of this stage (restored on resume)
        t = time.perf_counter()
        scored = trainee.score(fit.splits["val"], plan.batch_size, loss_fn, "val")
        fit.timing["compute_s"] += time.perf_counter() - t
        active = [m for m in trainee.members if m.active]
        for j, (m, (val, extra)) in enumerate(zip(active, scored)):
            with warnings.catch_warnings():  # a criterion without positives: warn once, not once per member
                if j:
                    warnings.simplefilter("ignore")
                ap = val.ap("val")
            train_loss, train_map = trained[m.index]
            m.progress.rows.append({
                "epoch": epoch, "stage": plan.stage, "train_loss": train_loss, "train_map": train_map,
                "val_loss": val.loss, "val_map": ap.map, "seconds": time.time() - te, **lrs[m.index],
                **{f"val_ap_{c}": a for c, a in zip(CRITERIA, ap.ap)}, **extra})
            score = ap.map if not math.isnan(ap.map) else -math.inf
            if m.progress.update(score, epoch, plan.stage, plan.smoothing):
                trainee.on_improved(m, epoch, plan.stage, score)
            elif steps_done < budget.total_steps and m.progress.should_stop(plan.patience, steps_done,
                                                                             budget.min_steps):
                m.active = False
                log.info("early stop%s (stage %d, step %d): the val mAP%s has not improved for %d epochs "
                         "(best %.4f at epoch %s)", f" of {m.label}" if m.label else "", plan.stage, steps_done,
                         f" (mean of {plan.smoothing} epochs)" if plan.smoothing > 1 else "",
                         m.progress.bad_epochs, m.progress.best_map, m.progress.best_epoch)
        trainee.end_epoch(epoch, plan)
        fit.tracker.log_epoch(epoch, epoch_metrics(trainee.members, epoch))
        fit.budgets[plan.stage] = {**asdict(budget), "steps_run": steps_done}
        stage_done = (stage_epoch == budget.epochs or steps_done >= budget.total_steps
                      or not any(m.active for m in trainee.members))
        if distributed.is_main():
            fit.run.save_resume(epoch, {
                "stage": plan.stage, "stage_epochs_done": stage_epoch, "stage_done": stage_done,
                "world_size": distributed.world()[1], "mix_rng": mix_gen.get_state(),
                "torch_rng": torch.get_rng_state(), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "weights": trainee.weights(),
                "members": [m.resume_record() for m in trainee.members],
                "best": {str(m.index): m.best_state for m in trainee.members if m.best_state is not None}})
        distributed.barrier()  # no rank runs ahead of the checkpoint it may need
        if not any(m.active for m in trainee.members):
            break


def train_epoch(fit: Fit, trainee: Trainee, loader, loss_fn, optimizer, scheduler, grad_accum: int, epoch: int,
                mix_gen: torch.Generator, guard: NonFiniteGuard, step_limit: int | None = None
                ) -> dict[int, tuple[float, float]]:
    """One pass over the training batches, cut short once the stage has taken ``step_limit`` optimizer
    steps (``scheduler.last_epoch``). Returns ``{member index: (mean train loss, train mAP over the
    epoch's own predictions)}`` for the active members (over all processes under DDP)."""
    cfg, device = fit.cfg, fit.device
    trainee.train_mode()
    active = [m for m in trainee.members if m.active]
    loss_sum = {m.index: 0.0 for m in active}
    seen = {m.index: 0 for m in active}
    probs: dict[int, list] = {m.index: [] for m in active}
    labels: dict[int, list] = {m.index: [] for m in active}
    micro = 0
    optimizer.zero_grad(set_to_none=True)
    bar = tqdm(total=len(loader), desc=f"epoch {epoch}", leave=False, disable=not fit.progress, unit="batch")
    for batch in _timed(loader, device, fit.timing):
        bar.update()
        if batch is None:  # every sample of the batch was skipped (on_bad_sample=skip)
            continue
        t = time.perf_counter()
        batch = mix_batch(batch, cfg.train.mixup_alpha, cfg.train.cutmix_alpha, cfg.train.mix_prob, mix_gen)
        step_now = (micro + 1) % grad_accum == 0
        with distributed.no_sync(trainee.ddp, sync=step_now), \
                torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            outputs = trainee.forward(batch)
            losses = [loss_fn(logits, batch["target"]) if extra is None else
                      loss_fn(logits, batch["target"]) + extra for logits, extra in outputs]
            keep = guard.keep(losses, active, epoch, micro + 1, batch)
            if not any(keep):
                fit.timing["compute_s"] += time.perf_counter() - t
                continue
            kept = [loss for loss, k in zip(losses, keep) if k]
            total = kept[0]
            for loss in kept[1:]:
                total = total + loss
            (total / grad_accum).backward()
        micro += 1
        if micro % grad_accum == 0:
            optimizer_step(trainee, active, optimizer, scheduler, cfg.train.grad_clip)
        for m, (logits, _), loss, k in zip(active, outputs, losses, keep):
            if k:
                loss_sum[m.index] += loss.item() * len(logits)
                seen[m.index] += len(logits)
                probs[m.index].append(torch.sigmoid(logits.detach().float()).cpu())
                labels[m.index].append(batch["label"].cpu())
        fit.timing["compute_s"] += time.perf_counter() - t
        if fit.progress:
            m0 = active[0].index
            bar.set_postfix(loss=f"{loss_sum[m0] / max(1, seen[m0]):.4f}", lr=f"{optimizer.param_groups[0]['lr']:.2e}")
        if step_limit is not None and micro % grad_accum == 0 and scheduler.last_epoch >= step_limit:
            break  # the stage's step budget is spent (train.steps, or the last epoch of an extended budget)
    bar.close()
    if micro % grad_accum != 0:  # a partial accumulation at the end of the epoch still counts
        optimizer_step(trainee, active, optimizer, scheduler, cfg.train.grad_clip)
    if not any(seen.values()):
        raise RuntimeError("the training loader produced no sample (every batch skipped?)")
    out = {}
    for j, m in enumerate(active):
        mean_loss, _ = distributed.all_reduce_mean(loss_sum[m.index] / max(1, seen[m.index]), seen[m.index])
        parts = distributed.gather_objects((_cat(probs[m.index]), _cat(labels[m.index])))  # over all ranks
        with warnings.catch_warnings():  # a criterion without positives: warn once, not once per member
            if j:
                warnings.simplefilter("ignore")
            train_map = cvs_average_precision(torch.cat([p for p, _ in parts]), torch.cat([y for _, y in parts]),
                                              where="train").map
        out[m.index] = (mean_loss if seen[m.index] else math.nan, train_map)
    return out


def warn_few_positives(split, names: tuple[str, ...]) -> None:
    """A logged warning per criterion with fewer than FEW_VAL_POSITIVES positives in val."""
    counts = split_labels(split).sum(0).tolist()
    few = [f"{n}: {int(c)}" for n, c in zip(names, counts) if c < FEW_VAL_POSITIVES]
    if few:
        log.warning("val has fewer than %d positives for %s (of %d keyframes): its AP, the val mAP that picks the "
                    "checkpoint and early stopping are noisy; prefer a larger val split, train.patience_smoothing "
                    "> 1 and a train.min_steps floor", FEW_VAL_POSITIVES, ", ".join(few), len(split.index.samples))


def optimizer_step(trainee: Trainee, active: list[Member], optimizer, scheduler, grad_clip: float) -> None:
    """Clip each member's gradient on its own (as its own run would), then one step for all."""
    if grad_clip > 0:
        for m in active:
            torch.nn.utils.clip_grad_norm_(trainee.clip_params(m), grad_clip)
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)


def _timed(loader, device, timing: dict):
    """The loader's batches moved to ``device``; the time spent waiting for them goes to ``read_s``."""
    it = iter(loader)
    while True:
        t = time.perf_counter()
        try:
            batch = next(it)
        except StopIteration:
            return
        if batch is not None:
            batch = move_batch(batch, device)
        timing["read_s"] += time.perf_counter() - t
        yield batch


def _cat(xs: list[torch.Tensor]) -> torch.Tensor:
    return torch.cat(xs) if xs else torch.zeros(0, len(CRITERIA))


def _group_lrs(optimizer) -> dict[int, dict]:
    """Per member: the head's LR and the largest backbone-block LR (None when the backbone is frozen)."""
    out: dict[int, dict] = {}
    for g in optimizer.param_groups:
        lrs = out.setdefault(g["member"], {"lr_head": None, "lr_backbone": None})
        if g["name"].startswith("backbone"):
            lrs["lr_backbone"] = max(lrs["lr_backbone"] or 0.0, g["lr"])
        elif lrs["lr_head"] is None:  # the member's first head group (its decay group)
            lrs["lr_head"] = g["lr"]
    return out
