"""Feature store read throughput against the physical limit, in one run (imported by
benchmarks/feature_store.py as section (e); also runs alone):

    python benchmarks/store_read.py [--clips 64] [--tokens 2048] [--dim 1024] [--repeats 3]

For each encoding (float16, int8, float8_e4m3) a store of ``--clips`` clips of ViT-L shape
(2048 tokens x 1024 at 16 x 256, random tokens: timing does not depend on the values) is written
through the store writer; every shard is read once so the page cache holds it. Then, best of
``--repeats``:

* **raw**: the shard files' bytes read into one reused buffer (``readinto``, whole files): the rate
  at which this machine copies these bytes out of the page cache, the physical limit of any reader;
* **reader, training order**: the DataLoader the training loop uses (shuffled batches of 8, the main
  process, ``collate_skip_none``) over a ``StoreDataset``: stored bytes per second, decoding
  included (int8 / float8 -> float32);
* **reader, eval order**: the same in order (runs of consecutive rows are one read);
* for int8 / float8: **decoding alone** (codes x scale -> float32, in memory): the compute part of
  the reader's time, which writes 4x the stored bytes (float32) and runs on ``--threads`` cores.

Goal (issue 22): reader >= 0.8x raw. Nothing is downloaded; the work folder is deleted unless --keep.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from cvsjepa.data.dataset import collate_skip_none
from cvsjepa.data.endoscapes import Sample
from cvsjepa.features import FeatureStore, StoreWriter
from cvsjepa.features.dataset import StoreDataset
from cvsjepa.features.encoding import encoding_of
from cvsjepa.features.store import clip_hash

GiB = 2 ** 30
ENCODINGS = ("float16", "int8", "float8_e4m3")


def write_store(path: Path, encoding: str, clips: int, n: int, d: int, shard_clips: int = 32) -> int:
    """A store of random tokens in ``encoding``; returns its shard bytes."""
    enc = encoding_of(encoding)
    layout = {"dtype": encoding, "views": 1, "view_names": ["center"], "tokens_per_clip": n, "embed_dim": d,
              "token_grid": [], "levels": 1, "backbone_token_grid": [], "pool": "none", "shard_clips": shard_clips,
              "bytes_per_clip": n * enc.stored_dim(d) * np.dtype(enc.disk).itemsize}
    gen = torch.Generator().manual_seed(0)
    with StoreWriter(path, {"benchmark": "random tokens", "dtype": encoding}, {"name": "random"}, shard_clips) as w:
        w.plan_split("train", [f"1_{i}" for i in range(clips)], [clip_hash((i,)) for i in range(clips)])
        w.set_layout(layout)
        for k in range(-(-clips // shard_clips)):
            rows = w.shard_rows("train", k)
            w.write_shard("train", k, enc.encode(torch.randn(len(rows), 1, n, d, generator=gen)))
    return sum(f.stat().st_size for f in (path / "shards").rglob("*.npy"))


def read_raw(path: Path, buf: bytearray) -> int:
    total = 0
    for f in sorted((path / "shards").rglob("*.npy")):
        with open(f, "rb", buffering=0) as fh:
            total += fh.readinto(memoryview(buf)[:f.stat().st_size])
    return total


def read_loader(path: Path, shuffle: bool, batch: int) -> int:
    reader = FeatureStore.open(path).reader("train")
    samples = [Sample(sid, 1, i, "train", (0.0, 0.0, 0.0), (0, 0, 0), (i,), ())
               for i, sid in enumerate(reader.sample_ids)]
    loader = DataLoader(StoreDataset(samples, reader), batch_size=batch, shuffle=shuffle, collate_fn=collate_skip_none,
                        generator=torch.Generator().manual_seed(0))
    clips = 0
    for b in loader:
        clips += len(b["tokens"])
    return clips * reader.view_bytes


def best_rate(fn, repeats: int) -> float:
    """Best of ``repeats`` (least disturbed by other jobs), in bytes per second."""
    rates = []
    for _ in range(repeats):
        t = time.perf_counter()
        n = fn()
        rates.append(n / (time.perf_counter() - t))
    return max(rates)


def bench_read(work: Path, clips: int = 64, n: int = 2048, d: int = 1024, repeats: int = 3, batch: int = 8) -> dict:
    out = {}
    for name in ENCODINGS:
        path = work / f"read_{name}"
        size = write_store(path, name, clips, n, d)
        buf = bytearray(max(f.stat().st_size for f in (path / "shards").rglob("*.npy")))
        read_raw(path, buf)  # into the page cache
        row = {"store_bytes": size, "clips": clips,
               "raw": best_rate(lambda: read_raw(path, buf), repeats),
               "train_order": best_rate(lambda: read_loader(path, True, batch), repeats),
               "eval_order": best_rate(lambda: read_loader(path, False, batch), repeats)}
        row["ratio_train"], row["ratio_eval"] = row["train_order"] / row["raw"], row["eval_order"] / row["raw"]
        enc = encoding_of(name)
        if enc.scaled:  # the decoding alone (in memory, reused buffers): compute, not reading
            stored = torch.from_numpy(enc.encode(torch.randn(batch, n, d)))
            decoded = torch.empty(batch, n, d)
            row["decode_only"] = best_rate(lambda: enc.decode(stored, decoded).numel() * 0 + stored.numel(), repeats)
        out[name] = row
        shutil.rmtree(path)
    return out


def report(r: dict) -> list[str]:
    lines = ["(e) read throughput from the page cache (stored bytes/s; raw = the same files read into one buffer):"]
    for name, x in r.items():
        lines.append(f"      {name:<12} {x['store_bytes'] / 2 ** 20:6.0f} MiB store: raw {x['raw'] / GiB:5.2f} GiB/s | "
                     f"reader, training order {x['train_order'] / GiB:5.2f} GiB/s = {x['ratio_train']:.2f}x | "
                     f"eval order {x['eval_order'] / GiB:5.2f} GiB/s = {x['ratio_eval']:.2f}x"
                     + (f" | decoding alone {x['decode_only'] / GiB:.2f} GiB/s" if "decode_only" in x else ""))
    return lines


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--clips", type=int, default=64)
    p.add_argument("--tokens", type=int, default=2048)
    p.add_argument("--dim", type=int, default=1024)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--keep", action="store_true")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    work = Path(tempfile.mkdtemp(prefix="cvsjepa-readbench-"))
    load = os.getloadavg()[0]
    try:
        r = bench_read(work, args.clips, args.tokens, args.dim, args.repeats)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    print(f"load average at start {load:.1f} / end {os.getloadavg()[0]:.1f}, {args.threads} thread(s)")
    print("\n".join(report(r)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
