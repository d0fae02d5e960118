"""Run a classifier over a split and collect what every metric and report needs."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from tqdm.auto import tqdm

from .metrics import APResult, cvs_average_precision


@dataclass
class Predictions:
    sample_ids: list[str]
    video_ids: list[int]
    frames: list[int]
    labels: torch.Tensor  # [N, 3] float 0/1
    rater_means: torch.Tensor  # [N, 3]
    probs: torch.Tensor  # [N, 3] sigmoid of the logits
    loss: float  # mean loss against the training targets (hard or soft); NaN without a loss

    def ap(self) -> APResult:
        return cvs_average_precision(self.probs, self.labels)


def move_batch(batch: dict, device: torch.device) -> dict:
    return {k: (v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v) for k, v in batch.items()}


@torch.no_grad()
def predict_loader(model: nn.Module, loader, device: torch.device, loss_fn: nn.Module | None = None,
                   desc: str = "eval", progress: bool = True, seg_confusion=None) -> Predictions:
    """CVS probabilities for every sample; with ``seg_confusion`` (a ConfusionMatrix) and a model that
    has a segmentation decoder, also accumulates its predictions on the masked samples."""
    model.eval()
    ids, vids, frames, labels, means, probs = [], [], [], [], [], []
    loss_sum, n = 0.0, 0
    for batch in tqdm(loader, desc=desc, leave=False, disable=not progress, unit="batch"):
        if batch is None:  # every sample of the batch was skipped (on_bad_sample=skip)
            continue
        batch = move_batch(batch, device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            if seg_confusion is not None and getattr(model, "seg_head", None) is not None:
                logits, seg = model.forward_multitask(batch)
                has = batch["has_mask"].bool()
                if has.any():
                    seg_confusion.update(seg[has].argmax(1), batch["mask"][has])
            else:
                logits = model(batch)
            logits = logits.float()
        if loss_fn is not None:
            loss_sum += float(loss_fn(logits, batch["target"])) * len(logits)
        n += len(logits)
        probs.append(torch.sigmoid(logits).cpu())
        labels.append(batch["label"].cpu())
        means.append(batch["rater_mean"].cpu())
        ids += list(batch["sample_id"])
        vids += [int(v) for v in batch["video_id"]]
        frames += [int(f) for f in batch["frame"]]
    cat = (lambda xs: torch.cat(xs) if xs else torch.zeros(0, 3))
    return Predictions(ids, vids, frames, cat(labels), cat(means), cat(probs),
                       loss_sum / n if (n and loss_fn is not None) else float("nan"))
