"""Test-time augmentation: deterministic spatial views x temporal offsets, probabilities averaged.

Spatial views are crops of the *resized* frame (the same resize as ``data/transforms.py``) at
shifted positions. With ``m_y, m_x`` the free margins on each side of the center crop, view k
moves the crop window by ``(dy_k * shift * m_y, dx_k * shift * m_x)`` pixels, with ``(dy, dx)``
taken in this order (center first):

    center, left, right, up, down, up-left, up-right, down-left, down-right

Endoscapes frames are 854x480, so at crop 256 the frame is resized to 519x292 and the margins are
131 px horizontally and 18 px vertically: left/right views see genuinely different borders.

Temporal offsets shift the end of the causal clip back by ``k`` seconds (``k`` 1 fps frames of the
video's frame list), keeping the clip length and stride; offset 0 is the keyframe's own clip. A
clip that would start before the video's first frame repeats that frame, as the index does.

The prediction of a keyframe is the mean of the sigmoid probabilities over all views x offsets.
With one view (or ``shift=0``) and offsets all 0 every view is the plain clip, so the average
equals the prediction without TTA.

Shifted spatial views move the ``center`` crop. A run trained with ``data.view=letterbox`` or
``three_crops`` already sees the whole frame: it takes temporal offsets only (``views=1``), each
clip preprocessed by ``data/transforms.py`` exactly as in training (three_crops: its 3 crops
pooled by the model, as always).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from ..data.dataset import batch_video_ids, collate_skip_none, load_preprocessed, preprocess_pixels
from ..data.endoscapes import Sample, SplitIndex, causal_clip
from ..data.frames import read_frame
from ..data.transforms import IMAGENET_MEAN, IMAGENET_STD, crop_box, stack_clip
from ..data.video_frames import FrameSource, VideoFrame
from ..errors import ConfigError, DataError
from .inference import Predictions, move_batch

VIEW_DIRECTIONS = ((0, 0), (0, -1), (0, 1), (-1, 0), (1, 0), (-1, -1), (-1, 1), (1, -1), (1, 1))


@dataclass(frozen=True)
class TTASettings:
    views: int = 1  # spatial views, center first (at most len(VIEW_DIRECTIONS))
    offsets: tuple[int, ...] = (0,)  # temporal offsets in seconds (1 fps frames); 0 = the keyframe
    shift: float = 0.5  # fraction of the free margin a shifted view moves by (0 = all views centered)

    def __post_init__(self):
        if not 1 <= self.views <= len(VIEW_DIRECTIONS):
            raise ConfigError(f"TTA spatial views must be between 1 and {len(VIEW_DIRECTIONS)}, got {self.views}")
        if not self.offsets or any(k < 0 for k in self.offsets):
            raise ConfigError(f"TTA temporal offsets must be >= 0 seconds, got {list(self.offsets)}")
        if not 0 <= self.shift <= 1:
            raise ConfigError(f"TTA shift must be in [0, 1] (a fraction of the margin), got {self.shift}")

    @property
    def n_views(self) -> int:
        return self.views * len(self.offsets)

    @property
    def is_plain(self) -> bool:
        return self.views == 1 and tuple(self.offsets) == (0,)

    def describe(self) -> dict:
        return {"spatial_views": self.views, "view_directions": [list(d) for d in VIEW_DIRECTIONS[:self.views]],
                "shift_fraction_of_margin": self.shift, "temporal_offsets_s": list(self.offsets),
                "n_views": self.n_views, "average": "mean of sigmoid probabilities over views x offsets"}


@functools.lru_cache(maxsize=256)
def shifted_window(new_h: int, new_w: int, crop: int, direction: tuple[int, int], shift: float) -> tuple[int, int]:
    """``(top, left)`` of a view's crop window in a resized frame of ``new_h x new_w``: the center
    window of ``crop_box`` moved by ``direction * shift`` times the margin, kept inside the frame."""
    top, left = (new_h - crop) // 2, (new_w - crop) // 2  # = crop_box's center window
    dy, dx = direction
    return (min(max(top + round(dy * shift * top), 0), new_h - crop),
            min(max(left + round(dx * shift * left), 0), new_w - crop))


def view_window(height: int, width: int, crop: int, direction: tuple[int, int], shift: float) -> tuple[int, int, int, int]:
    """``(new_h, new_w, top, left)`` of a view's crop window for an original frame of ``height x width``."""
    new_h, new_w, *_ = crop_box(height, width, crop)
    return (new_h, new_w, *shifted_window(new_h, new_w, crop, direction, shift))


def resize_frame(path: Path, crop: int) -> torch.Tensor:
    """One JPEG -> float32 ``[3, new_h, new_w]`` in [0, 255], resized exactly as ``preprocess_frames`` does."""
    return resize_pixels(read_frame(path), crop)


def resize_pixels(frame: torch.Tensor, crop: int) -> torch.Tensor:
    """uint8 ``[H, W, 3]`` -> float32 ``[3, new_h, new_w]`` in [0, 255] (``resize_frame`` of decoded pixels)."""
    h, w, _ = frame.shape
    new_h, new_w, *_ = crop_box(h, w, crop)
    x = frame.permute(2, 0, 1).unsqueeze(0).float()
    return F.interpolate(x, size=(new_h, new_w), mode="bilinear", antialias=True, align_corners=False)[0]


def crop_and_normalise(resized: torch.Tensor, top: int, left: int, crop: int) -> torch.Tensor:
    """``[3, new_h, new_w]`` (resized, 0..255) -> normalised ``[3, crop, crop]``; for the centered
    window this is exactly ``preprocess_frames`` (same operations in the same order)."""
    x = resized[:, top:top + crop, left:left + crop]
    x = x.clamp(0, 255).div(255.0)
    mean = torch.tensor(IMAGENET_MEAN, dtype=x.dtype).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=x.dtype).view(3, 1, 1)
    return (x - mean) / std


