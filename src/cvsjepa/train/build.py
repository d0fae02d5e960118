"""The building blocks `train` and `sweep` share: the model, the data, the optimizer's parameter
groups, the LR schedule and the training batches. A new option added here reaches both."""

from __future__ import annotations

import logging
import math
from contextlib import contextmanager
from dataclasses import dataclass, replace

import torch
from torch import nn
from torch.utils.data import DataLoader

from .. import distributed
from ..adapt import apply_adaptation, backbone_param_groups, params_breakdown
from ..backbones import build_backbone
from ..config import RunConfig, changes_from_defaults, is_temporal
from ..data.dataset import collate_skip_none
from ..errors import ConfigError
from ..heads import build_head, offsets_of
from ..heads.pooler import build_temporal_head
from ..model import CVSClassifier, build_seg_head, count_params, token_layout
from ..rundir import LOG_FILE, RunDir, with_saved_splits, write_split_file
from ..runtime import configure_threads, resolve_device, seed_everything
from ..tracking import check_available
from .sampling import balanced_weights
from .schedule import warmup_cosine

log = logging.getLogger("cvsjepa")


AUTO_MIN_STEPS_AFTER_WARMUP = 500  # train.min_steps=-1: no early stop (and no shorter budget) before warm-up + this


@dataclass(frozen=True)
class StagePlan:
    """One stage of a run: stage 1 (``train.*``), then stage 2 (``stage2.*``, exp9) if enabled.
    Budgets as configured (epochs or steps); :func:`stage_budget` turns them into optimizer steps."""
    stage: int
    epochs: int
    patience: int
    batch_size: int
    grad_accum: int
    head_lr: float
    backbone_lr: float
    warmup_epochs: float
    steps: int = 0  # > 0: the budget in optimizer steps (exact)
    warmup_steps: int = -1  # >= 0: the warm-up in optimizer steps (else warmup_epochs)
    min_steps: int = -1  # -1: AUTO_MIN_STEPS_AFTER_WARMUP after the warm-up
    smoothing: int = 1  # epochs in the moving mean that early stopping watches


@dataclass(frozen=True)
class Budget:
    """A stage's budget in optimizer steps, for a known number of steps per epoch (the one
    conversion between epochs and steps; the loop, the LR schedule and the logs all read it)."""
    steps_per_epoch: int
    total_steps: int  # optimizer steps the stage runs (the LR schedule's length)
    epochs: int  # epochs it takes; the last one is cut at total_steps
    warmup_steps: int
    min_steps: int  # no early stop before this many steps of the stage
    extended: bool = False  # an epoch budget shorter than min_steps was extended to it

    def describe(self, plan: StagePlan) -> str:
        asked = f"{plan.steps} steps" if plan.steps > 0 else f"{plan.epochs} epochs"
        out = (f"stage {plan.stage} budget: {asked} = {self.total_steps} optimizer steps ({self.steps_per_epoch} per "
               f"epoch, {self.epochs} epochs), warm-up {self.warmup_steps} steps, no early stop before step "
               f"{self.min_steps}")
        if self.extended:
            out += (f"; {plan.epochs} epochs would be {plan.epochs * self.steps_per_epoch} steps on this data, "
                    f"extended to train.min_steps (train.min_steps=0 trains exactly {plan.epochs} epochs)")
        return out


def stage_budget(plan: StagePlan, steps_per_epoch: int) -> Budget:
    """Epochs or steps -> optimizer steps. ``steps > 0`` is exact; an epoch budget is extended to
    ``min_steps`` when shorter (small datasets); ``min_steps`` never exceeds the budget."""
    spe = max(1, steps_per_epoch)
    warmup = plan.warmup_steps if plan.warmup_steps >= 0 else round(plan.warmup_epochs * spe)
    min_steps = plan.min_steps if plan.min_steps >= 0 else warmup + AUTO_MIN_STEPS_AFTER_WARMUP
    if plan.steps > 0:
        total, extended = plan.steps, False
    else:
        total = plan.epochs * spe
        extended = total < min_steps
        total = max(total, min_steps)
    return Budget(spe, total, math.ceil(total / spe), min(warmup, total), min(min_steps, total), extended)


def stage_plans(cfg: RunConfig) -> list[StagePlan]:
    t, s2 = cfg.train, cfg.stage2
    plans = [StagePlan(1, t.epochs, t.patience, t.batch_size, t.grad_accum, t.lr, cfg.adapt.lr, t.warmup_epochs,
                       steps=t.steps, warmup_steps=t.warmup_steps, min_steps=t.min_steps,
                       smoothing=t.patience_smoothing)]
    if s2.enabled:  # stage 2 starts from stage 1's trained head: no step floor (exp9's 5 epochs stay 5)
        plans.append(StagePlan(2, s2.epochs, s2.patience, s2.batch_size, s2.grad_accum, s2.lr, s2.backbone_lr, 0.0,
                               warmup_steps=0, min_steps=0, smoothing=t.patience_smoothing))
    return plans


