"""`cvsjepa extract`: run the frozen backbone once over every keyframe clip and fill a feature store.

    index the splits (data.root, frames, stride) -> plan: clips in (video, frame) order, cut into shards
    open the store (create, or resume: key checked, temporaries removed, listed shards verified)
    for each shard still to do:
        for each chunk of features.batch_size clips:
            frames: JPEG -> decode -> the views' crops (data.view=center: the center crop and the
                    features.views shifted crops of features/views.py; else data/transforms.py's view),
                    cached per frame path, so overlapping clips (16-s windows every 5 s) decode each JPEG
                    once; clips of a video file (SAGES) decode that video's 1 fps frames once
                    (data/video_frames.py)
            backbone.extract([clips * views, T, 3, crop, crop]) -> tokens; optional 2x2 spatial pooling;
                    data.view=three_crops: the 3 crops' tokens concatenated along the token axis, as the
                    model does (one stored view of 3 N tokens; layout "spatial_views": 3)
        write the shard atomically with its checksum, then list it in the manifest
    features.seconds=true: the same again over every 1 fps second of the same videos (the causal clip
        ending there), each clip's tokens pooled to one embedding (features/seconds.py), shards of
        [seconds, E] float32 listed under the manifest's "seconds"

Interrupting (Ctrl-C, kill -9, a full disk) loses at most the shard in progress; running the same
command again continues from the first shard the manifest does not list.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from .. import distributed
from ..backbones import build_backbone
from ..config import RunConfig
from ..data.endoscapes import Sample
from ..data.index import load_indices, split_names
from ..data.transforms import view_count
from ..data.video_frames import VideoFrame
from ..errors import ConfigError, DataError
from ..rundir import with_saved_splits, write_split_file
from ..runtime import configure_threads, resolve_device
from .chunks import ClipViewChunks
from .encoding import encoding_of
from .seconds import plan_seconds, seconds_compute, seconds_kind, video_rows
from .store import FeatureStore, clip_hash, store_key
from .writer import RankShardWriter, StoreWriter
from .views import MAX_VIEWS, VIEW_NAMES

log = logging.getLogger("cvsjepa")


@dataclass
class ExtractStats:
    """Where this run's extraction time went (seconds) and how often each JPEG (or video) was decoded."""

    clips: int = 0  # clips extracted by this run
    clips_before: int = 0  # clips already in the store when it started (resume)
    shards: int = 0
    decode_s: float = 0.0  # JPEG -> uint8 pixels
    preprocess_s: float = 0.0  # resize, crops of every view, normalisation
    forward_s: float = 0.0  # host -> device, backbone, pooling, cast, device -> host
    write_s: float = 0.0  # shard file (hash, fsync, rename) and manifest
    wall_s: float = 0.0
    frames_decoded: int = 0
    distinct_frames: int = 0  # distinct JPEGs the extracted clips use
    frame_refs: int = 0  # clip frames counted with repeats (what decoding per clip would cost)
    videos_decoded: int = 0  # whole-video decodes (clips read from video files)
    distinct_videos: int = 0  # video files the extracted clips use
    video_frames: int = 0  # of distinct_frames, those read from video files
    bytes_written: int = 0

    @property
    def clips_per_s(self) -> float:
        return self.clips / self.wall_s if self.wall_s else math.nan

    @property
    def decodes_per_jpeg(self) -> float:
        jpegs = self.distinct_frames - self.video_frames
        return self.frames_decoded / jpegs if jpegs > 0 else math.nan

    @property
    def decodes_per_video(self) -> float:
        return self.videos_decoded / self.distinct_videos if self.distinct_videos else math.nan

    def as_dict(self) -> dict:
        return {**asdict(self), "clips_per_s": self.clips_per_s, "decodes_per_jpeg": self.decodes_per_jpeg,
                "decodes_per_video": self.decodes_per_video}


