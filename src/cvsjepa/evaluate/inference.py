"""Run a classifier (or several heads) over a split and collect what every metric and report needs."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn
from torch.utils.data import DataLoader, Subset
from tqdm.auto import tqdm

from ..criteria import CRITERIA

from .. import distributed
from ..data.dataset import batch_video_ids, collate_skip_none
from .metrics import APResult, cvs_average_precision


@dataclass
class Predictions:
    sample_ids: list[str]
    video_ids: list[int | str]  # Endoscapes ids or SAGES video names
    frames: list[int]
    labels: torch.Tensor  # [N, 3] float 0/1
    rater_means: torch.Tensor  # [N, 3]
    probs: torch.Tensor  # [N, 3] sigmoid of the logits
    loss: float  # mean loss against the training targets (hard or soft); NaN without a loss

    def ap(self, where: str = "") -> APResult:
        """AP per criterion and mAP; ``where`` names the split in the warning about a criterion
        without positives."""
        return cvs_average_precision(self.probs, self.labels, where=where)


def move_batch(batch: dict, device: torch.device) -> dict:
    return {k: (v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v) for k, v in batch.items()}


def _cat(xs: list[torch.Tensor]) -> torch.Tensor:
    return torch.cat(xs) if xs else torch.zeros(0, len(CRITERIA))


@torch.no_grad()
def predict_many(logits_of: Callable[[dict], list[torch.Tensor]], k: int, loader, device: torch.device,
                 loss_fn: nn.Module | None = None, desc: str = "eval", progress: bool = True) -> list[Predictions]:
    """One pass over ``loader`` for ``k`` models at once: ``logits_of(batch)`` returns their logits
    (``k`` tensors [B, 3]); the batch is read and moved once for all of them."""
    ids, vids, frames, labels, means = [], [], [], [], []
    probs: list[list[torch.Tensor]] = [[] for _ in range(k)]
    loss_sum, n = [0.0] * k, 0
    for batch in tqdm(loader, desc=desc, leave=False, disable=not progress, unit="batch"):
        if batch is None:  # every sample of the batch was skipped (on_bad_sample=skip)
            continue
        batch = move_batch(batch, device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            outs = [logits.float() for logits in logits_of(batch)]
        for j, logits in enumerate(outs):
            if loss_fn is not None:
                loss_sum[j] += float(loss_fn(logits, batch["target"])) * len(logits)
            probs[j].append(torch.sigmoid(logits).cpu())
        n += len(batch["label"])
        labels.append(batch["label"].cpu())
        means.append(batch["rater_mean"].cpu())
        ids += list(batch["sample_id"])
        vids += batch_video_ids(batch["video_id"])
        frames += [int(f) for f in batch["frame"]]
    return [Predictions(ids, vids, frames, _cat(labels), _cat(means), _cat(probs[j]),
                        loss_sum[j] / n if (n and loss_fn is not None) else float("nan")) for j in range(k)]


@torch.no_grad()
def predict_loader(model: nn.Module, loader, device: torch.device, loss_fn: nn.Module | None = None,
                   desc: str = "eval", progress: bool = True, seg_confusion=None) -> Predictions:
    """CVS probabilities for every sample; with ``seg_confusion`` (a ConfusionMatrix) and a model that
    has a segmentation decoder, also accumulates its predictions on the masked samples."""
    model.eval()
    seg = seg_confusion is not None and getattr(model, "seg_head", None) is not None

    def logits_of(batch: dict) -> list[torch.Tensor]:
        if not seg:
            return [model(batch)]
        logits, masks = model.forward_multitask(batch)
        has = batch["has_mask"].bool()
        if has.any():
            seg_confusion.update(masks[has].argmax(1), batch["mask"][has])
        return [logits]

    return predict_many(logits_of, 1, loader, device, loss_fn, desc, progress)[0]


def predict_dataset(model: nn.Module, dataset, batch_size: int, num_workers: int, device: torch.device,
                    loss_fn: nn.Module | None = None, desc: str = "eval", progress: bool = True,
                    seg_confusion=None) -> Predictions:
    """Predictions for every sample of ``dataset`` exactly once, also under DDP: each rank scores its
    strided shard (no padding), then the shards are gathered and put back in dataset order."""
    idx = distributed.shard(len(dataset))
    loader = DataLoader(Subset(dataset, idx), batch_size=batch_size, shuffle=False, num_workers=num_workers,
                        collate_fn=collate_skip_none)
    preds = predict_loader(model, loader, device, loss_fn, desc=desc, progress=progress, seg_confusion=seg_confusion)
    parts = distributed.gather_objects((preds, seg_confusion.m if seg_confusion is not None else None))
    if len(parts) > 1:
        preds = merge_shards([p for p, _ in parts])
        if seg_confusion is not None:
            seg_confusion.m = sum(m for _, m in parts)
    return preds


def merge_shards(parts: list[Predictions]) -> Predictions:
    """Interleave strided shards back into dataset order (rank r held indices r, r + W, ...)."""
    w, n = len(parts), sum(len(p.sample_ids) for p in parts)
    order = [(i % w, i // w) for i in range(n)]
    pick = lambda attr: [getattr(parts[r], attr)[j] for r, j in order]  # noqa: E731
    stack = lambda attr: torch.stack(pick(attr)) if n else torch.zeros(0, len(CRITERIA))  # noqa: E731
    losses = [(p.loss, len(p.sample_ids)) for p in parts if len(p.sample_ids)]
    loss = sum(l * k for l, k in losses) / max(1, sum(k for _, k in losses))
    return Predictions(pick("sample_ids"), pick("video_ids"), pick("frames"), stack("labels"),
                       stack("rater_means"), stack("probs"), loss)
