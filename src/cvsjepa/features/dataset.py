"""Training from a feature store: the tokens come from the store, the labels from the dataset.

``open_store_splits(cfg)`` returns the same ``{role: SplitData}`` as
:func:`cvsjepa.data.loaders.build_splits`, with a :class:`StoreDataset` in place of the
``ClipDataset``: its batches carry ``tokens [B, N, D]`` (stored dtype; the head casts) instead of
``video``, so ``CVSClassifier(backbone=None, head)`` trains on them unchanged. The labels and
targets are read from the dataset index at ``data.root`` (``data.target`` hard/soft is applied
here, never stored), and every keyframe must be in the store with the same clip frames.
"""

from __future__ import annotations

import dataclasses
import logging

import numpy as np
import torch
from torch.utils.data import Dataset, get_worker_info

from ..config import RunConfig
from ..data.dataset import TARGET_MODES, sample_fields
from ..data.endoscapes import Sample
from ..data.index import load_indices, split_names
from ..data.loaders import SplitData
from ..rundir import with_saved_splits
from ..errors import ConfigError
from .store import FeatureStore, FeatureStoreError, StoreReader, check_key, clip_hash, config_key, store_key

log = logging.getLogger("cvsjepa")


class BufferPool:
    """Batch buffers handed out again once nobody holds them any more.

    Why: a fresh 32 MiB tensor per batch costs a page fault per 4 KiB page (the allocator returns
    such sizes to the OS on free), which made reading from the page cache ~4x slower than the copy
    itself (docs/benchmarks.md). A buffer is reused only when its storage has no user but the pool
    (the tensors a consumer still holds keep it busy), so a batch is never overwritten under a
    consumer; when torch offers no use count, nothing is reused.
    """

    KEEP = 4  # buffers kept per shape: the batch in use, the next, and slack

    def __init__(self):
        self._free: dict[tuple, list[tuple[torch.Tensor, int]]] = {}

    def take(self, shape: tuple[int, ...], dtype) -> torch.Tensor:
        dtype = dtype if isinstance(dtype, torch.dtype) else _TORCH_OF_NUMPY[np.dtype(dtype)]
        kept = self._free.setdefault((tuple(shape), dtype), [])
        for buf, idle in kept:
            if _users(buf) == idle:
                return buf
        buf = torch.empty(shape, dtype=dtype)
        if _users(buf) is not None and len(kept) < self.KEEP:
            kept.append((buf, _users(buf)))
        return buf


_TORCH_OF_NUMPY = {np.dtype(np.float16): torch.float16, np.dtype(np.float32): torch.float32,
                   np.dtype(np.uint16): torch.uint16, np.dtype(np.uint8): torch.uint8}


def _users(t: torch.Tensor) -> int | None:
    count = getattr(torch._C, "_storage_Use_Count", None)
    return None if count is None else count(t.untyped_storage()._cdata)


class StoreDataset(Dataset):
    """Keyframe clips as stored tokens, with their targets.

    Item: ``tokens`` ``[N, D]`` in the stored dtype (float16 by default; ``[views, N, D]`` with
    ``view=None``); ``target``, ``label``, ``rater_mean`` float32 ``[3]``; ``sample_id`` str,
    ``video_id`` int or str, ``frame`` int: the keys of :class:`cvsjepa.data.dataset.ClipDataset` with
    ``tokens`` in place of ``video``. A clip that failed to load at extraction
    (``data.on_bad_sample=skip``) gives ``None``, dropped by ``collate_skip_none``.

    Scaled encodings (int8, float8_e4m3) are decoded to float32 here (:mod:`.encoding`).
    """

    def __init__(self, samples: list[Sample], reader: StoreReader, target: str = "hard", view: int | None = 0):
        if target not in TARGET_MODES:
            raise ValueError(f"target must be one of {TARGET_MODES}, got {target!r}")
        if view is not None and not 0 <= view < reader.views:
            raise ValueError(f"view must be in 0..{reader.views - 1} (the store holds {reader.views}), got {view}")
        self.samples, self.reader, self.target, self.view = list(samples), reader, target, view
        self._buffers = BufferPool()
        self.rows = []
        for s in self.samples:
            row = reader.row_of.get(s.sample_id)
            if row is None:
                raise FeatureStoreError(f"keyframe {s.sample_id} of split '{reader.split}' is not in feature store "
                                        f"{reader.root}; extract this dataset into a new store")
            if reader.clip_hashes[row] != clip_hash(s.clip_frames):
                raise FeatureStoreError(f"keyframe {s.sample_id} of split '{reader.split}' has other clip frames than "
                                        f"when feature store {reader.root} was extracted (changed frame lists or "
                                        f"data.source?); extract into a new store")
            self.rows.append(row)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> dict | None:
        return self.__getitems__([i])[0]

    def __getitems__(self, indices: list[int]) -> list[dict | None]:
        """A batch (DataLoader calls this with a batch's indices): the clips' tokens are read together,
        consecutive rows in one read, into one tensor whose rows the items carry (so
        ``collate_skip_none`` hands that tensor on without copying it)."""
        kept = []
        for i in indices:
            if self.rows[i] in self.reader.skipped_rows:
                log.warning("skipping keyframe %s: its clip failed to load at extraction (on_bad_sample=skip)",
                            self.samples[i].sample_id)
            else:
                kept.append(i)
        tokens = iter(self._read([self.rows[i] for i in kept]) if kept else ())
        return [{"tokens": next(tokens), **sample_fields(self.samples[i], self.target)}
                if self.rows[i] not in self.reader.skipped_rows else None for i in indices]

    def _read(self, rows: list[int]) -> torch.Tensor:
        if get_worker_info() is not None:  # the batch leaves this process: nothing to reuse
            return self.reader.read_rows(rows, self.view)
        shape = (len(rows), *self.reader.item_shape(self.view))
        stored = self._buffers.take(shape, self.reader.disk_dtype)
        out = (self._buffers.take((*shape[:-1], self.reader.layout["embed_dim"]), torch.float32)
               if self.reader.encoding.scaled else None)
        return self.reader.read_rows(rows, self.view, stored, out)

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_buffers": BufferPool()}


