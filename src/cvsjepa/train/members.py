"""What the training loop trains: one or more *members*, each an independently optimised model with
its own learning rate and weight decay, gradient clipping, non-finite policy, early stopping and
best weights.

    train   one member: the classifier (adapted backbone + head [+ segmentation decoder])
    sweep   K members: heads over the same stored tokens, one per (lr, weight decay) of the grid

Members share no parameter, so the gradient of the sum of their losses with respect to one
member's parameters is that member's own gradient: K members trained together see exactly what K
separate runs with the same seed would.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..checkpoint import WEIGHTS_FILE

log = logging.getLogger("cvsjepa")


@dataclass
class Progress:
    """One member's history and early-stopping state, carried from epoch to epoch and stage to stage.

    Two scores per epoch, for two decisions:

    * the **best checkpoint** is the epoch with the best *raw* val mAP: a checkpoint holds one epoch's
      weights, and the raw mAP is that epoch's own score (a smoothed value mixes in other epochs' weights);
    * **early stopping** watches the *smoothed* val mAP, the mean of the stage's last ``smoothing``
      raw values (fewer at the start of a stage): ``bad_epochs`` counts the epochs since it last set a
      record, so one lucky or unlucky epoch on a small val split neither resets nor triggers it.
    """
    rows: list[dict] = field(default_factory=list)  # metrics.csv rows
    best_map: float = -math.inf
    best_epoch: int | None = None
    best_stage: int | None = None
    bad_epochs: int = 0
    stage_best: dict[int, float] = field(default_factory=dict)
    recent: list[float] = field(default_factory=list)  # the stage's last raw scores (the smoothing window)
    best_smoothed: float = -math.inf  # the stage's best smoothed score

    def start_stage(self) -> None:
        """A new stage starts its early stopping afresh (the best checkpoint carries over)."""
        self.bad_epochs, self.recent, self.best_smoothed = 0, [], -math.inf

    def update(self, score: float, epoch: int, stage: int, smoothing: int = 1) -> bool:
        """Record an epoch's val mAP (``-inf`` when undefined); True when it is a new best (raw)."""
        self.stage_best[stage] = max(self.stage_best.get(stage, -math.inf), score)
        self.recent = (self.recent + [score])[-max(1, smoothing):]
        smoothed = sum(self.recent) / len(self.recent)  # -inf if any is undefined: never a record
        if smoothed > self.best_smoothed:
            self.best_smoothed, self.bad_epochs = smoothed, 0
        else:
            self.bad_epochs += 1
        if score > self.best_map:
            self.best_map, self.best_epoch, self.best_stage = score, epoch, stage
            return True
        return False

    def should_stop(self, patience: int, steps_done: int, min_steps: int) -> bool:
        """Early stopping: ``patience`` epochs without a better smoothed val mAP, and never before
        ``min_steps`` optimizer steps of the stage (0 patience = never)."""
        return patience > 0 and self.bad_epochs >= patience and steps_done >= min_steps


@dataclass
class Member:
    index: int
    label: str  # how logs and errors name it ("" for the one classifier of `train`)
    lr: float
    weight_decay: float
    progress: Progress = field(default_factory=Progress)
    active: bool = True  # False once early stopping ends it (for the rest of the stage)
    skipped: int = 0  # batches whose loss was non-finite and skipped (train.on_nonfinite=skip)
    best_state: dict[str, torch.Tensor] | None = None  # CPU copy of its weights at the best epoch

    def snapshot(self, state: dict[str, torch.Tensor]) -> None:
        self.best_state = {k: v.detach().to("cpu", copy=True) for k, v in state.items()}

    def resume_record(self) -> dict:
        from dataclasses import asdict

        return {"progress": asdict(self.progress), "active": self.active, "skipped": self.skipped}

    def load_record(self, rec: dict) -> None:
        p = rec["progress"]
        self.progress = Progress(**{**p, "stage_best": {int(k): v for k, v in p["stage_best"].items()}})
        self.active, self.skipped = bool(rec["active"]), int(rec["skipped"])


class NonFiniteGuard:
    """A NaN/inf loss stops the run, naming the member, step, samples and last good checkpoint, or
    (``train.on_nonfinite=skip``) drops that member's loss for the batch and counts it. A member
    never trains on a non-finite loss."""

    def __init__(self, policy: str, last_good: Path):
        self.policy, self.last_good = policy, Path(last_good)

    def keep(self, losses: list[torch.Tensor], members: list[Member], epoch: int, step: int, batch: dict) -> list[bool]:
        finite = [bool(torch.isfinite(loss)) for loss in losses]
        if all(finite):
            return finite
        ids = list(batch["sample_id"])
        bad = [m for m, ok in zip(members, finite) if not ok]
        names = ", ".join(m.label for m in bad if m.label)
        value = next(loss.item() for loss, ok in zip(losses, finite) if not ok)
        if self.policy == "skip":
            for m in bad:
                m.skipped += 1
                log.warning("non-finite loss (%s) at epoch %d step %d%s: batch skipped (samples %s); %d skipped "
                            "so far", value, epoch, step, f" for {m.label}" if m.label else "", ids[:8], m.skipped)
            return finite
        good = self.last_good if (self.last_good / WEIGHTS_FILE).is_file() else "none yet"
        raise FloatingPointError(f"non-finite loss ({value}) at epoch {epoch}, step {step}"
                                 f"{f' ({names})' if names else ''}, samples {ids[:8]}{' ...' if len(ids) > 8 else ''}; "
                                 f"last good checkpoint: {good}. Lower the learning rate, or set "
                                 f"train.on_nonfinite=skip")
