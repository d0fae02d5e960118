"""The training loop: one readable function from a config to a finished run directory.

    for each epoch:
        train: micro-batches -> loss / grad_accum -> backward; every grad_accum: clip, step, LR step
        validate: AP per criterion on val, mAP (nanmean)
        log a metrics.csv row; keep the best checkpoint by val mAP; write the resume state
        stop when val mAP has not improved for `patience` epochs
    reload the best checkpoint, score val and test, write predictions, summary.json, the curve

Checkpoints are chosen on val only; the test split is scored once, at the end, on the best model.
"""

from __future__ import annotations

import json
import logging
import math
import random
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from .. import __version__
from ..backbones import build_backbone
from ..checkpoint import load_weights_strict, save_classifier
from ..config import RunConfig
from ..data.loaders import build_splits
from ..errors import ConfigError
from ..evaluate.inference import Predictions, move_batch, predict_loader
from ..evaluate.metrics import cvs_average_precision, prevalence
from ..heads import build_head
from ..io import atomic_torch_save, atomic_write_json, load_safetensors
from ..model import CVSClassifier, count_params
from .losses import build_loss
from .rundir import create_run_dir, plot_training_curve, write_metrics, write_predictions
from .schedule import warmup_cosine

log = logging.getLogger("cvsjepa")


@dataclass
class TrainResult:
    run_dir: Path
    summary: dict


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


def build_optimizer(model: CVSClassifier, cfg: RunConfig) -> torch.optim.Optimizer:
    """AdamW with one parameter group per part, so each part can carry its own learning rate.
    Biases and norm weights (1-d tensors) get no weight decay."""
    groups = []
    for part, lr in (("head", cfg.train.lr),):
        module = getattr(model, part)
        decay = [p for p in module.parameters() if p.requires_grad and p.ndim > 1]
        no_decay = [p for p in module.parameters() if p.requires_grad and p.ndim <= 1]
        groups.append({"params": decay, "lr": lr, "weight_decay": cfg.train.weight_decay, "name": part})
        groups.append({"params": no_decay, "lr": lr, "weight_decay": 0.0, "name": f"{part}_no_decay"})
    return torch.optim.AdamW([g for g in groups if g["params"]])


def train_one_epoch(model, loader, loss_fn, optimizer, scheduler, device, cfg: RunConfig,
                    epoch: int, progress: bool) -> tuple[float, float]:
    """Returns (mean train loss, train mAP over the epoch's own predictions)."""
    model.train()
    if model.backbone is not None and model.backbone_frozen:
        model.backbone.eval()  # frozen means eval(): no dropout / drop-path noise in the features
    accum = cfg.train.grad_accum
    loss_sum, n, probs, labels = 0.0, 0, [], []
    optimizer.zero_grad(set_to_none=True)
    bar = tqdm(loader, desc=f"epoch {epoch}", leave=False, disable=not progress, unit="batch")
    micro = 0
    for batch in bar:
        if batch is None:
            continue
        batch = move_batch(batch, device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            logits = model(batch).float()
        loss = loss_fn(logits, batch["target"])
        if not torch.isfinite(loss):
            raise FloatingPointError(f"non-finite loss {loss.item()} at epoch {epoch}, batch of samples "
                                     f"{list(batch['sample_id'])[:8]}")
        (loss / accum).backward()
        micro += 1
        if micro % accum == 0:
            _optimizer_step(model, optimizer, scheduler, cfg.train.grad_clip)
        loss_sum += loss.item() * len(logits)
        n += len(logits)
        probs.append(torch.sigmoid(logits.detach()).cpu())
        labels.append(batch["label"].cpu())
        bar.set_postfix(loss=f"{loss_sum / n:.4f}", lr=f"{optimizer.param_groups[0]['lr']:.2e}")
    if micro % accum != 0:  # a partial accumulation at the end of the epoch still counts
        _optimizer_step(model, optimizer, scheduler, cfg.train.grad_clip)
    if n == 0:
        raise RuntimeError("the training loader produced no sample (every batch skipped?)")
    train_map = cvs_average_precision(torch.cat(probs), torch.cat(labels)).map
    return loss_sum / n, train_map


def _optimizer_step(model, optimizer, scheduler, grad_clip: float) -> None:
    if grad_clip > 0:
        torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], grad_clip)
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)


