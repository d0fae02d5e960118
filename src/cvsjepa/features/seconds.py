"""Per-second embeddings in the feature store: what temporal heads train on.

``cvsjepa extract`` with ``features.seconds=true`` stores, next to the keyframe token shards, one
embedding per 1 fps second of every video of the extracted splits: the causal clip ending at that
second (:func:`cvsjepa.data.seconds.second_samples`, exactly as ``predict`` scores a video) through
the frozen backbone, then the per-second pooler (``features.second_pooler``: the tokens' mean, or a
stage-1 run's head, :mod:`.pooler`). It is a second artifact kind of the same store, written by the
same machinery (atomic checksummed shards, the manifest, resume after a kill):

    manifest["seconds"][kind]     kind = "mean" or "run-<first 12 hex of the stage-1 weights' sha256>":
                                  {"key", "layout", "splits": {split: {sample_ids ({video}_{frame} of every
                                  second, in (video, time) order), clip_hashes, shard_clips, shards,
                                  complete, video_rows: {video: [first row, end row]}}}}
    seconds/{kind}/{split}/{k:05d}.npy   float32 [seconds, E], rows [k * shard_clips, (k + 1) * shard_clips)

Reading (:func:`open_seconds_splits`) loads a split's embeddings into memory (4 E bytes per second:
~240 MB for all 58,813 Endoscapes seconds at E = 1024) and serves each keyframe's history
(:func:`cvsjepa.heads.temporal.gather_history`) with its labels; ``train`` and ``sweep`` read it
like the token store.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from ..config import RunConfig
from ..data.dataset import TARGET_MODES, sample_fields
from ..data.endoscapes import Sample
from ..data.index import load_indices, split_names
from ..data.loaders import SplitData
from ..data.seconds import second_samples
from ..data.transforms import view_count
from ..errors import ConfigError
from ..heads.temporal import HISTORY_KEY, MASK_KEY, gather_history
from ..rundir import with_saved_splits
from .pooler import second_pooler
from .store import FeatureStore, FeatureStoreError, ShardCorruptError, _npy_header, check_key, check_shard, clip_hash

log = logging.getLogger("cvsjepa")

SECONDS_DTYPE = "float32"  # per-second embeddings are small (E floats a second): kept exact


# ------------------------------------------------------------------------------------------ extraction
def plan_seconds(indices: dict, names: list[str], frames: int, stride: int) -> dict[str, list[Sample]]:
    """``{split: [one Sample per second of every video with a keyframe]}`` in (video, time) order."""
    return {name: second_samples(indices[name], frames, stride) for name in names}


def video_rows(samples: list[Sample]) -> dict[str, list[int]]:
    """``{str(video_id): [first row, end row]}`` of a split's seconds (a video's rows are consecutive)."""
    out: dict[str, list[int]] = {}
    for i, s in enumerate(samples):
        rows = out.setdefault(str(s.video_id), [i, i])
        if rows[1] != i:
            raise ValueError(f"the seconds of video {s.video_id} are not consecutive")
        rows[1] = i + 1
    return out


def seconds_compute(cfg: RunConfig, backbone, pooler, device):
    """The extraction step of a per-second artifact: ``video [B, V, T, 3, crop, crop]`` (V = the spatial
    views of ``data.view``) -> ``(embeddings float32 [B, E], layout)``; tokens of the views are
    concatenated along the token axis first, as :meth:`CVSClassifier.tokens` does."""
    pooler = pooler.to(device).eval()
    spatial = view_count(cfg.data.view)

    def compute(video: torch.Tensor) -> tuple[np.ndarray, dict]:
        b = video.shape[0]
        with torch.inference_mode():
            tokens = backbone.extract(video.flatten(0, 1).to(device, non_blocking=True))
            tokens = tokens.reshape(b, spatial * tokens.shape[1], tokens.shape[2])
            emb = pooler(tokens).float().cpu().numpy()
        layout = {"dtype": SECONDS_DTYPE, "embed_dim": int(emb.shape[1]), "pooler": pooler.kind,
                  "bytes_per_second": int(emb.shape[1] * 4), "data_view": cfg.data.view}
        return emb.astype(np.float32, copy=False), layout

    return compute


def seconds_kind(cfg: RunConfig, backbone) -> tuple[object, dict, str]:
    """``(pooler, key, kind)`` of the artifact ``cfg.features.second_pooler`` asks for."""
    pooler, key = second_pooler(cfg, backbone)
    return pooler, key, artifact_kind(key)


def artifact_kind(key: dict) -> str:
    return "mean" if key["pooler"] == "mean" else f"run-{key['weights_sha256'][:12]}"


# ------------------------------------------------------------------------------------------ reading
@dataclasses.dataclass
class SecondsTable:
    """One split's per-second embeddings, in memory: ``embeddings [R, E]`` float32, ``row_of``
    (sample id -> row), ``clip_hashes [R]``, ``video_rows`` (video -> [first, end)), ``missing [R]``
    bool (seconds whose clip failed to load at extraction, masked out of every history)."""

    root: Path
    split: str
    kind: str
    embeddings: torch.Tensor
    row_of: dict[str, int]
    clip_hashes: list[str]
    video_rows: dict[str, list[int]]
    missing: torch.Tensor


def load_seconds(store: FeatureStore, kind: str, split: str) -> SecondsTable:
    """Read a complete split of the artifact ``kind`` (shard sizes and headers checked; checksums are
    checked by :meth:`FeatureStore.verify` beforehand when asked)."""
    entry = store.split_entry(split, kind)
    dim = int(store.seconds[kind]["layout"]["embed_dim"])
    parts, missing = [], []
    for k, (path, sentry) in enumerate(store.shard_paths([split], kind)):
        check_shard(path, sentry, checksum=False)
        shape, dtype, _ = _npy_header(path)
        if shape != (sentry["clips"], dim) or dtype != np.dtype(SECONDS_DTYPE):
            raise ShardCorruptError(f"shard {path} holds {shape} {dtype}, the manifest says ({sentry['clips']}, "
                                    f"{dim}) {SECONDS_DTYPE}; the store is damaged")
        parts.append(np.load(path, allow_pickle=False))
        missing += [k * int(entry["shard_clips"]) + r for r in sentry.get("skipped", [])]
    table = torch.from_numpy(np.concatenate(parts)) if parts else torch.zeros(0, dim)
    flags = torch.zeros(len(table), dtype=torch.bool)
    flags[missing] = True
    return SecondsTable(store.root, split, kind, table, {s: i for i, s in enumerate(entry["sample_ids"])},
                        list(entry["clip_hashes"]), {k: list(v) for k, v in entry["video_rows"].items()}, flags)


class HistoryDataset(Dataset):
    """Keyframes as histories of per-second embeddings, with their targets.

    Item: ``history`` float32 ``[L, E]`` (position l = second t - offsets[l] of the keyframe's video,
    zeros where masked), ``history_mask`` bool ``[L]``, and the label keys of
    :func:`cvsjepa.data.dataset.sample_fields`. A keyframe whose own second failed to load at
    extraction gives ``None`` (dropped by ``collate_skip_none``), as in the token store."""

    def __init__(self, samples: list[Sample], table: SecondsTable, offsets: tuple[int, ...], target: str = "hard"):
        if target not in TARGET_MODES:
            raise ValueError(f"target must be one of {TARGET_MODES}, got {target!r}")
        self.samples, self.table, self.offsets, self.target = list(samples), table, tuple(offsets), target
        rows, starts = [], []
        for s in self.samples:
            row = table.row_of.get(s.sample_id)
            if row is None or str(s.video_id) not in table.video_rows:
                raise FeatureStoreError(f"keyframe {s.sample_id} of split '{table.split}' has no per-second embedding "
                                        f"in feature store {table.root} ({table.kind}); extract this dataset into a "
                                        f"new store")
            if table.clip_hashes[row] != clip_hash(s.clip_frames):
                raise FeatureStoreError(f"keyframe {s.sample_id} of split '{table.split}' has other clip frames than "
                                        f"when feature store {table.root} was extracted; extract into a new store")
            rows.append(row)
            starts.append(table.video_rows[str(s.video_id)][0])
        self.rows, self.starts = torch.tensor(rows, dtype=torch.long), torch.tensor(starts, dtype=torch.long)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> dict | None:
        return self.__getitems__([i])[0]

    def __getitems__(self, indices: list[int]) -> list[dict | None]:
        idx = torch.as_tensor(indices, dtype=torch.long)
        history, mask = gather_history(self.table.embeddings, self.rows[idx], self.starts[idx], self.offsets,
                                       self.table.missing)
        out = []
        for j, i in enumerate(indices):
            if bool(self.table.missing[self.rows[i]]):
                log.warning("skipping keyframe %s: its clip failed to load at extraction (on_bad_sample=skip)",
                            self.samples[i].sample_id)
                out.append(None)
            else:
                out.append({HISTORY_KEY: history[j], MASK_KEY: mask[j], **sample_fields(self.samples[i], self.target)})
        return out


def seconds_key_fields(cfg: RunConfig, key: dict) -> dict:
    """The part of a store key that shapes per-second embeddings (not how keyframe tokens are stored)."""
    return {k: v for k, v in key.items() if k not in ("dtype", "pool", "views")}


def open_seconds_splits(cfg: RunConfig, offsets: tuple[int, ...], roles: tuple[str, ...] = ("train", "val", "test"),
                        *, backbone, verify: bool = True, progress: bool = False) -> dict[str, SplitData]:
    """``{role: SplitData}`` whose datasets are :class:`HistoryDataset` over the store's per-second
    embeddings of ``cfg.features.second_pooler`` (labels from ``data.root``, as
    :func:`.dataset.open_store_splits`). Refuses a store of other backbone weights or clip settings,
    one without these per-second embeddings (naming those it has), and a damaged shard."""
    from .store import store_key

    if not cfg.features.store:
        raise ConfigError("features.store is not set: pass features.store=/path/to/store (see `cvsjepa extract`)")
    store = FeatureStore.open(cfg.features.store)
    check_key(store.root, seconds_key_fields(cfg, store.key), seconds_key_fields(cfg, store_key(cfg, backbone)))
    _, key, kind = seconds_kind(cfg, backbone)
    if kind not in store.seconds:
        have = ", ".join(store.seconds) or "none"
        raise FeatureStoreError(f"feature store {store.root} has no per-second embeddings pooled by {kind} (it has: "
                                f"{have}); write them with `cvsjepa extract CONFIG features.store={store.root} "
                                f"features.seconds=true features.second_pooler={cfg.features.second_pooler} ...`")
    check_key(store.root, store.seconds[kind]["key"], key, implied={})
    names = {r: n for r, n in split_names(cfg).items() if r in roles}
    for name in names.values():
        store.split_entry(name, kind)
    if verify:
        store.verify(list(dict.fromkeys(names.values())), progress=progress, kind=kind)
    if not cfg.data.root:
        raise ConfigError("data.root is not set: the labels are read from the dataset (data.root=/path/to/endoscapes)")
    indices = load_indices(with_saved_splits(cfg, store.root), list(names.values()), check_frames=False)
    out = {}
    for role, name in names.items():
        table = load_seconds(store, kind, name)
        index = indices[name]
        missing = [s.sample_id for s in index.samples if s.sample_id not in table.row_of]
        if missing and cfg.data.on_bad_sample == "skip":
            log.warning("%s: %d keyframe(s) have no per-second embedding (left out at extraction), e.g. %s", name,
                        len(missing), ", ".join(missing[:3]))
            index = dataclasses.replace(index, samples=[s for s in index.samples if s.sample_id in table.row_of])
        out[role] = SplitData(index, HistoryDataset(index.samples, table, offsets, target=cfg.data.target))
    return out
