"""Writing a feature store: creating or resuming it, atomic checksummed shards, the manifest.

See :mod:`cvsjepa.features.store` for the layout. Order of operations for each shard: temporary
file in the shard's folder, hashed while written, fsync'ed, renamed, folder fsync'ed; only then is
the manifest (itself written atomically) updated to list it with its size and sha256.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import time
from pathlib import Path

import numpy as np

from ..version import __version__
from ..io import atomic_write, atomic_write_json
from .store import (MANIFEST, STORE_FORMAT, STORE_FORMAT_VERSION, FeatureStore, FeatureStoreError, ShardCorruptError,
                    StoreKeyError, check_key, check_shard, shard_name)

log = logging.getLogger("cvsjepa")


class StoreWriter:
    """Creates a store or resumes one; one writing process at a time (an flock on ``.lock``).

    Usage: ``plan_split`` each split (records its sample ids, returns the shard indices still to do),
    ``write_shard`` each, then ``close``.
    """

    def __init__(self, root: str | os.PathLike, key: dict, backbone: dict, shard_clips: int):
        self.root = Path(root)
        if self.root.exists() and not self.root.is_dir():
            raise FeatureStoreError(f"features.store={self.root} is a file, not a folder")
        if (self.root.is_dir() and any(self.root.iterdir()) and not (self.root / MANIFEST).is_file()):
            raise FeatureStoreError(f"features.store={self.root} exists, is not empty and is not a feature store; "
                                    f"choose an empty or new folder")
        self.root.mkdir(parents=True, exist_ok=True)
        self._lock = open(self.root / ".lock", "a+")
        try:
            fcntl.flock(self._lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock.close()
            raise FeatureStoreError(f"another process is writing feature store {self.root}; wait for it to "
                                    f"finish (or stop it) and run again") from None
        try:
            if (self.root / MANIFEST).is_file():
                self.manifest = FeatureStore.open(self.root).manifest
                check_key(self.root, self.manifest["key"], key)
                self.manifest["backbone"] = backbone  # same fingerprint; the path may have moved
            else:
                self.manifest = {"format": STORE_FORMAT, "format_version": STORE_FORMAT_VERSION, "key": key,
                                 "layout": {}, "backbone": backbone, "shard_clips": int(shard_clips),
                                 "created": time.strftime("%Y-%m-%dT%H:%M:%S"), "cvsjepa_version": __version__,
                                 "splits": {}}
                self._save()
            self._remove_temporaries()
        except BaseException:
            self.close()
            raise
        if self.manifest["shard_clips"] != shard_clips:
            log.info("feature store %s was started with features.shard_clips=%d; keeping that (asked %d)",
                     self.root, self.manifest["shard_clips"], shard_clips)
        self.shard_clips = int(self.manifest["shard_clips"])

    @property
    def store(self) -> FeatureStore:
        return FeatureStore(self.root, self.manifest)

    def _save(self) -> None:
        atomic_write_json(self.root / MANIFEST, self.manifest)

    def _remove_temporaries(self) -> None:
        for tmp in self.root.rglob(".tmp-*"):
            log.info("removing %s, left by an interrupted write", tmp)
            tmp.unlink(missing_ok=True)

    def _entries(self, kind: str | None) -> dict:
        """The per-split entries of the token shards (``kind`` None) or of a per-second artifact."""
        return self.manifest["splits"] if kind is None else self.manifest["seconds"][kind]["splits"]

    def open_seconds(self, kind: str, key: dict) -> None:
        """Create the per-second artifact ``kind`` (:mod:`.seconds`) or check the one stored has ``key``."""
        section = self.manifest.setdefault("seconds", {}).get(kind)
        if section is None:
            self.manifest["seconds"][kind] = {"key": key, "layout": {}, "splits": {}}
            self._save()
        else:
            check_key(self.root, section["key"], key, implied={})

    def set_seconds_layout(self, kind: str, layout: dict) -> None:
        section = self.manifest["seconds"][kind]
        if section["layout"] and section["layout"] != layout:
            raise StoreKeyError(f"feature store {self.root}: per-second embeddings {kind} were stored as "
                                f"{section['layout']}, this run makes {layout}; use a new features.store=...")
        if not section["layout"]:
            section["layout"] = layout
            self._save()

    def plan_split(self, split: str, sample_ids: list[str], clip_hashes: list[str], verify: bool = True,
                   kind: str | None = None, extra: dict | None = None) -> list[int]:
        """Record the split's clips (keyframes, or every second for a per-second artifact ``kind``; with
        ``extra`` fields such as the videos' rows) or check them against the recorded ones, and return
        the shard indices still to write. Listed shards that fail their check are dropped and redone."""
        entries = self._entries(kind)
        entry = entries.get(split)
        if entry is None:
            entry = {"sample_ids": list(sample_ids), "clip_hashes": list(clip_hashes),
                     "shard_clips": self.shard_clips, "shards": {}, "complete": False, **(extra or {})}
            entries[split] = entry
            self._save()
        elif entry["sample_ids"] != list(sample_ids) or entry["clip_hashes"] != list(clip_hashes):
            raise FeatureStoreError(
                f"split '{split}' of feature store {self.root} was planned over other keyframe clips "
                f"({_first_difference(entry['sample_ids'], entry['clip_hashes'], sample_ids, clip_hashes)}); the "
                f"dataset, data.source or data.limit_per_split changed: use a new features.store=...")
        n_shards = -(-len(sample_ids) // entry["shard_clips"])
        for k, sentry in list(entry["shards"].items()):
            try:
                check_shard(self.root / sentry["file"], sentry, checksum=verify)
            except ShardCorruptError as e:
                log.warning("%s; it will be extracted again", e)
                del entry["shards"][k]
                entry["complete"] = False
                self._save()
        todo = [k for k in range(n_shards) if str(k) not in entry["shards"]]
        if not todo and not entry["complete"]:
            entry["complete"] = True
            self._save()
        return todo

    def shard_rows(self, split: str, k: int, kind: str | None = None) -> range:
        entry = self._entries(kind)[split]
        n, s = len(entry["sample_ids"]), entry["shard_clips"]
        return range(k * s, min(n, (k + 1) * s))

    def set_layout(self, layout: dict) -> None:
        """Record the token layout on the first shard; later shards (and resumed runs) must agree."""
        old = self.manifest.get("layout")
        if old and old != layout:
            diffs = [(f, old.get(f), layout.get(f)) for f in sorted(set(old) | set(layout))
                     if old.get(f) != layout.get(f)]
            raise StoreKeyError(f"feature store {self.root}: this run produces a token layout that differs from "
                                f"the stored one ({', '.join(f'{f}: {a!r} vs {b!r}' for f, a, b in diffs)}); "
                                f"was the backbone code changed? Use a new features.store=...")
        if not old:
            self.manifest["layout"] = layout
            self._save()

    def write_shard(self, split: str, k: int, tokens: np.ndarray, skipped_rows: list[int] = (),
                    kind: str | None = None) -> dict:
        """Write shard ``k`` of ``split`` (``tokens [clips, views, N, D]``, or per-second embeddings
        ``[seconds, E]`` of the artifact ``kind``) atomically, then list it in the manifest with its size
        and sha256. ``skipped_rows`` (rows within the shard) failed to load."""
        entry = self._entries(kind)[split]
        rows = self.shard_rows(split, k, kind)
        if tokens.shape[0] != len(rows):
            raise ValueError(f"shard {k} of {split} needs {len(rows)} clips, got {tokens.shape[0]}")
        rel = shard_name(split, k, kind)
        path = self.root / rel
        digest, size = _write_npy_atomic(path, tokens)
        entry["shards"][str(k)] = {"file": rel, "clips": len(rows), "bytes": size, "sha256": digest,
                                   "skipped": sorted(int(r) for r in skipped_rows)}
        n_shards = -(-len(entry["sample_ids"]) // entry["shard_clips"])
        entry["complete"] = len(entry["shards"]) == n_shards
        self._save()  # after the shard is durable: the manifest never lists a shard that is not
        return entry["shards"][str(k)]

    def record_shard(self, split: str, k: int, entry: dict, kind: str | None = None) -> None:
        """List a shard another rank wrote (DDP extraction), after checking its file and checksum."""
        check_shard(self.root / entry["file"], entry, checksum=True)
        split_entry = self._entries(kind)[split]
        split_entry["shards"][str(k)] = entry
        n_shards = -(-len(split_entry["sample_ids"]) // split_entry["shard_clips"])
        split_entry["complete"] = len(split_entry["shards"]) == n_shards
        self._save()

    def close(self) -> None:
        if not self._lock.closed:
            fcntl.flock(self._lock.fileno(), fcntl.LOCK_UN)
            self._lock.close()

    def __enter__(self) -> "StoreWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _first_difference(old_ids, old_hashes, new_ids, new_hashes) -> str:
    if len(old_ids) != len(new_ids):
        return f"{len(old_ids)} recorded, {len(new_ids)} now"
    for i, (a, b, ha, hb) in enumerate(zip(old_ids, new_ids, old_hashes, new_hashes)):
        if a != b:
            return f"clip {i} is {a} in the store, {b} now"
        if ha != hb:
            return f"keyframe {a} has other clip frames now"
    return "same ids"


class _HashingFile:
    """File wrapper that hashes every byte written (numpy writes .npy data through ``write``)."""

    def __init__(self, f):
        self.f, self.h, self.n = f, hashlib.sha256(), 0

    def write(self, data) -> int:
        mv = memoryview(data).cast("B")
        self.h.update(mv)
        self.n += len(mv)
        return self.f.write(mv)


def _write_npy_atomic(path: Path, arr: np.ndarray) -> tuple[str, int]:
    """Write a shard atomically (:func:`cvsjepa.io.atomic_write`), hashing its bytes on the way."""
    hashed: list[_HashingFile] = []

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            hashed.append(_HashingFile(f))
            np.lib.format.write_array(hashed[0], np.ascontiguousarray(arr), allow_pickle=False)

    atomic_write(path, write, disk_full=f"disk full while writing shard {path}; finished shards are intact. "
                                        f"Free space and run the same `cvsjepa extract` again to resume")
    return hashed[0].h.hexdigest(), hashed[0].n


class RankShardWriter:
    """What a rank other than 0 uses during DDP extraction: it writes its shards (atomically, with
    their sha256) but not the manifest, which rank 0 alone owns; rank 0 records the entries after."""

    def __init__(self, root: str | os.PathLike, shard_plan: dict[str, tuple[int, int]]):
        self.root = Path(root)
        self.plan = shard_plan  # split -> (number of clips, clips per shard), of the phase being extracted
        self.shard_clips = next(iter(shard_plan.values()))[1] if shard_plan else 0
        self.layout: dict | None = None
        self.written: list[tuple[str, int, dict]] = []
        self.manifest = {"layout": {}}

    def shard_rows(self, split: str, k: int, kind: str | None = None) -> range:
        n, s = self.plan[split]
        return range(k * s, min(n, (k + 1) * s))

    def set_layout(self, layout: dict) -> None:
        self.layout = layout
        self.manifest["layout"] = layout

    def set_seconds_layout(self, kind: str, layout: dict) -> None:
        self.layout = layout

    def write_shard(self, split: str, k: int, tokens: np.ndarray, skipped_rows: list[int] = (),
                    kind: str | None = None) -> dict:
        rows = self.shard_rows(split, k)
        rel = shard_name(split, k, kind)
        digest, size = _write_npy_atomic(self.root / rel, tokens)
        entry = {"file": rel, "clips": len(rows), "bytes": size, "sha256": digest,
                 "skipped": sorted(int(r) for r in skipped_rows)}
        self.written.append((split, k, entry))
        return entry