@dataclass
class ExtractResult:
    store: Path
    stats: ExtractStats
    total_clips: int
    layout: dict = field(default_factory=dict)
    seconds: ExtractStats | None = None  # the per-second phase (features.seconds), when asked
    seconds_total: int = 0  # seconds the store holds for the extracted splits
    seconds_layout: dict = field(default_factory=dict)


def check_features_config(cfg: RunConfig) -> None:
    f = cfg.features
    if not f.store:
        raise ConfigError("features.store is not set: pass features.store=/path/to/store (a new or existing folder)")
    if not 1 <= f.views <= MAX_VIEWS:
        raise ConfigError(f"features.views={f.views} must be in 1..{MAX_VIEWS} ({', '.join(VIEW_NAMES)})")
    for key, value in (("features.shard_clips", f.shard_clips), ("features.batch_size", f.batch_size)):
        if value < 1:
            raise ConfigError(f"{key} must be >= 1, got {value}")


def pool_tokens(tokens: torch.Tensor, grid: tuple[int, int, int], pool: str) -> tuple[torch.Tensor, tuple, int]:
    """``tokens [B, N, D]`` on the ``(T', H', W')`` grid -> ``(tokens [B, N', D], grid', levels)``.

    ``N`` may be a multiple ``levels * T'H'W'`` (multilevel outputs concatenated along tokens); each
    level is pooled on its own. ``avg2x2`` averages 2x2 spatial neighbours (4x fewer tokens); token
    order stays frame-major, then row, then column, within each level.
    """
    b, n, d = tokens.shape
    t, h, w = grid
    per_level = t * h * w
    if n % per_level:
        raise ValueError(f"{n} tokens are not a whole number of {grid} grids")
    levels = n // per_level
    if pool == "none":
        return tokens, grid, levels
    if pool != "avg2x2":
        raise ValueError(f"unknown pool {pool!r}")
    if h % 2 or w % 2:
        raise ConfigError(f"features.pool=avg2x2 needs an even spatial token grid, got {h}x{w}")
    x = tokens.view(b * levels * t, h, w, d).permute(0, 3, 1, 2)  # [B L T, D, H, W]
    x = F.avg_pool2d(x, 2).permute(0, 2, 3, 1)  # [B L T, H/2, W/2, D]
    return x.reshape(b, n // 4, d), (t, h // 2, w // 2), levels


def extract(cfg: RunConfig, progress: bool = True) -> ExtractResult:
    """Fill (or finish) the feature store ``cfg.features.store``; see the module docstring."""
    t_start = time.perf_counter()
    check_features_config(cfg)
    if not cfg.data.root:
        raise ConfigError("data.root is not set: pass data.root=/path/to/endoscapes (or a `cvsjepa synth` folder)")
    configure_threads(cfg.train.threads, cfg.data.num_workers)
    device = distributed.setup() or resolve_device(cfg.train.device)
    failed = True
    try:
        result = _extract(cfg, device, progress and distributed.is_main(), t_start)
        failed = False
        return result
    finally:
        distributed.teardown(failed)


@dataclass
class _Phase:
    """What one pass of extraction writes: the keyframe token shards (``kind`` None) or the
    per-second embeddings of an artifact (:mod:`.seconds`). ``compute(video [B, V, T, 3, c, c]) ->
    (rows [B, ...], layout)``; ``views``: the stacked views of each clip handed to it."""
    kind: str | None
    samples: dict[str, list[Sample]]
    views: int
    compute: Callable[[torch.Tensor], tuple[np.ndarray, dict]]
    unit: str  # "clip" | "second": what the progress bar and the logs count
    crop: int = 0  # the backbone's crop size
    key: dict | None = None  # the per-second artifact's key
    extra: Callable[[list[Sample]], dict] | None = None  # more fields of a split's manifest entry


def _extract(cfg: RunConfig, device, progress: bool, t_start: float) -> "ExtractResult":
    backbone = build_backbone(cfg.backbone, device=device).freeze()
    if cfg.data.frames % backbone.tubelet_size:
        raise ConfigError(f"data.frames={cfg.data.frames} must be a multiple of the backbone's tubelet size "
                          f"({backbone.tubelet_size})")
    names = list(dict.fromkeys(cfg.features.splits or split_names(cfg).values()))
    if not names:
        raise ConfigError("no split to extract: set features.splits=[train,val,...] or data.*_split")
    indices = load_indices(with_saved_splits(cfg, Path(cfg.features.store)), names)
    phases = [_Phase(None, {n: indices[n].samples for n in names}, cfg.features.views,
                     _token_compute(cfg, backbone, device), "clip", backbone.crop_size)]
    if cfg.features.seconds:  # then every second of the same videos, pooled (features/seconds.py)
        pooler, key, kind = seconds_kind(cfg, backbone)
        phases.append(_Phase(kind, plan_seconds(indices, names, cfg.data.frames, cfg.data.stride), 1,
                             seconds_compute(cfg, backbone, pooler, device), "second", backbone.crop_size, key,
                             lambda samples: {"video_rows": video_rows(samples)}))
    rank, world = distributed.world()
    results = []
    if rank != 0:  # rank 0 owns the manifest; the others get its plan and write their own shards
        for phase in phases:
            stats = ExtractStats()
            work, total, stats.clips_before, plan = distributed.gather_objects(None)[0]
            writer = RankShardWriter(cfg.features.store, plan)
            _run(cfg, device, writer, phase, work[rank::world], total, stats, False)
            distributed.gather_objects((writer.written, writer.layout))
            stats.wall_s = time.perf_counter() - t_start
            results.append((stats, total, writer.layout or {}))
    else:
        with StoreWriter(cfg.features.store, store_key(cfg, backbone), backbone.describe(),
                         cfg.features.shard_clips) as writer:
            write_split_file(writer.root, indices)  # SAGES: the draw the store's splits hold, for train/sweep
            for phase in phases:
                t0 = time.perf_counter()
                stats = ExtractStats()
                total = _plan_and_run(cfg, device, writer, phase, progress, world, stats)
                stats.wall_s = time.perf_counter() - (t_start if phase.kind is None else t0)
                layout = writer.manifest["layout"] if phase.kind is None else writer.manifest["seconds"][phase.kind][
                    "layout"]
                _log_phase(phase, stats, layout)
                results.append((stats, total, layout))
    (stats, total, layout), seconds = results[0], (results[1] if len(results) > 1 else None)
    return ExtractResult(Path(cfg.features.store), stats, total, layout,
                         seconds=None if seconds is None else seconds[0],
                         seconds_total=0 if seconds is None else seconds[1],
                         seconds_layout={} if seconds is None else seconds[2])


def _plan_and_run(cfg, device, writer: StoreWriter, phase: _Phase, progress: bool, world: int,
                  stats: ExtractStats) -> int:
    """Rank 0: record the phase's splits in the manifest (or check them), then extract what is missing
    (with the other ranks under DDP). Returns the number of clips the phase holds."""
    if phase.kind is not None:
        writer.open_seconds(phase.kind, phase.key)
    work: list[tuple[str, int]] = []
    total = 0
    for name, samples in phase.samples.items():
        if not samples:
            raise DataError(f"split '{name}' of {cfg.data.root} has no keyframe clip to extract")
        todo = writer.plan_split(name, [s.sample_id for s in samples], [clip_hash(s.clip_frames) for s in samples],
                                 kind=phase.kind, extra=phase.extra(samples) if phase.extra else None)
        work += [(name, k) for k in todo]
        total += len(samples)
    stats.clips_before = total - sum(len(writer.shard_rows(n, k, phase.kind)) for n, k in work)
    what = "clips" if phase.kind is None else f"seconds ({phase.kind})"
    if world > 1:
        plan = {n: (len(e["sample_ids"]), e["shard_clips"]) for n, e in writer._entries(phase.kind).items()}
        distributed.gather_objects((work, total, stats.clips_before, plan))
        mine = work[0::world]
        if mine:
            _run(cfg, device, writer, phase, mine, total, stats, progress)
        for written, layout in distributed.gather_objects(([], None))[1:]:
            if layout:
                _set_layout(writer, phase, layout)
            for split, k, entry in written:
                writer.record_shard(split, k, entry, phase.kind)
        log.info("feature store %s: %d processes wrote their shards of %s", writer.root, world, what)
    elif not work:
        log.info("feature store %s is complete (%d %s); nothing to extract", writer.root, total, what)
    else:
        if stats.clips_before:
            log.info("resuming feature store %s: %d of %d %s already stored", writer.root, stats.clips_before, total,
                     what)
        _run(cfg, device, writer, phase, work, total, stats, progress)
    return total


def _set_layout(writer, phase: _Phase, layout: dict) -> None:
    if phase.kind is None:
        writer.set_layout(layout)
    else:
        writer.set_seconds_layout(phase.kind, layout)


def _log_phase(phase: _Phase, stats: ExtractStats, layout: dict) -> None:
    if not stats.clips:
        return
    per = (f"{stats.decodes_per_video:.2f} decodes per video" if stats.distinct_videos else
           f"{stats.decodes_per_jpeg:.2f} decodes per JPEG")
    size = layout.get("bytes_per_clip" if phase.kind is None else "bytes_per_second", 0)
    log.info("extracted %d %ss%s in %.1f s (%.2f/s): decode %.1f s, preprocess %.1f s, forward %.1f s, write %.1f s; "
             "%s; %s per %s", stats.clips, phase.unit, "" if phase.kind is None else f" ({phase.kind})", stats.wall_s,
             stats.clips_per_s, stats.decode_s, stats.preprocess_s, stats.forward_s, stats.write_s, per,
             _human(size), phase.unit)


def _token_compute(cfg, backbone, device):
    """The token phase's step: ``video [B, views, T, 3, c, c]`` -> (encoded tokens ``[B, views, N, D']``,
    layout): 2x2 pooling, the ``features.dtype`` encoding, three crops concatenated along the tokens."""
    encoding = encoding_of(cfg.features.dtype)
    grid = backbone.token_grid(cfg.data.frames)
    spatial = view_count(cfg.data.view)  # > 1: views whose tokens are concatenated into one stored view
    views = cfg.features.views

    def compute(video: torch.Tensor) -> tuple[np.ndarray, dict]:
        b = video.shape[0]
        with torch.inference_mode():
            tokens = backbone.extract(video.flatten(0, 1).to(device, non_blocking=True))
            tokens, pooled_grid, levels = pool_tokens(tokens, grid, cfg.features.pool)
            embed_dim = tokens.shape[-1]
            tokens = encoding.encode(tokens)  # [B V, N, D'] on the host (features/encoding.py)
        if spatial > 1:  # [B S, N, D'] -> [B, 1, S N, D'], view-major as CVSClassifier.tokens
            tokens = tokens.reshape(b, 1, spatial * tokens.shape[1], tokens.shape[2])
        tokens = tokens.reshape(b, views, *tokens.shape[-2:])
        return tokens, _layout(cfg, tokens, embed_dim, grid, pooled_grid, levels, cfg.features.shard_clips, spatial)

    return compute


def _run(cfg, device, writer: StoreWriter, phase: _Phase, work, total, stats: ExtractStats, progress) -> None:
    bs, frames = cfg.features.batch_size, cfg.data.frames
    # chunks never straddle shards, so a resumed run forwards exactly the batches an uninterrupted one does
    specs, chunks = [], []
    for name, k in work:
        rows = writer.shard_rows(name, k, phase.kind)
        for start in range(rows.start, rows.stop, bs):
            part = range(start, min(start + bs, rows.stop))
            specs.append((name, k, part))
            chunks.append([phase.samples[name][r] for r in part])
    refs = {p for c in chunks for s in c for p in s.clip_paths}
    stats.distinct_frames = len(refs)
    stats.video_frames = sum(isinstance(p, VideoFrame) for p in refs)
    stats.distinct_videos = len({p.video for p in refs if isinstance(p, VideoFrame)})
    stats.frame_refs = sum(len(s.clip_paths) for c in chunks for s in c)
    cache = 2 * frames * cfg.data.stride  # > one clip's span: consecutive clips reuse their shared frames
    # clips come in (video, frame) order, so 2 decoded videos cover a chunk that straddles two
    dataset = ClipViewChunks(chunks, phase.crop, phase.views, cache, cfg.data.on_bad_sample, cache_videos=2,
                             view=cfg.data.view)
    loader = DataLoader(dataset, batch_size=None, shuffle=False, num_workers=cfg.data.num_workers,
                        pin_memory=device.type == "cuda", persistent_workers=False)
    bar = tqdm(total=total, initial=stats.clips_before, unit=phase.unit,
               desc="extract" if phase.kind is None else "extract seconds", disable=not progress, dynamic_ncols=True)
    out, skipped, layout_checked = None, [], False
    try:
        for (name, k, part), item in zip(specs, loader):
            stats.decode_s += item["decode_s"]
            stats.preprocess_s += item["preprocess_s"]
            stats.frames_decoded += int(item["decodes"])
            stats.videos_decoded += int(item["video_decodes"])
            t0 = time.perf_counter()
            rows_out, layout = phase.compute(item["video"])  # video [B, V, T, 3, crop, crop]
            b = rows_out.shape[0]
            stats.forward_s += time.perf_counter() - t0
            if not layout_checked:  # a resumed store must get rows of the layout it already holds
                _set_layout(writer, phase, layout)
                layout_checked = True
            rows = writer.shard_rows(name, k, phase.kind)
            if out is None:
                out = np.zeros((len(rows), *rows_out.shape[1:]), dtype=rows_out.dtype)
            at = part.start - rows.start
            out[at:at + b] = rows_out
            skipped += [at + j for j in range(b) if not bool(item["ok"][j])]
            bar.update(b)
            if part.stop == rows.stop:  # shard complete
                t1 = time.perf_counter()
                entry = writer.write_shard(name, k, out, skipped, phase.kind)
                stats.write_s += time.perf_counter() - t1
                stats.bytes_written += entry["bytes"]
                stats.shards += 1
                stats.clips += len(rows)
                out, skipped = None, []
            bar.set_postfix(shards=stats.shards, refresh=False)
    finally:
        bar.close()


def _layout(cfg, tokens: np.ndarray, embed_dim: int, grid, pooled_grid, levels: int, shard_clips: int,
            spatial: int = 1) -> dict:
    _, v, n, stored_dim = tokens.shape  # stored_dim: embed_dim (+ the scale's bytes of a scaled encoding)
    names = list(VIEW_NAMES[:v]) if cfg.data.view == "center" else [cfg.data.view]
    return {"dtype": cfg.features.dtype, "views": v, "view_names": names, "tokens_per_clip": int(n),
            "data_view": cfg.data.view, "spatial_views": spatial,
            "embed_dim": int(embed_dim), "token_grid": list(pooled_grid), "levels": int(levels),
            "backbone_token_grid": list(grid), "pool": cfg.features.pool, "shard_clips": shard_clips,
            "bytes_per_clip": int(v * n * stored_dim * tokens.itemsize)}


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return str(n)


def verify_store(path: str, progress: bool = True) -> FeatureStore:
    """Checksum every shard of the store at ``path``; ShardCorruptError names the first bad file."""
    store = FeatureStore.open(path)
    store.verify(progress=progress)
    return store
