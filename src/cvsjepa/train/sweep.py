"""`cvsjepa sweep`: K heads trained at once on one pass over the stored tokens, through the same
training loop as `cvsjepa train` (``loop.py``): each head is a *member* of the loop.

    K = len(sweep.lrs) x len(sweep.weight_decays) heads, each built by build_head and initialised
    from the same seed (as K separate runs with that seed would be); one AdamW with each head's
    (lr, weight decay) in its own parameter groups; the training loop's sampler, schedule, clipping
    (per head), non-finite policy (per head) and early stopping (per head)
    each epoch: every active head trains on each batch (read once for all, and computed together:
    heads/bank.py shares the tokens' normalisation and attention products between the heads); val
    is read once and scored by every head (sweep.csv); the resume state holds every head and its
    best weights
    the winner is the head with the best val mAP (ties: the first in grid order); it alone is scored
    on test, saved as checkpoints/best and described by summary.json / metrics.csv (finish.py)

Each head sees exactly what a separate ``cvsjepa train ... features.store=DIR train.lr=.. train.weight_decay=..``
run would (same init, batches, schedule, clipping).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time

import torch
from torch import nn

from ..criteria import CRITERIA
from ..backbones import build_backbone
from ..checkpoint import save_classifier
from ..config import RunConfig
from ..errors import ConfigError
from ..evaluate.inference import predict_many
from ..heads import TokenLayout, build_head, offsets_of
from ..heads.temporal import describe_offsets
from ..heads.bank import HeadBank
from ..heads.pooler import build_temporal_head
from ..model import CVSClassifier
from ..rundir import SWEEP_FILE, RunDir, write_csv
from ..tracking import history_of, tracking
from .build import (StagePlan, load_data, open_run, param_groups, prepare, run_log, stage_plans, temporal_pooler,
                    with_loaded_backbone)
from .classifier import RunResult
from .finish import finish
from .loop import Fit, fit_stage
from .members import Member

log = logging.getLogger("cvsjepa")
SWEEP_COLUMNS = ["head", "lr", "weight_decay", "epoch", "train_loss", "train_map", "val_loss", "val_map",
                 *[f"val_ap_{c}" for c in CRITERIA], "best_epoch", "winner"]


def sweep_grid(cfg: RunConfig) -> list[tuple[float, float]]:
    """``[(lr, weight_decay)]`` in grid order (lr-major)."""
    if not cfg.sweep.lrs or not cfg.sweep.weight_decays:
        raise ConfigError("sweep.lrs and sweep.weight_decays must each list at least one value")
    if any(lr <= 0 for lr in cfg.sweep.lrs) or any(wd < 0 for wd in cfg.sweep.weight_decays):
        raise ConfigError(f"sweep.lrs must be > 0 and sweep.weight_decays >= 0, got {cfg.sweep.lrs}, "
                          f"{cfg.sweep.weight_decays}")
    return [(float(lr), float(wd)) for lr in cfg.sweep.lrs for wd in cfg.sweep.weight_decays]


def build_sweep_heads(cfg: RunConfig, embed_dim: int, device, layout: TokenLayout | None = None,
                      pooler=None) -> list[nn.Module]:
    """K heads with the init a separate run with this seed would get (temporal heads: over ``pooler``'s
    embeddings, as ``train`` builds them)."""
    heads = []
    for _ in sweep_grid(cfg):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed)
            head = (build_temporal_head(cfg.head, pooler) if pooler is not None else
                    build_head(cfg.head, embed_dim, layout=layout))
            heads.append(head.to(device))
    return heads


def store_token_layout(layout: dict) -> TokenLayout:
    """The head's token layout from a feature store's ``layout`` (what `extract` wrote)."""
    return TokenLayout.of(layout.get("spatial_views", 1), layout.get("levels", 1), layout["token_grid"])


class HeadBankTrainee:
    """The loop's view of a sweep: K heads over the same tokens, one member each."""

    def __init__(self, cfg: RunConfig, heads: list[nn.Module], run: RunDir, device: torch.device):
        self.cfg, self.run, self.device = cfg, run, device
        self.bank = HeadBank(heads)
        self.heads = self.bank.heads  # state-dict keys "{i}.{name}", as in resume states
        self.ddp = self.heads
        self.pooler = None  # a temporal sweep's per-second pooler, saved with the winner
        self.members = [Member(i, f"head {i} (lr {lr:g}, wd {wd:g})", lr, wd)
                        for i, (lr, wd) in enumerate(sweep_grid(cfg))]

    def _active(self) -> list[Member]:
        return [m for m in self.members if m.active]

    def begin_stage(self, plan: StagePlan) -> list[dict]:
        return [{**g, "member": m.index} for m in self.members
                for g in param_groups([self.heads[m.index]], m.lr, m.weight_decay, name=f"head{m.index}")]

    def clip_params(self, member: Member) -> list[nn.Parameter]:
        return [p for p in self.heads[member.index].parameters() if p.requires_grad]

    def train_mode(self) -> None:
        for m in self.members:
            self.heads[m.index].train(m.active)

    def forward(self, batch: dict) -> list[tuple[torch.Tensor, None]]:
        return [(logits, None) for logits in self.bank.run(batch, [m.index for m in self._active()])]

    def score(self, split, batch_size: int, loss_fn, desc: str):
        active = self._active()
        for m in active:
            self.heads[m.index].eval()
        loader = split.loader(batch_size, False, self.cfg.data.num_workers)

        def logits_of(batch: dict) -> list[torch.Tensor]:
            return self.bank.run(batch, [m.index for m in active])

        return [(p, {}) for p in predict_many(logits_of, len(active), loader, self.device, loss_fn, desc, False)]

    def on_improved(self, member: Member, epoch: int, stage: int, score: float) -> None:
        member.snapshot(self.heads[member.index].state_dict())

    def end_epoch(self, epoch: int, plan: StagePlan) -> None:
        write_sweep_csv(self.run, self.members)
        leader = max(self.members, key=lambda m: m.progress.best_map)
        maps = [m.progress.rows[-1]["val_map"] for m in self.members if m.progress.rows
                and m.progress.rows[-1]["epoch"] == epoch and not math.isnan(m.progress.rows[-1]["val_map"])]
        log.info("epoch %d: %d heads active, val mAP %s | best so far %s %.4f", epoch, len(self._active()),
                 f"{min(maps):.4f}..{max(maps):.4f}" if maps else "n/a", leader.label, leader.progress.best_map)

    def weights(self) -> dict[str, torch.Tensor]:
        return self.heads.state_dict()

    def restore(self, state: dict) -> None:
        self.heads.load_state_dict(state["weights"])
        for m, rec in zip(self.members, state["members"]):
            m.load_record(rec)
            m.best_state = state["best"].get(str(m.index))


