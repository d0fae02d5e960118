"""Feature store benchmark: prints the figures recorded in docs/benchmarks.md.

    python benchmarks/feature_store.py [--only abcde] [--clips 4] [--threads 2] [--json out.json]

(a) per-epoch time of training the log's head (attentive, 8 heads, MLP 512) from stored tokens vs
    with the frozen backbone in the loop, side by side, on the V-JEPA 2 ViT-L shape at 16 frames x
    256 px (RANDOM weights: timing does not depend on them), on the first ``--clips`` keyframe clips
    of a synthetic dataset;
(b) extraction of those clips: clips/s and the split decode / preprocess / forward / write,
    decodes per JPEG;
(c) bytes per clip of each storage option at that shape (measured on shard files), and the peak
    RSS of a process reading every clip of a store vs a store twice as large, with the shipped
    reader (pread into batch buffers) and with a plain memory map for comparison;
(d) a sweep of K = 20 heads (the official 5 lr x 4 wd grid) against (1) its floor, one read of the
    store per epoch plus K x one head's compute, both measured separately in this run, and (2) 20
    separate runs (K = 1 sweeps, each a full run: backbone load for the store's key check, index,
    training, test, run directory), all actually run, on a store of ViT-L avg2x2-pooled shape (512
    tokens x 1024, fp16) filled with RANDOM tokens for the synthetic dataset's keyframes (timing
    does not depend on the token values);
(e) read throughput of the store (float16, int8, float8_e4m3) against the raw read rate of the
    same bytes from the page cache (benchmarks/store_read.py).

(a)-(c) share one extraction; ``--only`` picks sections. Everything runs on the CPU; nothing is
downloaded. The work folder is deleted unless --keep.
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
from cvsjepa.features.encoding import encoding_of
from cvsjepa.features.store import clip_hash
from cvsjepa.heads import build_head
from cvsjepa.model import CVSClassifier

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
MiB = 2 ** 20
ENDOSCAPES_CLIPS = 11_090  # keyframe clips of Endoscapes2023 (all splits)


def log(msg: str) -> None:
    print(msg, flush=True)


# ---------------------------------------------------------------------------- setup
def make_data(work: Path) -> Path:
    root = work / "data"
    if not (root / "oracle.json").is_file():
        write_synthetic_dataset(root, seed=0, videos=(4, 2, 2), min_seconds=30, max_seconds=45, progress=False,
                                occlusions=False)
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
            arr = encoding_of(dtype).encode(pooled.view(c, v, *pooled.shape[1:]))
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
import numpy as np
from torch.utils.data import DataLoader
from cvsjepa.data.endoscapes import Sample
from cvsjepa.data.dataset import collate_skip_none
from cvsjepa.features import FeatureStore
from cvsjepa.features.dataset import StoreDataset
store = FeatureStore.open(sys.argv[1])
reader = store.reader("train")
if sys.argv[2] == "mmap":  # for comparison: tokens copied out of np.load(mmap_mode="r") maps, pages left mapped
    maps = [np.load(p, mmap_mode="r") for p, _ in store.shard_paths(["train"])]
    def read_rows(rows, view=0, stored=None, out=None):
        import torch
        return torch.stack([torch.from_numpy(np.array(maps[r // reader.shard_clips][r % reader.shard_clips, 0]))
                            for r in rows])
    reader.read_rows = read_rows
def rss():  # resident set now, in bytes (anonymous + file-backed mapped pages)
    return int(open("/proc/self/statm").read().split()[1]) * mmap.PAGESIZE
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
                              ("int8", "int8", "none"), ("fp8 e4m3", "float8_e4m3", "none"),
                              ("fp16 avg2x2", "float16", "avg2x2"), ("int8 avg2x2", "int8", "avg2x2")):
        out["bytes_per_clip"][name] = derive_store(src, work / f"derived_{dtype}_{pool}", dtype, pool)
    out["shape"] = {"tokens_per_clip": n, "embed_dim": d}
    log(f"(c) RSS while reading a store of {args.rss_clips} and {2 * args.rss_clips} clips ({n} x {d} fp16) ...")
    rss = {}
    for clips in (args.rss_clips, 2 * args.rss_clips):
        path = work / f"rss_{clips}"
        write_random_store(path, clips, n, d)
        size = sum(f.stat().st_size for f in (path / "shards").rglob("*.npy"))
        rss[clips] = {"store_mib": size / MiB, "reader": rss_read(path, "reader"), "mmap": rss_read(path, "mmap")}
        shutil.rmtree(path)
    out["rss"] = rss
    return out


# ---------------------------------------------------------------------------- (d)
def sweep_floor(cfg, epochs: int) -> dict:
    """What a sweep of K heads cannot go below, measured in parts: one read of the store per epoch
    (the training loop's batches and val, moved to the device) and one head's compute over the same
    batches already in memory (forward, loss, backward, clipping, AdamW step; val forward), as the
    loop runs them. Floor = read_s + K x head_s."""
    from cvsjepa.evaluate.inference import move_batch
    from cvsjepa.train.build import make_scheduler, param_groups, stage_plans, train_loader
    from cvsjepa.train.losses import build_loss

    device = torch.device("cpu")
    splits = open_store_splits(cfg, roles=("train", "val"), check_weights=False, verify=False)
    plan = stage_plans(cfg)[0]
    read_s, batches = 0.0, []
    for epoch in range(1, epochs + 1):
        t = time.perf_counter()
        loader, sampler, steps = train_loader(cfg, splits["train"], plan)
        sampler.set_epoch(epoch)
        train = [move_batch(b, device) for b in loader]
        val = [move_batch(b, device) for b in splits["val"].loader(plan.batch_size, False, 0)]
        read_s += time.perf_counter() - t
        batches.append((train, val))
    torch.manual_seed(cfg.seed)
    head = build_head(cfg.head, int(splits["train"].dataset.reader.layout["embed_dim"])).to(device)
    opt = torch.optim.AdamW(param_groups([head], cfg.train.lr, cfg.train.weight_decay))
    sched = make_scheduler(opt, steps, plan, cfg.train.min_lr_ratio)
    loss_fn = build_loss(cfg.loss)
    t = time.perf_counter()
    for train, val in batches:
        head.train()
        for b in train:
            loss = loss_fn(head(b["tokens"]), b["target"])
            loss.backward()
            torch.nn.utils.clip_grad_norm_(head.parameters(), cfg.train.grad_clip)
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            torch.sigmoid(loss.detach())  # the loop keeps each batch's probabilities: same order of work
        head.eval()
        with torch.no_grad():
            for b in val:
                loss_fn(head(b["tokens"]), b["target"])
    return {"read_s": read_s, "head_s": time.perf_counter() - t}


def timed_resume_saves(timing: dict):
    """Wrap RunDir.save_resume so the sweep's resume-state writes are timed (they grow with K)."""
    from cvsjepa.rundir import RunDir

    real = RunDir.save_resume

    def save(self, epoch, state):
        t = time.perf_counter()
        try:
            return real(self, epoch, state)
        finally:
            timing["save_resume_s"] = timing.get("save_resume_s", 0.0) + time.perf_counter() - t

    RunDir.save_resume = save
    return lambda: setattr(RunDir, "save_resume", real)


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
    timing: dict = {}
    restore = timed_resume_saves(timing)
    try:
        t = time.perf_counter()
        res = sweep(load_config(None, common + [f"out={work / 'sweep_k'}", f"sweep.lrs={lrs}",
                                                f"sweep.weight_decays={wds}"]), progress=False)
        k_s = time.perf_counter() - t
    finally:
        restore()
    epochs_s = sum(float(r["seconds"]) for r in res.run_dir.read_metrics())  # train + val, all heads
    log("(d) the floor: one store read per epoch, one head's compute ...")
    floor = sweep_floor(load_config(None, common + [f"train.lr={grid[0][0]}", f"train.weight_decay={grid[0][1]}"]),
                        args.sweep_epochs)
    floor_s = floor["read_s"] + len(grid) * floor["head_s"]
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
            "tokens_per_clip": n, "epochs": args.sweep_epochs, "sweep_s": k_s, "sweep_epochs_s": epochs_s,
            "save_resume_s": timing.get("save_resume_s", 0.0), "sweep_timing": res.summary["sweep"]["timing"],
            "floor": {**floor, "floor_s": floor_s}, "ratio_to_floor": epochs_s / floor_s,
            "separate_runs_timed": len(runs), "separate_each_s": separate, "separate_total_s": total,
            "extrapolated": len(runs) != len(grid), "speedup": total / k_s}