def shifted_clip_paths(sample: Sample, index: SplitIndex, offset: int, stride: int,
                       known: dict[tuple, object]) -> tuple:
    """Frame references of the causal clip ending ``offset`` seconds before the keyframe: from
    ``known`` ((video, frame) -> reference), else an Endoscapes ``{video}_{frame}.jpg`` next to the
    keyframe's own JPEG."""
    if offset == 0:
        return sample.clip_paths
    frames = index.video_frames[sample.video_id]
    p = frames.index(sample.frame)
    end = frames[max(p - offset, 0)]
    clip = causal_clip(frames, end, len(sample.clip_frames), stride)
    last = sample.clip_paths[-1]
    out = []
    for f in clip:
        ref = known.get((sample.video_id, f))
        if ref is None and isinstance(last, VideoFrame):
            raise DataError(f"no 1 fps frame {f} of video {sample.video_id} for a TTA offset of {offset} s")
        out.append(ref if ref is not None else last.parent / f"{sample.video_id}_{f}.jpg")
    return tuple(out)


class TTAClipDataset(Dataset):
    """Like ``ClipDataset``, but ``video`` is ``[V, T, 3, crop, crop]``: V = views x offsets, in
    the order (offset, view). Each JPEG is decoded and resized once per process (LRU cache)."""

    def __init__(self, index: SplitIndex, crop: int, stride: int, tta: TTASettings, target: str = "hard",
                 cache_frames: int = 256, on_bad_sample: str = "error", view: str = "center"):
        if view != "center" and tta.views > 1:
            raise ConfigError(f"TTA spatial views shift the center crop; this run sees data.view={view} (the whole "
                              f"frame): use 1 spatial view (temporal offsets still apply)")
        self.index, self.samples, self.crop, self.stride, self.tta = index, list(index.samples), crop, stride, tta
        self.target, self.on_bad_sample, self.view = target, on_bad_sample, view
        if view == "center":  # shifted windows of one resized frame
            load, decoded = functools.partial(resize_frame, crop=crop), functools.partial(resize_pixels, crop=crop)
        else:  # the training path, as is (one spatial view: the run's data.view)
            load = functools.partial(load_preprocessed, crop=crop, view=view)
            decoded = functools.partial(preprocess_pixels, crop=crop, view=view)
        self.cache = FrameSource(load, decoded, cache_frames)
        self.known = dict(index.frame_refs or {})
        self.known.update({(s.video_id, f): p for s in self.samples for f, p in zip(s.clip_frames, s.clip_paths)})
        self.cache.need(self.known.values())

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> dict | None:
        s = self.samples[i]
        try:
            video = self.load_views(s)
        except DataError:
            if self.on_bad_sample == "error":
                raise
            return None
        return {"video": video, "target": torch.tensor(s.target(self.target), dtype=torch.float32),
                "label": torch.tensor(s.label, dtype=torch.float32),
                "rater_mean": torch.tensor(s.rater_mean, dtype=torch.float32),
                "sample_id": s.sample_id, "video_id": s.video_id, "frame": s.frame}

    def load_views(self, s: Sample) -> torch.Tensor:
        clips = []
        for k in self.tta.offsets:
            paths = shifted_clip_paths(s, self.index, k, self.stride, self.known)
            if self.view != "center":
                clips.append(stack_clip([self.cache.get(p) for p in paths]))
                continue
            resized = [self.cache.get(p) for p in paths]
            for direction in VIEW_DIRECTIONS[:self.tta.views]:
                frames = []
                for r in resized:
                    top, left = shifted_window(r.shape[1], r.shape[2], self.crop, direction, self.tta.shift)
                    frames.append(crop_and_normalise(r, top, left, self.crop))
                clips.append(torch.stack(frames))
        return torch.stack(clips)


@torch.no_grad()
def predict_tta(model, index: SplitIndex, crop: int, stride: int, tta: TTASettings, device: torch.device,
                batch_size: int = 8, num_workers: int = 0, cache_frames: int = 256, target: str = "hard",
                on_bad_sample: str = "error", desc: str = "tta", progress: bool = True,
                view: str = "center") -> Predictions:
    """Mean probability over the TTA views of each keyframe; ``batch_size`` counts clips per forward."""
    ds = TTAClipDataset(index, crop, stride, tta, target, cache_frames, on_bad_sample, view)
    clips_per_batch = max(1, batch_size // tta.n_views)
    loader = DataLoader(ds, batch_size=clips_per_batch, shuffle=False, num_workers=num_workers,
                        collate_fn=collate_skip_none)
    model.eval()
    ids, vids, frames, labels, means, probs = [], [], [], [], [], []
    for batch in tqdm(loader, desc=desc, leave=False, disable=not progress, unit="batch"):
        if batch is None:
            continue
        batch = move_batch(batch, device)
        b, v = batch["video"].shape[:2]
        flat = {"video": batch["video"].flatten(0, 1)}
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            logits = model(flat).float()
        probs.append(torch.sigmoid(logits).view(b, v, -1).mean(dim=1).cpu())
        labels.append(batch["label"].cpu())
        means.append(batch["rater_mean"].cpu())
        ids += list(batch["sample_id"])
        vids += batch_video_ids(batch["video_id"])
        frames += [int(f) for f in batch["frame"]]
    cat = (lambda xs: torch.cat(xs) if xs else torch.zeros(0, 3))
    return Predictions(ids, vids, frames, cat(labels), cat(means), cat(probs), math.nan)
