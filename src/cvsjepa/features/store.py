"""The feature store on disk: a key, a manifest, and checksummed ``.npy`` shards read by mmap.

Layout of a store folder::

    manifest.json                     format, key, layout, backbone description, and per split:
                                      the planned sample ids, a hash of each clip's frame list,
                                      and every finished shard with its byte size and sha256
    shards/{split}/{k:05d}.npy        tokens of clips [k * shard_clips, (k + 1) * shard_clips) of
                                      the split, shape [clips, views, N, D'], encoded as
                                      features.dtype says (features/encoding.py: D' = D, or
                                      D + 4 bytes of per-token scale for int8 / float8_e4m3)
    .lock                             held (flock) by the one process writing the store

**Key.** Everything that changes the tokens (:func:`store_key`): the backbone's weights fingerprint
and shape fields, clip frames and stride, the layer selection, pooling, dtype, the number of views
and :data:`PREPROCESSING_VERSION`. A run whose key differs is refused (:class:`StoreKeyError`
names the field, the stored and the requested value); nothing is ever mixed. The dataset root is
not part of the key (datasets move); each split records its sample ids and clip-frame hashes, and
readers check them against the dataset they index.

**Writing** (:class:`cvsjepa.features.writer.StoreWriter`): each shard goes to a temporary file,
is hashed while written, fsync'ed and renamed; only then is the manifest (itself written
atomically) updated to list it. A crash at any point leaves the manifest listing only complete,
checksummed shards; a resumed extraction deletes temporary files, redoes every unlisted shard and
re-extracts a listed shard whose checksum fails.

**Reading** (:class:`StoreReader`): ``pread`` straight into the caller's buffer, one call per run
of consecutive rows (a whole eval batch, a whole clip), then decoding (:mod:`.encoding`). Nothing is
memory-mapped, so resident memory stays flat however large the store (measured in
docs/benchmarks.md). Opening checks every shard's size (catches truncation);
:meth:`FeatureStore.verify` checks the sha256 (catches any corruption).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import torch

from ..errors import CVSJepaError
from ..io import sha256_file
from .encoding import encoding_of

log = logging.getLogger("cvsjepa")

STORE_FORMAT = "cvsjepa-feature-store"
STORE_FORMAT_VERSION = 2  # 2 adds the scaled encodings (int8, float8_e4m3); version 1 stores read as before
# Bump when the pixels fed to the backbone change (data/transforms.py, features/views.py, clip
# frame selection): stores written before then are refused instead of silently mixed.
PREPROCESSING_VERSION = 1
MANIFEST = "manifest.json"
SECONDS_DIR = "seconds"  # per-second embeddings (features.seconds): manifest["seconds"][kind], seconds/{kind}/...


# Backbone description fields that shape the tokens (with the weights fingerprint).
BACKBONE_KEY_FIELDS = ("family", "preset", "embed_dim", "crop_size", "patch_size", "tubelet_size",
                       "num_layers", "num_heads", "mlp_ratio")

# key field -> what the user changes to change it (for the mismatch message)
_KEY_HINTS = {
    "frames": "data.frames", "stride": "data.stride", "layers": "backbone.layers", "pool": "features.pool",
    "dtype": "features.dtype", "views": "features.views", "view": "data.view",
    "preprocessing_version": "cvsjepa's preprocessing version (the store predates a change to it)",
    "backbone.fingerprint": "backbone weights (backbone.path / backbone.preset)",
}


class FeatureStoreError(CVSJepaError):
    """A feature store is missing, incomplete, damaged, or does not fit this run."""


class StoreKeyError(FeatureStoreError):
    """The store was extracted with settings that give other tokens than this run's."""


class ShardCorruptError(FeatureStoreError):
    """A shard file is missing, truncated or fails its checksum; the message names the file."""