def _git_hash() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                             cwd=Path(__file__).parent, timeout=5)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def _finite_or_neg_inf(x: float) -> float:
    return x if not math.isnan(x) else -math.inf


def train(cfg: RunConfig, progress: bool = True) -> TrainResult:
    t0 = time.time()
    if not cfg.data.root:
        raise ConfigError("data.root is not set: pass data.root=/path/to/endoscapes (or a `cvsjepa synth` folder)")
    seed_everything(cfg.seed)
    device = resolve_device(cfg.train.device)

    backbone = build_backbone(cfg.backbone, device=device).freeze()
    if cfg.data.frames % backbone.tubelet_size:
        raise ConfigError(f"data.frames={cfg.data.frames} must be a multiple of the backbone's tubelet size "
                          f"({backbone.tubelet_size})")
    head = build_head(cfg.head, backbone.embed_dim)
    model = CVSClassifier(backbone, head).to(device)
    splits = build_splits(cfg, crop=backbone.crop_size)
    if "train" not in splits or "val" not in splits:
        raise ConfigError("training needs data.train_split and data.val_split")

    run_dir = create_run_dir(cfg)
    file_log = logging.FileHandler(run_dir / "train.log")
    file_log.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    log.addHandler(file_log)
    try:
        return _fit(cfg, model, splits, run_dir, device, t0, progress)
    finally:
        log.removeHandler(file_log)
        file_log.close()


def _fit(cfg, model, splits, run_dir, device, t0, progress) -> TrainResult:
    trainable, total = count_params(model)
    log.info("run directory: %s", run_dir)
    log.info("backbone: %s | head: %s | trainable %s / total %s params", model.backbone.name, cfg.head.type,
             f"{trainable:,}", f"{total:,}")
    for role, sd in splits.items():
        log.info("%s: %d keyframe clips from %d videos, positive rate %s", role, len(sd.index.samples),
                 len(sd.index.video_frames), [round(p, 3) for p in _label_rates(sd)])

    gen = torch.Generator().manual_seed(cfg.seed)
    train_loader = splits["train"].loader(cfg.train.batch_size, True, cfg.data.num_workers, gen)
    val_loader = splits["val"].loader(cfg.train.batch_size, False, cfg.data.num_workers)
    loss_fn = build_loss(cfg.loss)
    optimizer = build_optimizer(model, cfg)
    steps_per_epoch = math.ceil(len(train_loader) / cfg.train.grad_accum)
    total_steps = steps_per_epoch * cfg.train.epochs
    warmup_steps = round(cfg.train.warmup_epochs * steps_per_epoch)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: warmup_cosine(s, total_steps, warmup_steps, cfg.train.min_lr_ratio))

    rows, best_map, best_epoch, bad_epochs = [], -math.inf, None, 0
    best_dir = run_dir / "checkpoints" / "best"
    for epoch in range(1, cfg.train.epochs + 1):
        te = time.time()
        lrs = {g["name"]: g["lr"] for g in optimizer.param_groups}
        train_loss, train_map = train_one_epoch(model, train_loader, loss_fn, optimizer, scheduler, device,
                                                cfg, epoch, progress)
        val = predict_loader(model, val_loader, device, loss_fn, desc="val", progress=progress)
        val_ap = val.ap()
        row = {"epoch": epoch, "stage": 1, "train_loss": train_loss, "train_map": train_map,
               "val_loss": val.loss, "val_map": val_ap.map, "lr_head": lrs.get("head"),
               "lr_backbone": lrs.get("backbone"), "seconds": time.time() - te,
               **{f"val_ap_{c}": a for c, a in zip(("C1", "C2", "C3"), val_ap.ap)}}
        rows.append(row)
        write_metrics(run_dir, rows)
        improved = _finite_or_neg_inf(val_ap.map) > best_map
        if improved:
            best_map, best_epoch, bad_epochs = val_ap.map, epoch, 0
            save_classifier(best_dir, model, cfg, extra={"epoch": epoch, "val_map": val_ap.map})
        else:
            bad_epochs += 1
        _save_last(run_dir, model, optimizer, scheduler, epoch, best_map, best_epoch, bad_epochs, cfg)
        log.info("epoch %d: train loss %.4f mAP %.4f | val loss %.4f mAP %.4f AP %s%s", epoch, train_loss,
                 train_map, val.loss, val_ap.map, [round(a, 4) for a in val_ap.ap], "  *best*" if improved else "")
        if cfg.train.patience and bad_epochs >= cfg.train.patience:
            log.info("early stop: val mAP has not improved for %d epochs (best %.4f at epoch %s)",
                     bad_epochs, best_map, best_epoch)
            break

    summary = _finish(cfg, model, splits, run_dir, device, rows, best_epoch, progress)
    summary["seconds"] = round(time.time() - t0, 1)
    atomic_write_json(run_dir / "summary.json", summary)
    return TrainResult(run_dir, summary)


