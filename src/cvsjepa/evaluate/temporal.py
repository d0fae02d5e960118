"""Scoring a temporal run on a split's clips (``evaluate``, ``diagnose``): the same numbers training
got from the feature store, computed from the videos.

    every 1 fps second of each video of the splits (data/seconds.py: the causal clip ending there)
        -> the run's backbone and per-second pooler (CVSClassifier.embed_seconds): one embedding each
    each sample (keyframe, or every second for time-to-CVS) -> its history (heads/temporal.py:
        gather_history, seconds <= t of its own video) -> the temporal head -> probabilities

Each video's seconds are embedded once for every split and role that uses it (the keyframes and the
time-to-CVS seconds of the evaluated split share them). A second whose clip cannot be read
(``data.on_bad_sample=skip``) is masked out of every history, and a sample whose own second is
missing is left out, as the clip path leaves out a clip it cannot read.
"""

from __future__ import annotations

import logging

import torch
from tqdm.auto import tqdm

from ..criteria import CRITERIA
from ..data.dataset import batch_video_ids
from ..data.endoscapes import SplitIndex
from ..data.loaders import SplitData
from ..data.seconds import seconds_split
from ..heads.temporal import gather_history
from .inference import Predictions, move_batch

log = logging.getLogger("cvsjepa")


@torch.no_grad()
def embed_videos(model, cfg, splits: dict, device, batch_size: int, progress: bool = False) -> dict:
    """``{(video_id, frame): embedding [E]}`` for every second of every video the ``splits``
    (``{role: SplitData}``) hold, each video once."""
    out: dict = {}
    done: set = set()
    for role, split in splits.items():
        videos = {s.video_id for s in split.index.samples} - done
        if not videos:
            continue
        keep = [s for s in split.index.samples if s.video_id in videos]
        index = SplitIndex(split.index.split, keep, split.index.video_frames, frame_refs=split.index.frame_refs)
        secs = seconds_split(SplitData(index, None), cfg, model.backbone.crop_size)
        loader = secs.loader(batch_size, False, cfg.data.num_workers)
        for batch in tqdm(loader, desc=f"{role}: every second", leave=False, disable=not progress, unit="batch"):
            if batch is None:
                continue
            batch = move_batch(batch, device)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
                emb = model.embed_seconds(batch["video"]).float().cpu()
            for v, f, e in zip(batch_video_ids(batch["video_id"]), batch["frame"].tolist(), emb):
                out[(v, int(f))] = e
        done |= videos
    return out


def histories(index, embeddings: dict, offsets: tuple[int, ...], dim: int
              ) -> tuple[list, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(kept samples, table [R, E], rows [K], starts [K], missing [R])`` for the samples of ``index``
    whose own second was embedded: :func:`gather_history`'s inputs, the videos' seconds in order."""
    table, row, start, missing, kept = [], {}, {}, [], []
    for vid in sorted({s.video_id for s in index.samples}, key=str):
        start[vid] = len(table)
        for f in index.video_frames[vid]:
            e = embeddings.get((vid, f))
            row[(vid, f)] = len(table)
            missing.append(e is None)
            table.append(torch.zeros(dim) if e is None else e)
    for s in index.samples:
        if missing[row[(s.video_id, s.frame)]]:
            log.warning("skipping %s: its clip could not be read", s.sample_id)
        else:
            kept.append(s)
    tab = torch.stack(table) if table else torch.zeros(0, dim)
    return (kept, tab, torch.tensor([row[(s.video_id, s.frame)] for s in kept], dtype=torch.long),
            torch.tensor([start[s.video_id] for s in kept], dtype=torch.long), torch.tensor(missing, dtype=torch.bool))


@torch.no_grad()
def predict_temporal(model, split, embeddings: dict, device) -> Predictions:
    """The temporal head's probabilities for every sample of ``split`` whose own second was embedded,
    from the histories ``embeddings`` (:func:`embed_videos`) give."""
    kept, table, rows, starts, missing = histories(split.index, embeddings, model.head.offsets, model.pooler.out_dim)
    probs = []
    for i in range(0, len(kept), 256):
        history, mask = gather_history(table, rows[i:i + 256], starts[i:i + 256], model.head.offsets, missing)
        logits = model.head(history.to(device), mask.to(device)).float()
        probs.append(torch.sigmoid(logits).cpu())
    stack = (lambda xs: torch.tensor(xs, dtype=torch.float32).reshape(-1, len(CRITERIA)))  # noqa: E731
    return Predictions([s.sample_id for s in kept], [s.video_id for s in kept], [s.frame for s in kept],
                       stack([s.label for s in kept]), stack([s.rater_mean for s in kept]),
                       torch.cat(probs) if probs else torch.zeros(0, len(CRITERIA)), float("nan"))