# ---------------------------------------------------------------------------- key
def config_key(cfg) -> dict[str, Any]:
    """The part of the key that the run config alone determines (no backbone weights needed)."""
    return {
        "preprocessing_version": PREPROCESSING_VERSION,
        "frames": int(cfg.data.frames),
        "stride": int(cfg.data.stride),
        "layers": [int(x) for x in cfg.backbone.layers],
        "pool": cfg.features.pool,
        "dtype": cfg.features.dtype,
        "views": int(cfg.features.views),
        "view": cfg.data.view,
    }


# Key fields added after stores were first written, with the value an older store implies.
_IMPLIED_BY_OLD_STORES = {"view": "center"}  # before data.view every store held center crops


def store_key(cfg, backbone) -> dict[str, Any]:
    """Everything that changes the stored tokens, from a run config and its (built) backbone."""
    desc = backbone.describe()
    return {**config_key(cfg),
            "backbone": {"fingerprint": backbone.weights_fingerprint(),
                         **{k: desc[k] for k in BACKBONE_KEY_FIELDS if k in desc}}}


def _flat(d: dict, prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def key_differences(stored: dict, requested: dict) -> list[tuple[str, Any, Any]]:
    """``[(field, stored value, requested value)]`` for every key field that differs."""
    a, b = _flat(stored), _flat(requested)
    return [(k, a.get(k, "<absent>"), b.get(k, "<absent>")) for k in sorted(set(a) | set(b), key=_key_order)
            if a.get(k, "<absent>") != b.get(k, "<absent>")]


def _key_order(field: str) -> tuple[int, str]:
    # the fingerprint last: when the shape also differs, the shape is the clearer message
    return (1 if field == "backbone.fingerprint" else 0, field)


def _describe_field(field: str) -> str:
    if field in _KEY_HINTS:
        return f"{field} ({_KEY_HINTS[field]})"
    if field.startswith("backbone."):
        return f"{field} (backbone.preset / backbone.path)"
    return field


def check_key(root: Path, stored: dict, requested: dict, implied: dict | None = None) -> None:
    """StoreKeyError naming the first field that differs; ``implied``: values a store written before
    a field existed holds (default: the token key's)."""
    diffs = key_differences({**(_IMPLIED_BY_OLD_STORES if implied is None else implied), **stored}, requested)
    if not diffs:
        return
    field, old, new = diffs[0]
    more = f"; also differs: {', '.join(d[0] for d in diffs[1:])}" if len(diffs) > 1 else ""
    raise StoreKeyError(f"feature store {root} does not match this run: {_describe_field(field)} is {old!r} in "
                        f"the store but {new!r} here{more}. Tokens of other settings are never mixed: use another "
                        f"features.store=... for these settings, or the store's settings")


def clip_hash(clip_frames: Iterable[int]) -> str:
    """12 hex digits identifying a clip's frame list (catches a changed frame list or data.source)."""
    return hashlib.sha1(",".join(str(int(f)) for f in clip_frames).encode()).hexdigest()[:12]


def shard_name(split: str, index: int, kind: str | None = None) -> str:
    """A shard's path in the store: token shards (``kind`` None), or the per-second embeddings of the
    artifact ``kind`` (:mod:`.seconds`)."""
    safe = split.replace("/", "__").replace("\\", "__")
    return f"shards/{safe}/{index:05d}.npy" if kind is None else f"{SECONDS_DIR}/{kind}/{safe}/{index:05d}.npy"


# ---------------------------------------------------------------------------- reading
@dataclass(frozen=True)
class ShardInfo:
    path: Path
    shape: tuple[int, ...]  # [clips, views, N, D]
    offset: int  # bytes of .npy header before the data
    dtype: np.dtype


def _npy_header(path: Path) -> tuple[tuple[int, ...], np.dtype, int]:
    with open(path, "rb") as f:
        try:
            version = np.lib.format.read_magic(f)
            read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                           else np.lib.format.read_array_header_2_0)
            shape, fortran, dtype = read_header(f)
        except (ValueError, EOFError, OSError) as e:
            raise ShardCorruptError(f"shard {path} has no readable .npy header ({e}); it is damaged: run "
                                    f"`cvsjepa extract` with the same settings again to redo it") from e
        if fortran:
            raise ShardCorruptError(f"shard {path} is Fortran-ordered; it was not written by cvsjepa")
        return tuple(shape), dtype, f.tell()