def _label_rates(sd) -> list[float]:
    return prevalence(torch.tensor([s.label for s in sd.index.samples], dtype=torch.float32))


def _save_last(run_dir, model, optimizer, scheduler, epoch, best_map, best_epoch, bad_epochs, cfg) -> None:
    from ..io import atomic_save_safetensors

    ckpt = run_dir / "checkpoints"
    atomic_save_safetensors(ckpt / "last.safetensors", model.trainable_state_dict())
    atomic_torch_save(ckpt / "last_state.pt", {
        "epoch": epoch, "best_map": best_map, "best_epoch": best_epoch, "bad_epochs": bad_epochs,
        "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
        "torch_rng": torch.get_rng_state(), "seed": cfg.seed,
    })


def _finish(cfg, model, splits, run_dir, device, rows, best_epoch, progress) -> dict:
    """Reload the best weights, score val (and test), write predictions, the plot and the summary."""
    best_dir = run_dir / "checkpoints" / "best"
    if best_epoch is not None:
        load_weights_strict(model, load_safetensors(best_dir / "model.safetensors"), best_dir)
    trainable, total = count_params(model)
    summary = {
        "name": cfg.name, "best_epoch": best_epoch, "epochs_run": len(rows),
        "backbone": model.backbone.name, "backbone_random_weights": model.backbone.is_random,
        "trainable_params": trainable, "total_params": total,
        "params_breakdown": {"head": count_params(model.head)[0]},
        "cvsjepa_version": __version__, "git": _git_hash(), "torch": torch.__version__,
    }
    oracle = _read_oracle(cfg)
    for role in ("val", "test"):
        if role not in splits or (role == "test" and not cfg.train.eval_test):
            continue
        bs = cfg.train.batch_size
        preds: Predictions = predict_loader(model, splits[role].loader(bs, False, cfg.data.num_workers), device,
                                            desc=role, progress=progress)
        ap = preds.ap()
        summary[f"{role}_map"] = ap.map
        summary[f"{role}_ap"] = list(ap.ap)
        summary[f"{role}_prevalence"] = prevalence(preds.labels)
        if oracle and splits[role].index.split in oracle:
            summary[f"{role}_oracle_map"] = oracle[splits[role].index.split]["map"]
        write_predictions(run_dir / f"predictions_{role}.csv", preds.sample_ids, preds.video_ids, preds.frames,
                          preds.labels, preds.rater_means, preds.probs, tuple(cfg.data.criteria))
    summary["best_val_map"] = summary.get("val_map")
    summary["val_ap"] = summary.get("val_ap")
    if rows:
        plot_training_curve(run_dir, rows, best_epoch, f"{cfg.name} - {model.backbone.name}")
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