def winner_of(members: list[Member]) -> Member:
    """The best val mAP; ties go to the first head in grid order."""
    best = members[0]
    for m in members[1:]:
        if m.progress.best_map > best.progress.best_map:
            best = m
    return best


def write_sweep_csv(run: RunDir, members: list[Member], winner: Member | None = None) -> None:
    """One row per head and epoch, then one ``epoch=final`` row per head (its best epoch's values)."""
    rows = [{**row, "head": m.index, "lr": m.lr, "weight_decay": m.weight_decay}
            for m in members for row in m.progress.rows]
    for m in members:
        best = next((row for row in m.progress.rows if row["epoch"] == m.progress.best_epoch), {})
        rows.append({**best, "head": m.index, "lr": m.lr, "weight_decay": m.weight_decay, "epoch": "final",
                     "best_epoch": m.progress.best_epoch, "winner": None if winner is None else int(m is winner)})
    write_csv(run / SWEEP_FILE, SWEEP_COLUMNS, rows)


def sweep(cfg: RunConfig, progress: bool = True) -> RunResult:
    t0 = time.time()
    if not cfg.features.store:
        raise ConfigError("cvsjepa sweep trains from a feature store: pass features.store=DIR (see `cvsjepa extract`)")
    grid = sweep_grid(cfg)
    device = prepare(cfg, processes=False)  # one process: K heads on one device
    # The backbone is built (on the CPU, never run) to check the store's weights fingerprint and so
    # that the winner's checkpoint loads with `load_classifier` like any other.
    backbone = build_backbone(cfg.backbone).freeze()
    cfg = with_loaded_backbone(cfg, backbone)
    splits = load_data(cfg, backbone.crop_size, backbone=backbone, progress=progress)
    if "train" not in splits or "val" not in splits:
        raise ConfigError("a sweep needs data.train_split and data.val_split")
    pooler = temporal_pooler(cfg, backbone)  # temporal heads: the winner's checkpoint keeps it
    if pooler is None:
        layout = splits["train"].dataset.reader.layout
        embed_dim, token_layout = int(layout["embed_dim"]), store_token_layout(layout)
        inputs = f"{layout['tokens_per_clip']} tokens x {layout['embed_dim']} {layout['dtype']} per clip"
    else:
        embed_dim, token_layout = pooler.out_dim, None
        inputs = f"per-second embeddings ({pooler.kind}) of {embed_dim}, {describe_offsets(offsets_of(cfg.head))}"
    run, resume = open_run(cfg, splits)
    if run.is_finished():
        log.info("%s already finished; nothing to resume", run)
        return RunResult(run, run.read_summary())
    with run_log(run, cfg), tracking(cfg, run.path, resume["epoch"] if resume else 0) as tracker:
        log.info("sweep of %d heads (lr %s x wd %s) from feature store %s (%s); run directory %s", len(grid),
                 cfg.sweep.lrs, cfg.sweep.weight_decays, cfg.features.store, inputs, run)
        fit = Fit(cfg, run, device, splits, progress, tracker=tracker)
        heads = build_sweep_heads(cfg, embed_dim, device, token_layout, pooler)
        trainee = HeadBankTrainee(cfg, heads, run, device)
        trainee.pooler = pooler
        if resume:
            trainee.restore(resume)
            tracker.log_history(history_of(trainee.members))
            fit.epoch = resume["epoch"]
            log.info("resuming %s after epoch %d", run, resume["epoch"])
        if not (resume and resume["stage_done"]):
            fit_stage(fit, stage_plans(cfg)[0], trainee, resume)
        return RunResult(run, _finish(fit, trainee, backbone, t0))