class FeatureStore:
    """A store folder and its manifest (read only). ``FeatureStore.open(dir)``."""

    def __init__(self, root: Path, manifest: dict):
        self.root = Path(root)
        self.manifest = manifest

    @classmethod
    def open(cls, root: str | os.PathLike) -> "FeatureStore":
        root = Path(root)
        path = root / MANIFEST
        if not root.is_dir():
            raise FeatureStoreError(f"feature store {root} does not exist; write it first with "
                                    f"`cvsjepa extract CONFIG features.store={root} data.root=...`")
        if not path.is_file():
            raise FeatureStoreError(f"{root} is not a feature store ({MANIFEST} is missing); was the extraction "
                                    f"started? `cvsjepa extract` writes it")
        try:
            manifest = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise FeatureStoreError(f"{path} is not readable JSON ({e}); the store is damaged") from e
        if manifest.get("format") != STORE_FORMAT:
            raise FeatureStoreError(f"{path} is not a cvsjepa feature store manifest (format="
                                    f"{manifest.get('format')!r})")
        if manifest.get("format_version", 0) > STORE_FORMAT_VERSION:
            raise FeatureStoreError(f"{path} has format version {manifest['format_version']}, newer than this "
                                    f"cvsjepa reads ({STORE_FORMAT_VERSION}); upgrade cvsjepa")
        return cls(root, manifest)

    # ---------------------------------------------------------------- metadata
    @property
    def key(self) -> dict:
        return self.manifest["key"]

    @property
    def layout(self) -> dict:
        """``dtype, views, view_names, tokens_per_clip, embed_dim, token_grid, levels,
        backbone_token_grid, pool, shard_clips`` (empty until the first shard is written)."""
        return self.manifest.get("layout") or {}

    @property
    def backbone(self) -> dict:
        """The extracting backbone's ``describe()``."""
        return self.manifest.get("backbone") or {}

    @property
    def splits(self) -> dict[str, dict]:
        return self.manifest.get("splits", {})

    @property
    def seconds(self) -> dict[str, dict]:
        """Per-second embedding artifacts: ``{kind: {"key", "layout", "splits"}}`` (:mod:`.seconds`)."""
        return self.manifest.get("seconds", {})

    def entries(self, kind: str | None = None) -> dict[str, dict]:
        """The per-split entries of the token shards (``kind`` None) or of a per-second artifact."""
        return self.splits if kind is None else self.seconds.get(kind, {}).get("splits", {})

    def check_key(self, requested: dict) -> None:
        check_key(self.root, self.key, requested)

    def split_entry(self, split: str, kind: str | None = None) -> dict:
        entry = self.entries(kind).get(split)
        what = "clips" if kind is None else f"per-second embeddings ({kind})"
        redo = f"extract it with `cvsjepa extract ... features.store={self.root} features.splits=[{split}]`" + (
            "" if kind is None else " features.seconds=true")
        if entry is None:
            have = ", ".join(self.entries(kind)) or "none"
            raise FeatureStoreError(f"split '{split}' is not in feature store {self.root} as {what} (it holds: "
                                    f"{have}); {redo}")
        if not entry.get("complete"):
            done = sum(s["clips"] for s in entry["shards"].values())
            raise FeatureStoreError(f"split '{split}' of feature store {self.root} is incomplete ({done} of "
                                    f"{len(entry['sample_ids'])} {what}); run the same `cvsjepa extract` again "
                                    f"to finish it")
        return entry

    def shard_paths(self, splits: Iterable[str] | None = None, kind: str | None = None,
                    everything: bool = False) -> list[tuple[Path, dict]]:
        """Listed shards of ``splits`` (all when None) of the token shards or the artifact ``kind``;
        ``everything``: of the tokens and every per-second artifact."""
        sections = [self.entries(kind)] if not everything else [self.splits] + [
            a.get("splits", {}) for a in self.seconds.values()]
        out = []
        for section in sections:
            names = list(section) if splits is None else list(splits)
            out += [(self.root / s["file"], s) for n in names
                    for _, s in sorted(section[n]["shards"].items(), key=lambda kv: int(kv[0]))]
        return out

    def verify(self, splits: Iterable[str] | None = None, checksum: bool = True, progress: bool = False,
               kind: str | None = None) -> int:
        """Check every listed shard of ``splits`` of the tokens or the per-second artifact ``kind`` (all
        splits, and every artifact too, when ``splits`` and ``kind`` are None): it exists, has the
        recorded size and (``checksum``) the recorded sha256. Returns the bytes checked; raises
        ShardCorruptError naming the first bad file."""
        from tqdm.auto import tqdm

        items = self.shard_paths(splits, kind, everything=splits is None and kind is None)
        total = 0
        for path, entry in tqdm(items, desc="verify", unit="shard", disable=not progress, leave=False):
            check_shard(path, entry, checksum)
            total += entry["bytes"]
        return total

    def reader(self, split: str) -> "StoreReader":
        return StoreReader(self, split)


