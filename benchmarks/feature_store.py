"""Feature store benchmark: prints the figures recorded in docs/benchmarks_feature_store.md.

    python benchmarks/feature_store.py [--clips 4] [--threads 2] [--json out.json]

(a) per-epoch time of training the log's head (attentive, 8 heads, MLP 512) from stored tokens vs
    with the frozen backbone in the loop, side by side, on the V-JEPA 2 ViT-L shape at 16 frames x
    256 px (RANDOM weights: timing does not depend on them), on the first ``--clips`` keyframe clips
    of a synthetic dataset;
(b) extraction of those clips: clips/s and the split decode / preprocess / forward / write,
    decodes per JPEG;
(c) bytes per clip of each storage option at that shape (measured on shard files), and the peak
    RSS of a process reading every clip of a store vs a store twice as large, with and without
    dropping the read pages (``madvise(MADV_DONTNEED)``);
(d) a sweep of K = 20 heads (the official 5 lr x 4 wd grid) vs 20 separate runs (K = 1 sweeps,
    each a full run: backbone load for the store's key check, index, training, test, run
    directory), all actually run, on a store of ViT-L avg2x2-pooled shape (512 tokens x 1024, fp16)
    filled with RANDOM tokens for the synthetic dataset's keyframes (timing does not depend on the
    token values).

Everything runs on the CPU; nothing is downloaded. The work folder is deleted unless --keep.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from cvsjepa.backbones import build_backbone
from cvsjepa.config import load_config
from cvsjepa.data.loaders import build_splits
from cvsjepa.data.synth import write_synthetic_dataset
from cvsjepa.features import FeatureStore, StoreWriter, open_store_splits, store_key
from cvsjepa.features.extract import extract, pool_tokens
from cvsjepa.features.store import DTYPES, clip_hash
from cvsjepa.heads import build_head
from cvsjepa.model import CVSClassifier

REPO = Path(__file__).resolve().parent.parent
MiB = 2 ** 20
ENDOSCAPES_CLIPS = 11_090  # keyframe clips of Endoscapes2023 (all splits)


def log(msg: str) -> None:
    print(msg, flush=True)


# ---------------------------------------------------------------------------- setup
def make_data(work: Path) -> Path:
    root = work / "data"
    if not (root / "oracle.json").is_file():
        write_synthetic_dataset(root, seed=0, videos=(4, 2, 2), min_seconds=30, max_seconds=45, progress=False)
    return root


def make_weights(work: Path, preset: str) -> Path:
    """A random-weight backbone saved as a local HF directory, loaded like real weights would be."""
    path = work / f"{preset}-random"
    if not (path / "config.json").is_file():
        bb = build_backbone(load_config(None, [f"backbone={preset}", "backbone.random_weights=true"]).backbone)
        bb.model.save_pretrained(path)
    return path


def base_overrides(root: Path, weights: Path, frames: int) -> list[str]:
    return ["backbone.preset=vitl", f"backbone.path={weights}", f"data.root={root}", f"data.frames={frames}",
            "head.num_heads=8", "head.mlp_hidden=512", "train.device=cpu"]


# ---------------------------------------------------------------------------- (a) + (b)
def head_epoch(model: CVSClassifier, loader, opt) -> float:
    """One training epoch as the loop runs it (forward, BCE, backward, clip, AdamW step)."""
    t0 = time.perf_counter()
    model.train()
    loss_fn = torch.nn.BCEWithLogitsLoss()
    for batch in loader:
        loss = loss_fn(model(batch).float(), batch["target"])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.head.parameters(), 1.0)
        opt.step()
    return time.perf_counter() - t0


def bench_extract_and_epochs(work: Path, root: Path, weights: Path, args) -> dict:
    store = work / "store_vitl_fp16"
    cfg = load_config(None, base_overrides(root, weights, args.frames) + [
        f"data.limit_per_split={args.clips}", "features.splits=[train]", f"features.store={store}",
        f"features.batch_size={args.batch}", f"features.shard_clips={args.clips}", f"train.batch_size={args.batch}"])
    log(f"(b) extracting {args.clips} clips of vitl {args.frames}x256 (random weights) ...")
    result = extract(cfg, progress=False)
    s = result.stats
    out = {"extract": {**s.as_dict(), "tokens_per_clip": result.layout["tokens_per_clip"],
                       "embed_dim": result.layout["embed_dim"]}}

    backbone = build_backbone(cfg.backbone).freeze()
    torch.manual_seed(0)
    head = build_head(cfg.head, backbone.embed_dim)
    init = {k: v.clone() for k, v in head.state_dict().items()}
    # in the loop: JPEG clips (frame cache warmed first, as from the second epoch on) -> backbone -> head
    live = build_splits(cfg, backbone.crop_size, roles=("train",))["train"]
    for i in range(len(live.dataset)):
        live.dataset[i]
    model = CVSClassifier(backbone, head)
    opt = torch.optim.AdamW(head.parameters(), lr=5e-4, weight_decay=0.01)
    log(f"(a) one epoch with the frozen backbone in the loop ({args.clips} clips) ...")
    live_epoch = head_epoch(model, live.loader(args.batch, True, 0, torch.Generator().manual_seed(0)), opt)
    # from the store: the same head (same init), same optimizer settings
    head.load_state_dict(init)
    split = open_store_splits(cfg, roles=("train",), backbone=backbone)["train"]
    model = CVSClassifier(None, head)
    opt = torch.optim.AdamW(head.parameters(), lr=5e-4, weight_decay=0.01)
    store_epochs = [head_epoch(model, split.loader(args.batch, True, 0, torch.Generator().manual_seed(e)), opt)
                    for e in range(args.store_epochs)]
    out["epoch"] = {"clips": args.clips, "in_loop_s": live_epoch, "store_s": statistics.median(store_epochs),
                    "store_epochs_s": store_epochs,
                    "ratio": live_epoch / statistics.median(store_epochs)}
    out["store"] = str(store)
    return out


# ---------------------------------------------------------------------------- (c)
def derive_store(src: Path, dst: Path, dtype: str, pool: str) -> float:
    """Rewrite ``src``'s tokens with another dtype / pooling through the store writer; bytes per clip."""
    store = FeatureStore.open(src)
    key = {**store.key, "dtype": dtype, "pool": pool}
    layout = dict(store.layout)
    grid = tuple(layout["backbone_token_grid"])
    with StoreWriter(dst, key, store.backbone, layout["shard_clips"]) as w:
        for split, entry in store.splits.items():
            reader = store.reader(split)
            w.plan_split(split, entry["sample_ids"], entry["clip_hashes"])
            tokens = torch.stack([reader.read(r, view=None) for r in range(len(reader))]).float()  # [C, V, N, D]
            c, v, n, d = tokens.shape
            pooled, pgrid, _ = pool_tokens(tokens.view(c * v, n, d), grid, pool)
            pooled = pooled.view(c, v, *pooled.shape[1:]).to(DTYPES[dtype][1])
            arr = pooled.view(torch.int16).numpy().view(np.uint16) if dtype == "bfloat16" else pooled.numpy()
            w.set_layout({**layout, "dtype": dtype, "pool": pool, "token_grid": list(pgrid),
                          "tokens_per_clip": int(arr.shape[2]), "bytes_per_clip": int(arr[0].nbytes)})
            for k in range(-(-c // layout["shard_clips"])):
                rows = w.shard_rows(split, k)
                w.write_shard(split, k, arr[rows.start:rows.stop])
    files = list((dst / "shards").rglob("*.npy"))
    clips = sum(len(e["sample_ids"]) for e in store.splits.values())
    return sum(f.stat().st_size for f in files) / clips


def write_random_store(path: Path, clips: int, n: int, d: int, shard_clips: int = 32) -> None:
    key = {"benchmark": "random tokens", "clips": clips}
    layout = {"dtype": "float16", "views": 1, "view_names": ["center"], "tokens_per_clip": n, "embed_dim": d,
              "token_grid": [], "levels": 1, "backbone_token_grid": [], "pool": "none", "shard_clips": shard_clips,
              "bytes_per_clip": n * d * 2}
    gen = np.random.default_rng(0)
    ids = [f"1_{i}" for i in range(clips)]
    with StoreWriter(path, key, {"name": "random tokens"}, shard_clips) as w:
        w.plan_split("train", ids, [clip_hash((i,)) for i in range(clips)])
        w.set_layout(layout)
        for k in range(-(-clips // shard_clips)):
            rows = w.shard_rows("train", k)
            w.write_shard("train", k, gen.standard_normal((len(rows), 1, n, d), dtype=np.float32).astype(np.float16))


RSS_CHILD = """
import mmap, resource, sys, time
from torch.utils.data import DataLoader
from cvsjepa.data.endoscapes import Sample
from cvsjepa.data.dataset import collate_skip_none
from cvsjepa.features import FeatureStore
from cvsjepa.features import store as store_mod
from cvsjepa.features.dataset import StoreDataset
if sys.argv[2] == "keep-pages":
    store_mod._drop_pages = lambda *a: None
def rss():  # resident set now, in bytes (anonymous + file-backed mapped pages)
    return int(open("/proc/self/statm").read().split()[1]) * mmap.PAGESIZE
reader = FeatureStore.open(sys.argv[1]).reader("train")
samples = [Sample(sid, 1, i, "train", (0.0, 0.0, 0.0), (0, 0, 0), (i,), ()) for i, sid in enumerate(reader.sample_ids)]
ds = StoreDataset(samples, reader)
loader = DataLoader(ds, batch_size=8, shuffle=True, collate_fn=collate_skip_none)
before = peak = rss()
t = time.perf_counter()
for batch in loader:
    batch["tokens"].float()  # what the head does with it
    peak = max(peak, rss())
print(before, peak, time.perf_counter() - t, len(ds), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
"""


def rss_read(path: Path, mode: str) -> dict:
    out = subprocess.run([sys.executable, "-c", RSS_CHILD, str(path), mode], capture_output=True, text=True,
                         cwd=REPO, check=True).stdout.split()
    before, peak, seconds, clips, maxrss = int(out[0]), int(out[1]), float(out[2]), int(out[3]), int(out[4])
    return {"before_mib": before / MiB, "peak_mib": peak / MiB, "growth_mib": (peak - before) / MiB,
            "ru_maxrss_mib": maxrss / MiB, "read_s": seconds, "clips": clips}


def bench_storage(work: Path, src: Path, args) -> dict:
    out = {"bytes_per_clip": {}}
    src_store = FeatureStore.open(src)
    n, d = src_store.layout["tokens_per_clip"], src_store.layout["embed_dim"]
    for name, dtype, pool in (("fp16", "float16", "none"), ("bf16", "bfloat16", "none"), ("fp32", "float32", "none"),
                              ("fp16 avg2x2", "float16", "avg2x2")):
        out["bytes_per_clip"][name] = derive_store(src, work / f"derived_{dtype}_{pool}", dtype, pool)
    out["shape"] = {"tokens_per_clip": n, "embed_dim": d}
    log(f"(c) RSS while reading a store of {args.rss_clips} and {2 * args.rss_clips} clips ({n} x {d} fp16) ...")
    rss = {}
    for clips in (args.rss_clips, 2 * args.rss_clips):
        path = work / f"rss_{clips}"
        write_random_store(path, clips, n, d)
        size = sum(f.stat().st_size for f in (path / "shards").rglob("*.npy"))
        rss[clips] = {"store_mib": size / MiB, "dontneed": rss_read(path, "drop-pages"),
                      "no_dontneed": rss_read(path, "keep-pages")}
        shutil.rmtree(path)
    out["rss"] = rss
    return out


# ---------------------------------------------------------------------------- (d)
def bench_sweep(work: Path, root: Path, weights: Path, args) -> dict:
    from cvsjepa.data.endoscapes import load_splits
    from cvsjepa.train.sweep import sweep

    store = work / "store_sweep"
    common = base_overrides(root, weights, args.frames) + [
        f"data.limit_per_split={args.sweep_clips}", f"features.store={store}", "features.pool=avg2x2",
        f"train.epochs={args.sweep_epochs}", "train.patience=0", "train.batch_size=8"]
    cfg = load_config(None, common)
    backbone = build_backbone(cfg.backbone).freeze()
    n = (args.frames // 2) * 8 * 8  # ViT-L avg2x2 grid: T/2 x 8 x 8
    layout = {"dtype": "float16", "views": 1, "view_names": ["center"], "tokens_per_clip": n, "embed_dim": 1024,
              "token_grid": [args.frames // 2, 8, 8], "levels": 1, "backbone_token_grid": [args.frames // 2, 16, 16],
              "pool": "avg2x2", "shard_clips": 256, "bytes_per_clip": n * 1024 * 2}
    indices = load_splits(root, ["train", "val", "test"], frames=args.frames, stride=1, limit=args.sweep_clips)
    gen = np.random.default_rng(0)
    with StoreWriter(store, store_key(cfg, backbone), backbone.describe(), 256) as w:
        w.set_layout(layout)
        for split, index in indices.items():
            todo = w.plan_split(split, [s.sample_id for s in index.samples],
                                [clip_hash(s.clip_frames) for s in index.samples])
            for k in todo:
                rows = w.shard_rows(split, k)
                w.write_shard(split, k, gen.standard_normal((len(rows), 1, n, 1024), dtype=np.float32)
                              .astype(np.float16))
    del backbone
    grid = [(lr, wd) for lr in (5e-3, 3e-3, 1e-3, 3e-4, 1e-4) for wd in (0.01, 0.1, 0.4, 0.8)][:args.k]
    lrs = sorted({lr for lr, _ in grid}, reverse=True)
    wds = sorted({wd for _, wd in grid})
    log(f"(d) sweep of {len(grid)} heads over {args.sweep_clips} clips per split, {args.sweep_epochs} epochs ...")
    t = time.perf_counter()
    grid_args = [f"out={work / 'sweep_k'}", f"sweep.lrs={lrs}", f"sweep.weight_decays={wds}"]
    res = sweep(load_config(None, common + grid_args), progress=False)
    k_s = time.perf_counter() - t
    separate = []
    runs = grid[:args.separate] if args.separate else grid
    log(f"(d) {len(runs)} separate runs ...")
    for i, (lr, wd) in enumerate(runs):
        t = time.perf_counter()
        sweep(load_config(None, common + [f"out={work / f'sweep_1_{i}'}", f"sweep.lrs=[{lr}]",
                                          f"sweep.weight_decays=[{wd}]"]), progress=False)
        separate.append(time.perf_counter() - t)
    per_run = statistics.mean(separate)
    total = sum(separate) if len(runs) == len(grid) else per_run * len(grid)
    return {"k": len(grid), "clips_per_split": {s: len(ix.samples) for s, ix in indices.items()},
            "tokens_per_clip": n, "epochs": args.sweep_epochs, "sweep_s": k_s,
            "sweep_timing": res.summary["sweep"]["timing"],
            "separate_runs_timed": len(runs), "separate_each_s": separate, "separate_total_s": total,
            "extrapolated": len(runs) != len(grid), "speedup": total / k_s}


# ---------------------------------------------------------------------------- report
def report(r: dict, args) -> str:
    e, ep = r["extract"], r["epoch"]
    lines = [f"machine: {os.cpu_count()} CPU cores, torch {torch.__version__}, {args.threads} threads, load average "
             f"at start {r['loadavg'][0]:.1f} / end {os.getloadavg()[0]:.1f} (other jobs share these cores)",
             f"shape: V-JEPA 2 ViT-L (random weights) {args.frames} frames x 256 px -> {e['tokens_per_clip']} tokens x "
             f"{e['embed_dim']}",
             "",
             f"(a) per-epoch head training, {ep['clips']} clips: frozen backbone in the loop {ep['in_loop_s']:.1f} s | "
             f"from the store {ep['store_s']:.3f} s (median of {len(ep['store_epochs_s'])}) | ratio {ep['ratio']:.0f}x",
             f"(b) extraction: {e['clips']} clips in {e['wall_s']:.1f} s = {e['clips_per_s']:.3f} clips/s; decode "
             f"{e['decode_s']:.2f} s, preprocess {e['preprocess_s']:.2f} s, forward {e['forward_s']:.1f} s, write "
             f"{e['write_s']:.2f} s, other (index, backbone load, key) "
             f"{e['wall_s'] - e['decode_s'] - e['preprocess_s'] - e['forward_s'] - e['write_s']:.1f} s; "
             f"{e['decodes_per_jpeg']:.2f} decodes per JPEG ({e['frames_decoded']} decodes of "
             f"{e['distinct_frames']} distinct frames; the clips reference {e['frame_refs']} frames)",
             "(c) bytes per clip (measured shard files, .npy header included):"]
    for name, b in r["storage"]["bytes_per_clip"].items():
        lines.append(f"      {name:<12} {b / MiB:8.3f} MiB/clip   all {ENDOSCAPES_CLIPS:,} Endoscapes clips: "
                     f"{b * ENDOSCAPES_CLIPS / 2 ** 30:6.1f} GiB")
    lines.append("    peak RSS while reading every clip once (shuffled, batches of 8, cast to fp32), over the RSS "
                 "before reading:")
    for clips, x in r["storage"]["rss"].items():
        a, b = x["dontneed"], x["no_dontneed"]
        lines.append(f"      {clips:>4} clips ({x['store_mib']:.0f} MiB store): pages dropped after each read "
                     f"+{a['growth_mib']:.0f} MiB (peak {a['peak_mib']:.0f} MiB, {a['read_s']:.1f} s) | pages kept "
                     f"mapped +{b['growth_mib']:.0f} MiB (peak {b['peak_mib']:.0f} MiB)")
    s = r["sweep"]
    lines.append(f"(d) sweep of K={s['k']} heads ({s['tokens_per_clip']} tokens x 1024 fp16, clips "
                 f"{s['clips_per_split']}, {s['epochs']} epochs): {s['sweep_s']:.1f} s (reading {s['sweep_timing']['read_s']:.2f} s, heads "
                 f"{s['sweep_timing']['heads_s']:.1f} s) | {s['k']} separate runs {s['separate_total_s']:.1f} s"
                 f"{' (extrapolated from ' + str(s['separate_runs_timed']) + ' timed)' if s['extrapolated'] else ''}"
                 f", {statistics.mean(s['separate_each_s']):.1f} s each | speedup {s['speedup']:.1f}x")
    lines.append("GPU (ViT-L 16x256 bf16 extraction throughput, MFU): pending, no GPU on this machine")
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workdir", type=Path, default=None, help="work folder (default: a new temporary folder)")
    p.add_argument("--keep", action="store_true", help="keep the work folder")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--frames", type=int, default=16, help="clip frames (ViT-L tokens: frames/2 x 16 x 16)")
    p.add_argument("--clips", type=int, default=4, help="(a)/(b): train clips extracted and trained on")
    p.add_argument("--batch", type=int, default=2, help="(a)/(b): clips per batch")
    p.add_argument("--store-epochs", type=int, default=3, help="(a): epochs timed from the store (median)")
    p.add_argument("--rss-clips", type=int, default=64, help="(c): clips of the smaller RSS store (4 MiB each)")
    p.add_argument("--k", type=int, default=20, help="(d): heads in the sweep (<= 20, official grid order)")
    p.add_argument("--separate", type=int, default=0, help="(d): separate runs to time (0 = all K)")
    p.add_argument("--sweep-clips", type=int, default=8, help="(d): keyframes per split")
    p.add_argument("--sweep-epochs", type=int, default=2)
    p.add_argument("--json", type=Path, default=None, help="also write the figures as JSON")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    work = args.workdir or Path(tempfile.mkdtemp(prefix="cvsjepa-fsbench-"))
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    r = {"loadavg": os.getloadavg(), "args": {k: str(v) for k, v in vars(args).items()}}
    try:
        root = make_data(work)
        weights = make_weights(work, "vitl")
        r.update(bench_extract_and_epochs(work, root, weights, args))
        r["storage"] = bench_storage(work, Path(r["store"]), args)
        r["sweep"] = bench_sweep(work, root, weights, args)
    finally:
        if not args.keep and args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)
    r["seconds"] = time.perf_counter() - t0
    print()
    print(report(r, args))
    print(f"total {r['seconds']:.0f} s")
    if args.json:
        args.json.write_text(json.dumps(r, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
