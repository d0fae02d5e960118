"""`cvsjepa sweep`: K heads trained at once on one pass over the stored tokens.

    K = len(sweep.lrs) x len(sweep.weight_decays) heads, each built by build_head and initialised
    from the same seed (as K separate runs with that seed would be)
    one AdamW, two parameter groups per head (decay / no decay) carrying that head's lr and wd;
    one warm-up + cosine multiplier for every group
    for each epoch:
        each training batch is read (and mixed) once; every active head's loss is summed, one
        backward; each head's gradient is clipped on its own; one optimizer step
        val: one pass, every head scores it -> per-head val mAP (sweep.csv)
        a head stops (as early stopping would stop its own run) after `patience` epochs without
        improving; its best weights are kept
    the winner is the head with the best val mAP (ties: the first in grid order); it alone is
    scored on test, saved as checkpoints/best and described by summary.json / metrics.csv

Each head sees exactly what a separate `cvsjepa train ... features.store=DIR train.lr=.. train.weight_decay=..`
run would (same init, batches, schedule, clipping): heads share no parameter, and the gradient of a
sum of losses with respect to one head's parameters is that head's own gradient.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import logging
import math
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

from .. import __version__
from ..backbones import build_backbone
from ..checkpoint import save_classifier
from ..config import RunConfig
from ..errors import ConfigError
from ..evaluate.inference import Predictions, move_batch, predict_loader
from ..evaluate.metrics import cvs_average_precision, prevalence
from ..heads import build_head
from ..io import atomic_write_json, atomic_write_text
from ..model import CVSClassifier, count_params
from .losses import build_loss
from .mixing import mix_batch
from .rundir import create_run_dir, plot_training_curve, write_metrics, write_predictions
from .schedule import warmup_cosine

log = logging.getLogger("cvsjepa")
CRITERIA = ("C1", "C2", "C3")
SWEEP_COLUMNS = ["head", "lr", "weight_decay", "epoch", "train_loss", "train_map", "val_loss", "val_map",
                 "val_ap_C1", "val_ap_C2", "val_ap_C3", "best_epoch", "winner"]


@dataclass
class HeadRun:
    """One head of the sweep and its early-stopping state."""
    index: int
    lr: float
    weight_decay: float
    head: nn.Module
    active: bool = True
    best_map: float = -math.inf
    best_epoch: int | None = None
    best_ap: tuple = (math.nan,) * 3
    best_state: dict | None = None
    bad_epochs: int = 0
    rows: list[dict] = field(default_factory=list)


@dataclass
class SweepResult:
    run_dir: Path
    summary: dict


def sweep_grid(cfg: RunConfig) -> list[tuple[float, float]]:
    """``[(lr, weight_decay)]`` in grid order (lr-major)."""
    if not cfg.sweep.lrs or not cfg.sweep.weight_decays:
        raise ConfigError("sweep.lrs and sweep.weight_decays must each list at least one value")
    if any(lr <= 0 for lr in cfg.sweep.lrs) or any(wd < 0 for wd in cfg.sweep.weight_decays):
        raise ConfigError(f"sweep.lrs must be > 0 and sweep.weight_decays >= 0, got {cfg.sweep.lrs}, "
                          f"{cfg.sweep.weight_decays}")
    return [(float(lr), float(wd)) for lr in cfg.sweep.lrs for wd in cfg.sweep.weight_decays]


def build_sweep_heads(cfg: RunConfig, embed_dim: int, device) -> list[HeadRun]:
    runs = []
    for i, (lr, wd) in enumerate(sweep_grid(cfg)):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed)  # the init a separate run with this seed would get
            head = build_head(cfg.head, embed_dim)
        runs.append(HeadRun(i, lr, wd, head.to(device)))
    return runs


def build_sweep_optimizer(runs: list[HeadRun]) -> torch.optim.AdamW:
    """As train.loop.build_optimizer, per head: biases and norms (1-d tensors) get no weight decay."""
    groups = []
    for r in runs:
        params = [p for p in r.head.parameters() if p.requires_grad]
        groups.append({"params": [p for p in params if p.ndim > 1], "lr": r.lr, "weight_decay": r.weight_decay,
                       "name": f"head{r.index}"})
        groups.append({"params": [p for p in params if p.ndim <= 1], "lr": r.lr, "weight_decay": 0.0,
                       "name": f"head{r.index}.no_decay"})
    return torch.optim.AdamW([g for g in groups if g["params"]])


def sweep(cfg: RunConfig, progress: bool = True) -> SweepResult:
    from ..features.dataset import open_store_splits
    from .loop import resolve_device, seed_everything

    t0 = time.time()
    if not cfg.features.store:
        raise ConfigError("cvsjepa sweep trains from a feature store: pass features.store=DIR (see `cvsjepa extract`)")
    if not cfg.data.root:
        raise ConfigError("data.root is not set: the labels are read from the dataset (data.root=/path/to/endoscapes)")
    grid = sweep_grid(cfg)
    seed_everything(cfg.seed)
    device = resolve_device(cfg.train.device)
    # The backbone is built (on the CPU, never run) to check the store's weights fingerprint and so
    # that the winner's checkpoint loads with `load_classifier` like any other.
    backbone = build_backbone(cfg.backbone).freeze()
    splits = open_store_splits(cfg, backbone=backbone, progress=progress)
    if "train" not in splits or "val" not in splits:
        raise ConfigError("a sweep needs data.train_split and data.val_split")
    reader = splits["train"].dataset.reader
    embed_dim = int(reader.layout["embed_dim"])
    runs = build_sweep_heads(cfg, embed_dim, device)
    run_dir = create_run_dir(cfg)
    file_log = logging.FileHandler(run_dir / "train.log")
    file_log.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    log.addHandler(file_log)
    try:
        log.info("sweep of %d heads (lr %s x wd %s) from feature store %s (%s); run directory %s", len(runs),
                 cfg.sweep.lrs, cfg.sweep.weight_decays, reader.root, _shape(reader.layout), run_dir)
        timing = _fit(cfg, runs, splits, run_dir, device, progress)
        summary = _finish(cfg, runs, splits, backbone, run_dir, device, progress)
    finally:
        log.removeHandler(file_log)
        file_log.close()
    summary["seconds"] = round(time.time() - t0, 1)
    summary["sweep"]["timing"] = timing
    atomic_write_json(run_dir / "summary.json", summary)
    return SweepResult(run_dir, summary)


def _fit(cfg: RunConfig, runs: list[HeadRun], splits, run_dir: Path, device, progress) -> dict:
    from torch.utils.data import DataLoader

    from ..data.dataset import collate_skip_none
    from .distributed import GlobalBatchSampler
    from .sampling import balanced_weights

    # the training loop's sampler, seed and per-epoch order: every head sees a separate run's batches
    train_split = splits["train"]
    weights = None
    if cfg.train.sampler == "balanced":
        weights = balanced_weights(torch.tensor([s.label for s in train_split.index.samples], dtype=torch.float32))
    sampler = GlobalBatchSampler(len(train_split.dataset), cfg.train.batch_size, cfg.seed, weights)
    train_loader = DataLoader(train_split.dataset, batch_sampler=sampler, num_workers=cfg.data.num_workers,
                              collate_fn=collate_skip_none)
    val_loader = splits["val"].loader(cfg.train.batch_size, False, cfg.data.num_workers)
    loss_fn = build_loss(cfg.loss).to(device)
    optimizer = build_sweep_optimizer(runs)
    steps_per_epoch = math.ceil(len(train_loader) / cfg.train.grad_accum)
    total_steps = steps_per_epoch * cfg.train.epochs
    warmup_steps = round(cfg.train.warmup_epochs * steps_per_epoch)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: warmup_cosine(s, total_steps, warmup_steps, cfg.train.min_lr_ratio))
    mix_gen = torch.Generator().manual_seed(cfg.seed + 7)
    timing = {"read_s": 0.0, "heads_s": 0.0, "epoch_s": []}
    for epoch in range(1, cfg.train.epochs + 1):
        te = time.time()
        lr_mult = scheduler.get_last_lr()[0] / optimizer.param_groups[0]["initial_lr"]
        sampler.set_epoch(epoch)
        train = _train_epoch(cfg, runs, train_loader, loss_fn, optimizer, scheduler, device, epoch, mix_gen,
                             timing, progress)
        val = _score(runs, val_loader, device, loss_fn, timing, progress, "val")
        for r in runs:
            if not r.active:
                continue
            with warnings.catch_warnings():  # a criterion without positives: warn once, not once per head
                if r is not next(x for x in runs if x.index in val):
                    warnings.simplefilter("ignore")
                ap = val[r.index].ap()
            score = ap.map if not math.isnan(ap.map) else -math.inf
            r.rows.append({"epoch": epoch, "stage": 1, "train_loss": train[r.index][0], "train_map": train[r.index][1],
                           "val_loss": val[r.index].loss, "val_map": ap.map, "lr_head": r.lr * lr_mult,
                           "lr_backbone": None, "seconds": time.time() - te,
                           **{f"val_ap_{c}": a for c, a in zip(CRITERIA, ap.ap)}})
            if score > r.best_map:
                r.best_map, r.best_epoch, r.best_ap, r.bad_epochs = score, epoch, ap.ap, 0
                r.best_state = {k: v.detach().to("cpu", copy=True) for k, v in r.head.state_dict().items()}
            else:
                r.bad_epochs += 1
                if cfg.train.patience and r.bad_epochs >= cfg.train.patience:
                    r.active = False
                    log.info("head %d (lr %.1e, wd %g) stops: no val improvement for %d epochs (best %.4f, epoch %s)",
                             r.index, r.lr, r.weight_decay, r.bad_epochs, r.best_map, r.best_epoch)
        timing["epoch_s"].append(round(time.time() - te, 3))
        write_sweep_csv(run_dir / "sweep.csv", runs)
        leader = max(runs, key=lambda r: r.best_map)
        log.info("epoch %d: %d heads active, val mAP %s | best so far head %d (lr %.1e, wd %g) %.4f", epoch,
                 sum(r.active for r in runs), _val_range(runs, epoch), leader.index, leader.lr, leader.weight_decay,
                 leader.best_map)
        if not any(r.active for r in runs):
            log.info("every head has stopped early; the sweep ends after epoch %d", epoch)
            break
    timing["read_s"], timing["heads_s"] = round(timing["read_s"], 3), round(timing["heads_s"], 3)
    return timing


def _shape(layout: dict) -> str:
    return f"{layout['tokens_per_clip']} tokens x {layout['embed_dim']} {layout['dtype']} per clip"


def _val_range(runs: list[HeadRun], epoch: int) -> str:
    maps = [r.rows[-1]["val_map"] for r in runs if r.rows and r.rows[-1]["epoch"] == epoch]
    maps = [m for m in maps if not math.isnan(m)]
    return f"{min(maps):.4f}..{max(maps):.4f}" if maps else "n/a"


def _timed_batches(loader, device, timing: dict):
    """Yields batches moved to ``device``; the time spent waiting for them goes to ``read_s``."""
    it = iter(loader)
    while True:
        t = time.perf_counter()
        try:
            batch = next(it)
        except StopIteration:
            return
        if batch is not None:
            batch = move_batch(batch, device)
            batch["tokens"] = batch["tokens"].float()  # once for all heads
        timing["read_s"] += time.perf_counter() - t
        if batch is not None:
            yield batch


def _train_epoch(cfg, runs, loader, loss_fn, optimizer, scheduler, device, epoch, mix_gen, timing,
                 progress) -> dict[int, tuple[float, float]]:
    """One pass over the training tokens, every active head trained on each batch.
    Returns ``{head index: (mean train loss, train mAP)}`` for the active heads."""
    active = [r for r in runs if r.active]
    for r in runs:
        r.head.train(r.active)
    accum, micro = cfg.train.grad_accum, 0
    loss_sum = {r.index: torch.zeros((), device=device) for r in active}
    probs = {r.index: [] for r in active}
    labels, n = [], 0
    mixing = cfg.train.mixup_alpha > 0 or cfg.train.cutmix_alpha > 0
    optimizer.zero_grad(set_to_none=True)
    for batch in tqdm(_timed_batches(loader, device, timing), total=len(loader), desc=f"epoch {epoch}",
                      leave=False, disable=not progress, unit="batch"):
        t = time.perf_counter()
        if mixing:
            batch = mix_batch(batch, cfg.train.mixup_alpha, cfg.train.cutmix_alpha, cfg.train.mix_prob, mix_gen)
        total = 0.0
        for r in active:
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
                logits = r.head(batch["tokens"]).float()
            loss = loss_fn(logits, batch["target"])
            total = total + loss
            loss_sum[r.index] += loss.detach() * len(logits)
            probs[r.index].append(torch.sigmoid(logits.detach()).cpu())
        if not torch.isfinite(total):
            bad = [r.index for r in active if not torch.isfinite(loss_sum[r.index])]
            raise FloatingPointError(f"non-finite loss at epoch {epoch} (heads {bad}; lr "
                                     f"{[runs[i].lr for i in bad]}), batch of samples {list(batch['sample_id'])[:8]}")
        (total / accum).backward()
        micro += 1
        if micro % accum == 0:
            _step(active, optimizer, scheduler, cfg.train.grad_clip)
        labels.append(batch["label"].cpu())
        n += len(batch["label"])
        timing["heads_s"] += time.perf_counter() - t
    if micro % accum != 0:
        _step(active, optimizer, scheduler, cfg.train.grad_clip)
    if n == 0:
        raise RuntimeError("the training loader produced no sample (every batch skipped?)")
    y, out = torch.cat(labels), {}
    for j, i in enumerate(loss_sum):
        with warnings.catch_warnings():  # a criterion without positives: warn once, not once per head
            if j:
                warnings.simplefilter("ignore")
            out[i] = (float(loss_sum[i]) / n, cvs_average_precision(torch.cat(probs[i]), y).map)
    return out


def _step(active: list[HeadRun], optimizer, scheduler, grad_clip: float) -> None:
    if grad_clip > 0:
        for r in active:  # per head: the clipping its own run would do
            torch.nn.utils.clip_grad_norm_([p for p in r.head.parameters() if p.requires_grad], grad_clip)
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)


@torch.no_grad()
def _score(runs, loader, device, loss_fn, timing, progress, desc) -> dict[int, Predictions]:
    """Every active head over one pass of ``loader``: ``{head index: Predictions}``."""
    active = [r for r in runs if r.active]
    for r in active:
        r.head.eval()
    probs = {r.index: [] for r in active}
    loss_sum = {r.index: 0.0 for r in active}
    ids, vids, frames, labels, means = [], [], [], [], []
    for batch in tqdm(_timed_batches(loader, device, timing), total=len(loader), desc=desc, leave=False,
                      disable=not progress, unit="batch"):
        t = time.perf_counter()
        for r in active:
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
                logits = r.head(batch["tokens"]).float()
            loss_sum[r.index] += float(loss_fn(logits, batch["target"])) * len(logits)
            probs[r.index].append(torch.sigmoid(logits).cpu())
        labels.append(batch["label"].cpu())
        means.append(batch["rater_mean"].cpu())
        ids += list(batch["sample_id"])
        vids += [int(v) for v in batch["video_id"]]
        frames += [int(f) for f in batch["frame"]]
        timing["heads_s"] += time.perf_counter() - t
    n = len(ids)
    cat = (lambda xs: torch.cat(xs) if xs else torch.zeros(0, 3))
    return {i: Predictions(ids, vids, frames, cat(labels), cat(means), cat(probs[i]),
                           loss_sum[i] / n if n else math.nan) for i in probs}


def winner_of(runs: list[HeadRun]) -> HeadRun:
    """The best val mAP; ties go to the first head in grid order."""
    best = runs[0]
    for r in runs[1:]:
        if r.best_map > best.best_map:
            best = r
    return best


def write_sweep_csv(path: Path, runs: list[HeadRun], winner: HeadRun | None = None) -> None:
    """One row per head and epoch, then one ``epoch=final`` row per head (its best epoch's values)."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=SWEEP_COLUMNS, extrasaction="ignore")
    w.writeheader()
    fmt = (lambda v: f"{v:.6g}" if isinstance(v, float) else ("" if v is None else v))
    for r in runs:
        for row in r.rows:
            w.writerow({k: fmt(v) for k, v in {**row, "head": r.index, "lr": r.lr, "weight_decay": r.weight_decay,
                                               "best_epoch": None, "winner": None}.items()})
    for r in runs:
        best = next((row for row in r.rows if row["epoch"] == r.best_epoch), {})
        w.writerow({k: fmt(v) for k, v in {**best, "head": r.index, "lr": r.lr, "weight_decay": r.weight_decay,
                                           "epoch": "final", "best_epoch": r.best_epoch,
                                           "winner": None if winner is None else int(r is winner)}.items()})
    atomic_write_text(path, buf.getvalue())


def _finish(cfg, runs, splits, backbone, run_dir, device, progress) -> dict:
    win = winner_of(runs)
    if win.best_state is not None:
        win.head.load_state_dict(win.best_state)
    write_sweep_csv(run_dir / "sweep.csv", runs, win)
    win_cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, lr=win.lr, weight_decay=win.weight_decay))
    # backbone stays on the CPU: the batches carry tokens, so it never runs
    model = CVSClassifier(backbone, win.head)
    save_classifier(run_dir / "checkpoints" / "best", model, win_cfg,
                    extra={"epoch": win.best_epoch, "val_map": win.best_map,
                           "sweep": {"head": win.index, "lr": win.lr, "weight_decay": win.weight_decay}})
    write_metrics(run_dir, win.rows)
    trainable, total = count_params(model)
    summary = {
        "name": cfg.name, "best_epoch": win.best_epoch, "epochs_run": len(win.rows),
        "backbone": backbone.name, "backbone_random_weights": backbone.is_random, "adapt": "frozen",
        "trainable_params": trainable, "total_params": total,
        "features_store": cfg.features.store, "lr": win.lr, "weight_decay": win.weight_decay,
        "cvsjepa_version": __version__, "torch": torch.__version__,
    }
    for role in ("val", "test"):
        if role not in splits or (role == "test" and not cfg.train.eval_test):
            continue
        loader = splits[role].loader(cfg.train.batch_size, False, cfg.data.num_workers)
        preds = predict_loader(model, loader, device, desc=role, progress=progress)
        ap = preds.ap()
        summary[f"{role}_map"], summary[f"{role}_ap"] = ap.map, list(ap.ap)
        summary[f"{role}_prevalence"] = prevalence(preds.labels)
        write_predictions(run_dir / f"predictions_{role}.csv", preds.sample_ids, preds.video_ids, preds.frames,
                          preds.labels, preds.rater_means, preds.probs, tuple(cfg.data.criteria))
    summary["best_val_map"] = summary.get("val_map")
    summary["sweep"] = {
        "k": len(runs), "lrs": list(cfg.sweep.lrs), "weight_decays": list(cfg.sweep.weight_decays),
        "winner": {"head": win.index, "lr": win.lr, "weight_decay": win.weight_decay, "best_epoch": win.best_epoch,
                   "val_map": win.best_map},
        "heads": [{"head": r.index, "lr": r.lr, "weight_decay": r.weight_decay,
                   "best_val_map": r.best_map if r.best_epoch else None, "best_epoch": r.best_epoch,
                   "best_val_ap": list(r.best_ap), "epochs_run": len(r.rows)} for r in runs],
    }
    if win.rows:
        plot_training_curve(run_dir, win.rows, win.best_epoch,
                            f"{cfg.name} - sweep winner lr {win.lr:g} wd {win.weight_decay:g} - {backbone.name}")
    log.info("sweep winner: head %d (lr %g, wd %g), val mAP %.4f at epoch %s%s", win.index, win.lr, win.weight_decay,
             win.best_map, win.best_epoch,
             f"; test mAP {summary['test_map']:.4f}" if summary.get("test_map") is not None else "")
    return summary
