"""Paired comparison of training settings ("arms") on the project's synthetic data, over seeds.

    python benchmarks/arms.py --arm center data.view=center --arm letterbox data.view=letterbox \\
        --arm three_crops data.view=three_crops --seeds 0 1 2 3 4
    python benchmarks/arms.py --arm none head.pos_embed=none --arm learned head.pos_embed=learned

For each seed s: a synthetic dataset (``cvsjepa synth --seed s --videos 16 6 12``: ~200 train
keyframes, the default framing with anatomy outside the centre crop), then for each arm: the frozen
tiny random backbone's tokens extracted once into a feature store (shared by arms whose tokens are
the same) and a head trained from it with the **default settings** plus ``--base`` and the arm's
overrides (``seed=s``), scored once on test (the checkpoint chosen on val).

Reported: per arm the mean test mAP over seeds, its share of the oracle mAP and the epochs/steps
run; per arm against the first: the mean paired difference of test mAP with a 95 % interval from a
two-level bootstrap (seeds with replacement, then each drawn seed's test videos with replacement,
the same draws for both arms, so the comparison is paired on seeds and on videos). Figures go in
docs/benchmarks.md; results also in ``WORK/results.json``.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import logging
import math
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def parse_arms(items: list[list[str]]) -> dict[str, list[str]]:
    arms = {}
    for name, *overrides in items:
        arms[name] = overrides
    return arms


def store_dir(work: Path, seed: int, cfg) -> Path:
    from cvsjepa.features.store import config_key

    key = json.dumps({**config_key(cfg), "preset": cfg.backbone.preset}, sort_keys=True)
    return work / f"store{seed}_{hashlib.sha1(key.encode()).hexdigest()[:10]}"


def run_arm(work: Path, seed: int, data: Path, name: str, overrides: list[str], base: list[str]) -> dict:
    """Extract (once per token setting) and train one arm on one seed; returns its summary."""
    from cvsjepa.config import load_config
    from cvsjepa.features.extract import extract
    from cvsjepa.train.classifier import train

    out = work / f"run{seed}_{name}"
    args = ["backbone=tiny", f"data.root={data}", f"seed={seed}", f"out={out}", *base, *overrides]
    if (out / "summary.json").is_file():
        return json.loads((out / "summary.json").read_text())
    cfg = load_config(None, args)
    store = store_dir(work, seed, cfg)
    cfg = load_config(None, [*args, f"features.store={store}"])
    t0 = time.perf_counter()
    extract(cfg, progress=False)
    summary = train(cfg, progress=False).summary
    summary["bench_seconds"] = round(time.perf_counter() - t0, 1)
    (out / "bench.json").write_text(json.dumps({"overrides": args, "seconds": summary["bench_seconds"]}))
    return summary


def read_predictions(run: Path, role: str = "test") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(video ids [K], labels [K, 3], probabilities [K, 3]) of a run's predictions file."""
    with open(run / f"predictions_{role}.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    crit = [k[len("prob_"):] for k in rows[0] if k.startswith("prob_")]
    vids = np.array([int(r["video_id"]) for r in rows])
    labels = np.array([[int(r[f"label_{c}"]) for c in crit] for r in rows])
    probs = np.array([[float(r[f"prob_{c}"]) for c in crit] for r in rows])
    return vids, labels, probs


def mean_ap(labels: np.ndarray, probs: np.ndarray) -> float:
    from cvsjepa.data.synth import average_precision

    aps = [average_precision(probs[:, c], labels[:, c]) for c in range(labels.shape[1])]
    aps = [a for a in aps if not math.isnan(a)]
    return sum(aps) / len(aps) if aps else math.nan


def paired_bootstrap(preds: dict[int, tuple], ref: str, arm: str, n: int = 2000, seed: int = 0) -> list[float]:
    """95 % interval of mean_seeds(mAP[arm] - mAP[ref]) by a two-level bootstrap (seeds, then videos)."""
    rng = np.random.default_rng(seed)
    seeds = sorted(preds)
    groups = {}
    for s in seeds:
        vids = preds[s][ref][0]
        groups[s] = [np.flatnonzero(vids == v) for v in sorted(set(vids.tolist()))]
    diffs = []
    for _ in range(n):
        vals = []
        for s in rng.choice(seeds, size=len(seeds)):
            g = groups[s]
            rows = np.concatenate([g[i] for i in rng.integers(0, len(g), size=len(g))])
            (_, ya, pa), (_, yb, pb) = preds[s][ref], preds[s][arm]
            vals.append(mean_ap(yb[rows], pb[rows]) - mean_ap(ya[rows], pa[rows]))
        diffs.append(np.nanmean(vals))
    lo, hi = np.nanpercentile(diffs, [2.5, 97.5])
    return [float(lo), float(hi)]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arm", nargs="+", action="append", required=True, metavar=("NAME", "KEY=VALUE"),
                   help="an arm: its name, then its config overrides (the first arm is the reference)")
    p.add_argument("--base", nargs="*", default=[], help="overrides shared by every arm")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    p.add_argument("--videos", type=int, nargs=3, default=[16, 6, 12], metavar=("TRAIN", "VAL", "TEST"))
    p.add_argument("--work", type=Path, default=None, help="scratch folder, reused between calls (default: temp)")
    p.add_argument("--resamples", type=int, default=2000)
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    import torch

    torch.set_num_threads(1)
    from cvsjepa.data.synth import write_synthetic_dataset

    work = args.work or Path(tempfile.mkdtemp(prefix="cvsjepa_arms_"))
    work.mkdir(parents=True, exist_ok=True)
    arms = parse_arms(args.arm)
    rows, preds = {a: [] for a in arms}, {}
    for s in args.seeds:
        data = work / f"data{s}_{'_'.join(map(str, args.videos))}"
        if not (data / "oracle.json").is_file():
            write_synthetic_dataset(data, seed=s, videos=tuple(args.videos), progress=False, occlusions=False)
        oracle = json.loads((data / "oracle.json").read_text())["test"]["map"]
        preds[s] = {}
        for name, overrides in arms.items():
            summary = run_arm(work, s, data, name, overrides, args.base)
            preds[s][name] = read_predictions(work / f"run{s}_{name}")
            budget = summary.get("budget", {}).get("1", {})
            rows[name].append({"seed": s, "test_map": summary["test_map"], "oracle": oracle,
                               "best_epoch": summary["best_epoch"], "epochs_run": summary["epochs_run"],
                               "steps_run": budget.get("steps_run"), "seconds": summary.get("seconds")})
            print(f"seed {s} {name}: test mAP {summary['test_map']:.3f} (oracle {oracle:.3f}), best epoch "
                  f"{summary['best_epoch']} of {summary['epochs_run']}, {budget.get('steps_run')} steps", flush=True)
    ref = next(iter(arms))
    result = {"arms": arms, "base": args.base, "seeds": args.seeds, "videos": args.videos, "rows": rows, "vs": {}}
    print(f"\n| arm | test mAP (mean over {len(args.seeds)} seeds) | share of oracle | paired difference vs "
          f"{ref} [95 % CI] | steps run (mean) |\n|---|---|---|---|---|")
    for name in arms:
        m = np.mean([r["test_map"] for r in rows[name]])
        share = np.mean([r["test_map"] / r["oracle"] for r in rows[name]])
        steps = np.mean([r["steps_run"] or 0 for r in rows[name]])
        diff = ""
        if name != ref:
            d = np.mean([b["test_map"] - a["test_map"] for a, b in zip(rows[ref], rows[name])])
            ci = paired_bootstrap(preds, ref, name, args.resamples)
            result["vs"][name] = {"mean_difference": float(d), "ci95": ci}
            diff = f"{d:+.3f} [{ci[0]:+.3f}, {ci[1]:+.3f}]"
        print(f"| {name} | {m:.3f} | {share:.2f} | {diff} | {steps:.0f} |")
    (work / "results.json").write_text(json.dumps(result, indent=2))
    print(f"\nresults: {work / 'results.json'}", file=sys.stderr)


if __name__ == "__main__":
    main()
