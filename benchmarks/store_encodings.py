"""Accuracy cost of the compact feature-store encodings on synthetic data, paired against float16.

    python benchmarks/store_encodings.py [--seeds 0 1 2] [--videos 16 6 12] [--json out.json]

One synthetic dataset (``cvsjepa synth``; ``--videos`` train/val/test), the demo's model (the tiny
RANDOM backbone, the attentive head; ``cvsjepa.demo.DEMO_OVERRIDES``), one feature store per
encoding (``features.dtype`` / ``features.pool``), each written by ``cvsjepa extract``. For every
seed, a head is trained from each store with that seed (same initial weights, same batches: the
stores differ only in how the tokens were stored) and scored on test.

The cost of an encoding is the **paired** difference of test mAP against float16: per seed, and
averaged over the seeds, with a 95 % interval from a bootstrap over test **videos** (each
resample draws the test videos with replacement and recomputes every run's mAP on them;
evaluate/bootstrap.py). An interval that contains 0 means no difference was measurable at this size.

Caveat: the tiny random backbone is not V-JEPA; this measures what the storage does to a head
trained on the same tokens, not the accuracy of V-JEPA features. Nothing is downloaded.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from cvsjepa.config import load_config
from cvsjepa.data.synth import write_synthetic_dataset
from cvsjepa.demo import DEMO_OVERRIDES
from cvsjepa.evaluate.bootstrap import bootstrap_indices, percentile_ci
from cvsjepa.evaluate.metrics import cvs_average_precision
from cvsjepa.features.extract import extract
from cvsjepa.rundir import RunDir
from cvsjepa.train.classifier import train

# name -> (features.dtype, features.pool); the first is the reference
VARIANTS = {"float16": ("float16", "none"), "int8": ("int8", "none"), "float8_e4m3": ("float8_e4m3", "none"),
            "float16 avg2x2": ("float16", "avg2x2"), "int8 avg2x2": ("int8", "avg2x2")}


def log(msg: str) -> None:
    print(msg, flush=True)


def test_predictions(run: RunDir) -> tuple[np.ndarray, np.ndarray, list[str]]:
    p = run.read_predictions("test")
    return np.asarray(p["probs"]), np.asarray(p["labels"]), p["sample_ids"]


def mean_map(probs: np.ndarray, labels: np.ndarray) -> float:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a resample without a positive for a criterion: NaN, left out
        return cvs_average_precision(torch.from_numpy(probs), torch.from_numpy(labels)).map


def paired(runs: dict, video_ids: list[int], resamples: int, seed: int = 0) -> dict:
    """``runs[variant][seed] = (probs, labels)`` over the same test rows -> per variant: mAP per seed,
    difference to the reference per seed and averaged, with video-bootstrap intervals."""
    names = list(runs)
    ref = names[0]
    seeds = list(runs[ref])
    draws = {n: [] for n in names[1:]}
    draws_per_seed = {n: {s: [] for s in seeds} for n in names[1:]}
    for rows in bootstrap_indices(video_ids, resamples, seed):
        base = {s: mean_map(runs[ref][s][0][rows], runs[ref][s][1][rows]) for s in seeds}
        for n in names[1:]:
            diffs = [mean_map(runs[n][s][0][rows], runs[n][s][1][rows]) - base[s] for s in seeds]
            for s, d in zip(seeds, diffs):
                draws_per_seed[n][s].append(d)
            draws[n].append(float(np.mean(diffs)))
    out = {}
    for n in names:
        maps = {s: mean_map(*runs[n][s]) for s in seeds}
        row = {"test_map": maps, "test_map_mean": float(np.mean(list(maps.values())))}
        if n != ref:
            ref_maps = {s: mean_map(*runs[ref][s]) for s in seeds}
            diff = {s: maps[s] - ref_maps[s] for s in seeds}
            row.update({"diff": diff, "diff_ci": {s: percentile_ci(draws_per_seed[n][s]) for s in seeds},
                        "diff_mean": float(np.mean(list(diff.values()))), "diff_mean_ci": percentile_ci(draws[n])})
        out[n] = row
    return out


def report(res: dict) -> str:
    lines = [f"test mAP per seed and its paired difference to float16 (95 % interval, bootstrap over "
             f"{res['test_videos']} test videos, {res['resamples']} resamples); tiny random backbone, synthetic data:"]
    for n, row in res["variants"].items():
        per_seed = "  ".join(f"s{s} {m:.4f}" for s, m in row["test_map"].items())
        if "diff" not in row:
            lines.append(f"  {n:<15} {per_seed}   mean {row['test_map_mean']:.4f}  (reference)")
            continue
        lo, hi = row["diff_mean_ci"]
        lines.append(f"  {n:<15} {per_seed}   mean {row['test_map_mean']:.4f}  difference {row['diff_mean']:+.4f} "
                     f"[{lo:+.4f}, {hi:+.4f}]   per seed " +
                     ", ".join(f"{d:+.4f} [{row['diff_ci'][s][0]:+.4f}, {row['diff_ci'][s][1]:+.4f}]"
                               for s, d in row["diff"].items()))
    lines.append("bytes per clip of these stores: " + ", ".join(f"{n} {b:,}" for n, b in res["bytes_per_clip"].items()))
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--videos", type=int, nargs=3, default=[16, 6, 12], help="synthetic train/val/test videos")
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS),
                   help="the first is the reference (float16)")
    p.add_argument("--resamples", type=int, default=1000)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--workdir", type=Path, default=None)
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    work = args.workdir or Path(tempfile.mkdtemp(prefix="cvsjepa-encbench-"))
    t0, load = time.perf_counter(), os.getloadavg()[0]
    try:
        data = work / "data"
        if not data.is_dir():
            log(f"writing the synthetic dataset ({args.videos} videos) ...")
            write_synthetic_dataset(data, seed=0, videos=tuple(args.videos), progress=False, occlusions=False)
        runs: dict = {}
        bytes_per_clip = {}
        order = None  # the test rows, the same in every run
        for name in args.variants:
            dtype, pool = VARIANTS[name]
            store = work / f"store_{dtype}_{pool}"
            common = [*DEMO_OVERRIDES, f"data.root={data}", f"features.store={store}", f"features.dtype={dtype}",
                      f"features.pool={pool}"]
            log(f"{name}: extracting ...")
            bytes_per_clip[name] = extract(load_config(None, common), progress=False).layout["bytes_per_clip"]
            runs[name] = {}
            for seed in args.seeds:
                log(f"{name}: training seed {seed} ...")
                out = work / f"run_{dtype}_{pool}_s{seed}"
                shutil.rmtree(out, ignore_errors=True)
                result = train(load_config(None, [*common, f"seed={seed}", f"out={out}"]), progress=False)
                probs, labels, ids = test_predictions(result.run_dir)
                runs[name][seed] = (probs, labels)
                if order is not None and ids != order:
                    raise RuntimeError(f"{out} scored other test rows than the first run")
                order = ids
        video_ids = [int(i.split("_")[0]) for i in order]
        res = {"variants": paired(runs, video_ids, args.resamples), "test_videos": len(set(video_ids)),
               "test_clips": len(video_ids), "resamples": args.resamples, "seeds": args.seeds,
               "bytes_per_clip": bytes_per_clip, "load_average": [load, os.getloadavg()[0]],
               "seconds": time.perf_counter() - t0}
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)
    print()
    print(report(res))
    print(f"load average {res['load_average'][0]:.1f} -> {res['load_average'][1]:.1f}; {res['seconds']:.0f} s")
    if args.json:
        args.json.write_text(json.dumps(res, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