# ------------------------------------------------------------------------------------------ model
def build_model(cfg: RunConfig, device: torch.device | str = "cpu", allow_random: bool = False) -> CVSClassifier:
    """Backbone (with the configured adaptation) + head. ``allow_random`` lets a dry run count the
    parameters of a preset without its weights."""
    bcfg = cfg.backbone
    if allow_random and not bcfg.path and bcfg.preset != "tiny":
        bcfg = replace(bcfg, random_weights=True)
    backbone = build_backbone(bcfg, device=device).freeze()
    if cfg.data.frames % backbone.tubelet_size:
        raise ConfigError(f"data.frames={cfg.data.frames} must be a multiple of the backbone's tubelet size "
                          f"({backbone.tubelet_size})")
    fingerprint = backbone.weights_fingerprint()  # of the weights as loaded, before any adapter
    apply_adaptation(backbone, cfg.adapt)
    pooler = temporal_pooler(cfg, backbone)
    head = (build_temporal_head(cfg.head, pooler) if pooler else
            build_head(cfg.head, backbone.embed_dim, layout=token_layout(cfg, backbone)))
    return CVSClassifier(backbone, head, base_fingerprint=fingerprint, seg_head=build_seg_head(cfg, backbone),
                         pooler=pooler).to(device)


def temporal_pooler(cfg: RunConfig, backbone):
    """A temporal run's per-second pooler (``features.second_pooler``: the mean, or the stage-1 run's
    head, hash-checked), which its checkpoint keeps; None for a clip head."""
    if not is_temporal(cfg.head.type):
        return None
    from ..features.pooler import second_pooler

    return second_pooler(cfg, backbone)[0]


def with_loaded_backbone(cfg: RunConfig, backbone) -> RunConfig:
    """``cfg`` with ``backbone.preset`` set to the shape the weights at ``backbone.path`` have, so that
    config.yaml, checkpoints and summaries say what was loaded (a default ``vitl`` never describes a
    tiny model; a contradicting explicit preset was refused by ``build_backbone``)."""
    if not cfg.backbone.path or cfg.backbone.preset == backbone.preset:
        return cfg
    return replace(cfg, backbone=replace(cfg.backbone, preset=backbone.preset))


def dry_run(cfg: RunConfig) -> dict:
    """Build the model without data or training: parameter accounting for `train --dry-run`."""
    model = build_model(cfg, "cpu", allow_random=True)
    trainable, total = count_params(model)
    return {"name": cfg.name, "backbone": model.backbone.name, "backbone_preset": model.backbone.preset,
            "adapt": cfg.adapt.mode,
            "trainable_params": trainable, "total_params": total,
            "trainable_breakdown": params_breakdown(model),
            "trainable_fraction": round(trainable / total, 5)}


# ------------------------------------------------------------------------------------------ optimizer
def param_groups(modules: list[nn.Module], lr: float, weight_decay: float, name: str = "head") -> list[dict]:
    """AdamW groups for the trainable parameters of ``modules``: matrices decay, biases and norms
    (1-d tensors) do not. Each group carries ``base_lr`` and its ``name``."""
    params = [p for m in modules for p in m.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.ndim > 1], "lr": lr, "weight_decay": weight_decay, "name": name},
              {"params": [p for p in params if p.ndim <= 1], "lr": lr, "weight_decay": 0.0,
               "name": f"{name}.no_decay"}]
    return [{**g, "base_lr": g["lr"]} for g in groups if g["params"]]


def classifier_param_groups(model: CVSClassifier, cfg: RunConfig, head_lr: float | None = None,
                            backbone_lr: float | None = None) -> list[dict]:
    """The head (and segmentation decoder) at ``head_lr``; when the backbone trains, one group per
    block for layer-wise LR decay (``adapt.llrd``) at ``backbone_lr``."""
    head_lr = cfg.train.lr if head_lr is None else head_lr
    backbone_lr = cfg.adapt.lr if backbone_lr is None else backbone_lr
    heads = [model.head] + ([model.seg_head] if model.seg_head is not None else [])
    groups = param_groups(heads, head_lr, cfg.train.weight_decay)
    if model.backbone is not None and not model.backbone_frozen:
        extra = backbone_param_groups(model.backbone, backbone_lr, cfg.adapt.llrd, cfg.train.weight_decay)
        groups += [{**g, "base_lr": g["lr"]} for g in extra if g["params"]]
    return groups


def build_optimizer(model: CVSClassifier, cfg: RunConfig, head_lr: float | None = None,
                    backbone_lr: float | None = None) -> torch.optim.AdamW:
    return torch.optim.AdamW(classifier_param_groups(model, cfg, head_lr, backbone_lr))