def check_shard(path: Path, entry: dict, checksum: bool = True) -> None:
    """Size (always) and sha256 (``checksum``) of one shard against its manifest entry."""
    redo = "run the same `cvsjepa extract` again to redo it"
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise ShardCorruptError(f"shard {path} is missing from the feature store; {redo}") from None
    if size != entry["bytes"]:
        raise ShardCorruptError(f"shard {path} is {size} bytes but was written as {entry['bytes']}: it is truncated "
                                f"or damaged; {redo}")
    if checksum:
        digest = sha256_file(path)
        if digest != entry["sha256"]:
            raise ShardCorruptError(f"shard {path} fails its checksum (sha256 {digest[:16]}... != recorded "
                                    f"{entry['sha256'][:16]}...): the file is corrupted; {redo}")




class StoreReader:
    """One complete split, read with ``pread`` into memory the caller owns.

    ``read(row, view) -> tokens [N, D]``; ``read_rows(rows, view) -> [len(rows), N, D]``, where each
    run of consecutive rows of a shard is **one** read (whole batches in eval order, whole clips
    otherwise: MiBs per call). Tokens come back decoded (:mod:`.encoding`): the stored dtype for
    float16/bfloat16/float32, float32 for the scaled encodings.

    Reads go through the page cache into the caller's buffer; nothing is memory-mapped, so the
    process's resident memory does not grow with the store however much is read. Picklable for
    DataLoader workers: file descriptors are opened lazily in each process.
    """

    def __init__(self, store: FeatureStore, split: str):
        entry = store.split_entry(split)
        self.root, self.split = store.root, split
        layout = self.layout = dict(store.layout)
        self.views = int(layout["views"])
        try:
            self.encoding = encoding_of(layout["dtype"])
        except ValueError as e:
            raise FeatureStoreError(f"feature store {store.root}: {e}; upgrade cvsjepa") from None
        self.disk_dtype = np.dtype(self.encoding.disk)
        self.token_shape = (int(layout["tokens_per_clip"]), self.encoding.stored_dim(int(layout["embed_dim"])))
        self.view_bytes = int(np.prod(self.token_shape)) * self.disk_dtype.itemsize
        self.shard_clips = int(entry["shard_clips"])
        self.shards: list[ShardInfo] = []
        skipped = []
        for k, (path, sentry) in enumerate(store.shard_paths([split])):
            check_shard(path, sentry, checksum=False)
            shape, dtype, offset = _npy_header(path)
            want = (sentry["clips"], self.views, *self.token_shape)
            if shape != want or dtype != self.disk_dtype:
                raise ShardCorruptError(f"shard {path} holds {shape} {dtype}, the manifest says {want} "
                                        f"{self.disk_dtype}; the store is damaged")
            self.shards.append(ShardInfo(path, shape, offset, dtype))
            skipped += [k * self.shard_clips + r for r in sentry.get("skipped", [])]
        self.sample_ids: list[str] = list(entry["sample_ids"])
        self.clip_hashes: list[str] = list(entry["clip_hashes"])
        self.skipped_rows = set(skipped)  # clips that failed to load at extraction (on_bad_sample=skip)
        self.row_of = {sid: i for i, sid in enumerate(self.sample_ids)}
        self._fds: dict[int, int] = {}

    def __len__(self) -> int:
        return len(self.sample_ids)

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_fds"] = {}  # file descriptors are per process
        return state

    def __del__(self) -> None:
        self.close()

    def item_shape(self, view: int | None = 0) -> tuple[int, ...]:
        """Shape of one clip's tokens as stored: ``[N, stored_dim]``, ``[views, N, stored_dim]`` for ``view=None``."""
        return self.token_shape if view is not None else (self.views, *self.token_shape)

    def read(self, row: int, view: int | None = 0) -> torch.Tensor:
        """Tokens of clip ``row``: ``[N, D]`` for one view, ``[views, N, D]`` for ``view=None``."""
        return self.read_rows([row], view)[0]

    def read_rows(self, rows: list[int], view: int | None = 0, stored: torch.Tensor | None = None,
                  out: torch.Tensor | None = None) -> torch.Tensor:
        """Tokens of clips ``rows`` (in that order): ``[len(rows), N, D]`` (``[.., views, N, D]`` for
        ``view=None``). ``stored``: a contiguous CPU tensor ``[len(rows), *item_shape(view)]`` of the
        disk dtype to read into, ``out``: a float32 one to decode a scaled encoding into (both
        optional, for callers that reuse memory). Plain encodings return (a view of) ``stored``."""
        shape = (len(rows), *self.item_shape(view))
        if stored is None:
            stored = torch.from_numpy(np.empty(shape, dtype=self.disk_dtype))
        raw = stored.numpy()
        if raw.shape != shape or raw.dtype != self.disk_dtype or not raw.flags.c_contiguous:
            raise ValueError(f"stored buffer must be a contiguous {shape} {self.disk_dtype} tensor")
        flat = raw.reshape(len(rows), -1).view(np.uint8)
        for at, run in _runs(rows, self.shard_clips, coalesce=view is None or self.views == 1):
            k, r = divmod(run[0], self.shard_clips)
            first = r * self.views + (view or 0)  # in views, from the start of the shard's data
            self._pread(k, flat[at:at + len(run)].reshape(-1), self.shards[k].offset + first * self.view_bytes)
        return self.encoding.decode(stored, out)

    def _pread(self, k: int, into: np.ndarray, offset: int) -> None:
        fd = self._fds.get(k)
        if fd is None:
            fd = self._fds[k] = os.open(self.shards[k].path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        done, view = 0, memoryview(into)
        while done < len(view):
            n = os.preadv(fd, [view[done:]], offset + done)
            if n <= 0:
                raise ShardCorruptError(f"shard {self.shards[k].path} ended early (at byte {offset + done}): it "
                                        f"was truncated after the store was opened; run the same `cvsjepa "
                                        f"extract` again to redo it")
            done += n

    def close(self) -> None:
        fds, self._fds = getattr(self, "_fds", {}), {}
        for fd in fds.values():
            try:
                os.close(fd)
            except OSError:
                pass


def _runs(rows: list[int], shard_clips: int, coalesce: bool):
    """``(position in rows, [row, row + 1, ...])`` for each run of consecutive rows of one shard
    (every row on its own when not ``coalesce``)."""
    start = 0
    for i in range(1, len(rows) + 1):
        if (i == len(rows) or not coalesce or rows[i] != rows[i - 1] + 1
                or rows[i] // shard_clips != rows[start] // shard_clips):
            yield start, rows[start:i]
            start = i