def _finish(fit: Fit, trainee: HeadBankTrainee, backbone, t0: float) -> dict:
    cfg, run = fit.cfg, fit.run
    win = winner_of(trainee.members)
    head = trainee.heads[win.index]
    if win.best_state is not None:
        head.load_state_dict(win.best_state)
    write_sweep_csv(run, trainee.members, win)
    win_cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, lr=win.lr, weight_decay=win.weight_decay))
    # backbone stays on the CPU: the batches carry tokens (or histories), it never runs
    model = CVSClassifier(backbone, head, pooler=trainee.pooler)
    save_classifier(run.best_dir, model, win_cfg,
                    extra={"epoch": win.progress.best_epoch, "val_map": win.progress.best_map,
                           "sweep": {"head": win.index, "lr": win.lr, "weight_decay": win.weight_decay}})
    run.write_metrics(win.progress.rows)
    heads = []
    for m in trainee.members:
        best = next((r for r in m.progress.rows if r["epoch"] == m.progress.best_epoch), {})
        heads.append({"head": m.index, "lr": m.lr, "weight_decay": m.weight_decay,
                      "best_val_map": m.progress.best_map if m.progress.best_epoch else None,
                      "best_epoch": m.progress.best_epoch, "epochs_run": len(m.progress.rows),
                      "nonfinite_batches_skipped": m.skipped,
                      "best_val_ap": [best.get(f"val_ap_{c}") for c in CRITERIA]})
    extra = {"lr": win.lr, "weight_decay": win.weight_decay, "sweep": {
        "k": len(trainee.members), "lrs": list(cfg.sweep.lrs), "weight_decays": list(cfg.sweep.weight_decays),
        "winner": {"head": win.index, "lr": win.lr, "weight_decay": win.weight_decay,
                   "best_epoch": win.progress.best_epoch, "val_map": win.progress.best_map},
        "heads": heads, "timing": {k: round(v, 3) for k, v in fit.timing.items()}}}
    summary = finish(fit, model, win, t0, extra,
                     f"{cfg.name} - sweep winner lr {win.lr:g} wd {win.weight_decay:g} - {backbone.name}")
    log.info("sweep winner: %s, val mAP %.4f at epoch %s%s", win.label, win.progress.best_map, win.progress.best_epoch,
             f"; test mAP {summary['test_map']:.4f}" if summary.get("test_map") is not None else "")
    return summary