def make_scheduler(optimizer: torch.optim.Optimizer, budget: Budget,
                   min_lr_ratio: float) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up over ``budget.warmup_steps``, then cosine to ``min_lr_ratio`` at
    ``budget.total_steps``, stepped per optimizer step."""
    total, warmup = budget.total_steps, budget.warmup_steps
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: warmup_cosine(s, total, warmup, min_lr_ratio))


# ------------------------------------------------------------------------------------------ data
def load_data(cfg: RunConfig, crop: int, roles=("train", "val", "test"), backbone=None, progress: bool = False) -> dict:
    """JPEG clips, or stored tokens when ``features.store`` is set (same batch keys but ``tokens``).
    ``backbone``: the one already built, so the store's key is checked against it without a rebuild."""
    if cfg.resume:  # a resumed run reads its recorded split assignment (SAGES), never a fresh draw
        cfg = with_saved_splits(cfg, cfg.out)
    if cfg.features.store and is_temporal(cfg.head.type):  # keyframe histories of per-second embeddings
        from ..features.seconds import open_seconds_splits

        if backbone is None:
            backbone = build_backbone(cfg.backbone).freeze()
        return open_seconds_splits(cfg, offsets_of(cfg.head), roles=roles, backbone=backbone, progress=progress)
    if cfg.features.store:
        from ..features.dataset import open_store_splits

        return open_store_splits(cfg, roles=roles, backbone=backbone, progress=progress)
    from ..data.loaders import build_splits

    return build_splits(cfg, crop=crop, roles=roles)


def split_labels(split) -> torch.Tensor:
    return torch.tensor([s.label for s in split.index.samples], dtype=torch.float32)


def train_loader(cfg: RunConfig, split, plan: StagePlan) -> tuple[DataLoader, distributed.GlobalBatchSampler, int]:
    """The training batches of a stage, a pure function of (seed, stage, epoch) on any number of
    processes; returns the loader, its sampler (``set_epoch`` each epoch) and optimizer steps per epoch."""
    weights = balanced_weights(split_labels(split)) if cfg.train.sampler == "balanced" else None
    # clips decoded from videos (SAGES) are shuffled within blocks of videos: each decoded once per epoch
    sampler = distributed.GlobalBatchSampler(len(split.dataset), plan.batch_size,
                                             cfg.seed + 1000 * (plan.stage - 1), weights,
                                             getattr(split.dataset, "decode_groups", None))
    loader = DataLoader(split.dataset, batch_sampler=sampler, num_workers=cfg.data.num_workers,
                        collate_fn=collate_skip_none)
    return loader, sampler, math.ceil(len(loader) / plan.grad_accum)


# ------------------------------------------------------------------------------------------ run directory
def prepare(cfg: RunConfig, processes: bool = True) -> torch.device:
    """What every run does first: check the data is named, set threads and seeds, pick the device
    (joining torchrun's process group when ``processes`` and launched by it)."""
    if not cfg.data.root:
        raise ConfigError("data.root is not set: pass data.root=/path/to/endoscapes (or a `cvsjepa synth` folder)")
    check_available(cfg.train.loggers)  # a missing tracker package, before any run directory is claimed
    configure_threads(cfg.train.threads, cfg.data.num_workers)
    seed_everything(cfg.seed)
    return (distributed.setup() if processes else None) or resolve_device(cfg.train.device)


def open_run(cfg: RunConfig, splits: dict) -> tuple[RunDir, dict | None]:
    """A new run directory claimed by rank 0 (and named to every rank), recording the split
    assignment of ``splits`` (SAGES), or with ``resume=true`` the existing one in ``out`` after
    checking its config, with its last complete resume state."""
    if cfg.resume:
        run = RunDir.open(cfg.out)
        if run.is_finished():
            return run, None
        run.check_resumable(cfg)
        return run, run.load_resume()
    run = RunDir.create(cfg) if distributed.is_main() else None
    if run is not None:
        write_split_file(run.path, splits)
    return RunDir(distributed.gather_objects(str(run.path) if run else None)[0]), None  # rank 0 named it


@contextmanager
def run_log(run: RunDir, cfg: RunConfig):
    """The run's log file (rank 0) next to the terminal, for the duration of the block; it starts
    with the config's differences from the defaults (the whole config is config.yaml)."""
    handler = logging.FileHandler(run / LOG_FILE) if distributed.is_main() else logging.NullHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    log.addHandler(handler)
    if distributed.is_main():
        changed = changes_from_defaults(cfg)
        log.info("config (%s):%s", "differences from the defaults" if changed else "the defaults",
                 "".join(f"\n  {line}" for line in changed))
    try:
        yield
    finally:
        log.removeHandler(handler)
        handler.close()