# ---------------------------------------------------------------------------- report
def report(r: dict, args) -> str:
    lines = [f"machine: {os.cpu_count()} CPU cores, torch {torch.__version__}, {args.threads} threads, load average "
             f"at start {r['loadavg'][0]:.1f} / end {os.getloadavg()[0]:.1f} (other jobs share these cores)", ""]
    if "extract" in r:
        e, ep = r["extract"], r["epoch"]
        lines += [
            f"shape: V-JEPA 2 ViT-L (random weights) {args.frames} frames x 256 px -> {e['tokens_per_clip']} tokens x "
            f"{e['embed_dim']}",
            f"(a) per-epoch head training, {ep['clips']} clips: frozen backbone in the loop {ep['in_loop_s']:.1f} s | "
            f"from the store {ep['store_s']:.3f} s (median of {len(ep['store_epochs_s'])}) | ratio {ep['ratio']:.0f}x",
            f"(b) extraction: {e['clips']} clips in {e['wall_s']:.1f} s = {e['clips_per_s']:.3f} clips/s; decode "
            f"{e['decode_s']:.2f} s, preprocess {e['preprocess_s']:.2f} s, forward {e['forward_s']:.1f} s, write "
            f"{e['write_s']:.2f} s, other (index, backbone load, key) "
            f"{e['wall_s'] - e['decode_s'] - e['preprocess_s'] - e['forward_s'] - e['write_s']:.1f} s; "
            f"{e['decodes_per_jpeg']:.2f} decodes per JPEG ({e['frames_decoded']} decodes of "
            f"{e['distinct_frames']} distinct frames; the clips reference {e['frame_refs']} frames)"]
    if "storage" in r:
        lines.append("(c) bytes per clip (measured shard files, .npy header included):")
        for name, b in r["storage"]["bytes_per_clip"].items():
            lines.append(f"      {name:<12} {b / MiB:8.3f} MiB/clip   all {ENDOSCAPES_CLIPS:,} Endoscapes clips: "
                         f"{b * ENDOSCAPES_CLIPS / 2 ** 30:6.1f} GiB")
        lines.append("    peak RSS while reading every clip once (shuffled, batches of 8, cast to fp32), over the RSS "
                     "before reading:")
        for clips, x in r["storage"]["rss"].items():
            a, b = x["reader"], x["mmap"]
            lines.append(f"      {clips:>4} clips ({x['store_mib']:.0f} MiB store): the reader (pread, batch buffers) "
                         f"+{a['growth_mib']:.0f} MiB (peak {a['peak_mib']:.0f} MiB, {a['read_s']:.1f} s) | a plain "
                         f"memory map +{b['growth_mib']:.0f} MiB (peak {b['peak_mib']:.0f} MiB, {b['read_s']:.1f} s)")
    if "sweep" in r:
        s, f = r["sweep"], r["sweep"]["floor"]
        lines += [
            f"(d) sweep of K={s['k']} heads ({s['tokens_per_clip']} tokens x 1024 fp16, clips {s['clips_per_split']}, "
            f"{s['epochs']} epochs): {s['sweep_s']:.1f} s in all, of which the epochs (train + val, all heads) "
            f"{s['sweep_epochs_s']:.2f} s, resume-state writes {s['save_resume_s']:.2f} s",
            f"    floor, measured apart: one store read per epoch {f['read_s']:.2f} s + {s['k']} x one head's compute "
            f"{f['head_s']:.3f} s = {f['floor_s']:.2f} s | sweep epochs / floor = {s['ratio_to_floor']:.2f}x "
            f"(goal <= 1.2x)",
            f"    {s['k']} separate runs {s['separate_total_s']:.1f} s"
            f"{' (extrapolated from ' + str(s['separate_runs_timed']) + ' timed)' if s['extrapolated'] else ''}"
            f", {statistics.mean(s['separate_each_s']):.1f} s each | speedup of the sweep {s['speedup']:.1f}x"]
    if "read" in r:
        from store_read import report as read_report

        lines += read_report(r["read"])
    lines.append("GPU figures: benchmarks/gpu.py")
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", default="abcde", help="sections to run (default: all; a, b and c share one extraction)")
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
    p.add_argument("--read-clips", type=int, default=64, help="(e): clips per store (4 MiB each in float16)")
    p.add_argument("--json", type=Path, default=None, help="also write the figures as JSON")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    work = args.workdir or Path(tempfile.mkdtemp(prefix="cvsjepa-fsbench-"))
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    r = {"loadavg": os.getloadavg(), "args": {k: str(v) for k, v in vars(args).items()}}
    try:
        root = make_data(work)
        weights = make_weights(work, "vitl") if set(args.only) & set("abcd") else None
        if set(args.only) & set("abc"):
            r.update(bench_extract_and_epochs(work, root, weights, args))
            if "c" in args.only:
                r["storage"] = bench_storage(work, Path(r["store"]), args)
        if "d" in args.only:
            r["sweep"] = bench_sweep(work, root, weights, args)
        if "e" in args.only:
            from store_read import bench_read

            log(f"(e) read throughput, {args.read_clips} clips per store ...")
            r["read"] = bench_read(work, clips=args.read_clips)
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