def open_store(cfg: RunConfig, backbone=None, check_weights: bool = True) -> FeatureStore:
    """The store at ``cfg.features.store``, refused unless its key matches ``cfg``.

    With ``check_weights`` the backbone (``backbone``, or one built from ``cfg.backbone`` on the
    CPU and dropped again) is fingerprinted, so tokens of other weights are never used; without it
    only the settings in the config (frames, stride, layers, pool, dtype, views) are compared.
    """
    if not cfg.features.store:
        raise ConfigError("features.store is not set: pass features.store=/path/to/store (see `cvsjepa extract`)")
    store = FeatureStore.open(cfg.features.store)
    if check_weights:
        if backbone is None:
            from ..backbones import build_backbone

            backbone = build_backbone(cfg.backbone).freeze()
        store.check_key(store_key(cfg, backbone))
    else:
        requested = config_key(cfg)
        check_key(store.root, {k: store.key[k] for k in requested if k in store.key}, requested)
    if not store.layout:
        raise FeatureStoreError(f"feature store {store.root} has no shard yet; run `cvsjepa extract` to fill it")
    return store


def open_store_splits(cfg: RunConfig, roles: tuple[str, ...] = ("train", "val", "test"), *, backbone=None,
                      check_weights: bool = True, verify: bool = True, view: int = 0,
                      progress: bool = False) -> dict[str, SplitData]:
    """``{role: SplitData}`` like :func:`cvsjepa.data.loaders.build_splits`, reading tokens from
    ``cfg.features.store``. ``.index`` is the dataset's ``SplitIndex`` (labels from ``data.root``),
    ``.dataset`` a :class:`StoreDataset`, ``.loader(batch_size, shuffle, num_workers, generator)``.

    Refuses (FeatureStoreError naming the cause) a store whose key differs from ``cfg``, a split that
    is absent or incomplete, a keyframe missing from the store, and, with ``verify``, a shard whose
    size or sha256 differs from the manifest (naming the file).
    """
    store = open_store(cfg, backbone=backbone, check_weights=check_weights)
    names = {r: n for r, n in split_names(cfg).items() if r in roles}
    for name in names.values():
        store.split_entry(name)
    if verify:
        store.verify(list(dict.fromkeys(names.values())), progress=progress)
    if not cfg.data.root:
        raise ConfigError("data.root is not set: the labels are read from the dataset (data.root=/path/to/endoscapes)")
    # SAGES: the store's recorded split assignment, unless the config names one (a val draw with another
    # seed would move clips between the store's splits)
    indices = load_indices(with_saved_splits(cfg, store.root), list(names.values()), check_frames=False)
    out = {}
    for role, name in names.items():
        index = indices[name]
        reader = store.reader(name)
        samples = index.samples
        missing = [s.sample_id for s in samples if s.sample_id not in reader.row_of]
        if missing and cfg.data.on_bad_sample == "skip":
            # extraction indexed with frame checks and left these out; the in-loop path would too
            log.warning("%s: %d keyframe(s) are not in the feature store (left out at extraction, "
                        "on_bad_sample=skip), e.g. %s", name, len(missing), ", ".join(missing[:3]))
            samples = [s for s in samples if s.sample_id in reader.row_of]
            index = dataclasses.replace(index, samples=samples)
        elif missing:
            raise FeatureStoreError(f"{len(missing)} keyframe(s) of split '{name}' in {cfg.data.root} are not in "
                                    f"feature store {store.root} (e.g. {', '.join(missing[:3])}); it was extracted "
                                    f"from another dataset or with other data.* settings")
        extra = len(reader.row_of) - len(samples)
        if extra and not cfg.data.limit_per_split:
            log.info("%s: the store holds %d clip(s) that are not in the dataset index; they are not used", name, extra)
        out[role] = SplitData(index, StoreDataset(samples, reader, target=cfg.data.target, view=view))
    return out
