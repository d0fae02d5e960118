"""Temporal heads against the clip-only head on synthetic data with occlusions (issue 19).

    python benchmarks/temporal.py [--data-seed 7] [--seeds 0 1 2] [--videos 24 8 12] [--heads temporal_gated temporal_gru]
                                  [--overrides K=V ...] [--temporal-overrides K=V ...] [--workdir DIR] [--json out.json]

The commands a user runs, in order (``cvsjepa.cli.main``):

1. ``cvsjepa synth`` (default scene: anatomy framed left/centre/right, occlusions on) with
   ``--seed DATA_SEED``; development used other seeds, so this data was not tuned on;
2. ``cvsjepa extract``: the keyframe tokens (the demo's settings: the tiny RANDOM backbone, 8-frame
   clips, three crops; ``cvsjepa.demo.DEMO_OVERRIDES``);
3. per training seed: the **clip-only** head (the demo's attentive head, default budget) trained from
   the store: stage 1;
4. ``cvsjepa extract ... features.seconds=true features.second_pooler=run features.pooler_run=STAGE1``:
   every second of every video pooled by that stage-1 head;
5. the **temporal** head(s) trained from those embeddings (same seed, same budget rules);
6. the paired comparison of ``cvsjepa compare`` on test: per seed (``cvsjepa compare CLIP TEMPORAL``),
   and over the seeds (each side the mean of its seeds' mAP on every resample; evaluate/compare.py).

Caveat: the tiny random backbone is not V-JEPA; this measures what a temporal head adds to the same
clip model's representation when occlusions hide the anatomy, on data that has them by construction.
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

from cvsjepa.cli import main as cli
from cvsjepa.commands.compare import format_result
from cvsjepa.demo import DEMO_OVERRIDES
from cvsjepa.evaluate.compare import Scored, compare, load_scored

# the temporal heads' settings on top of the demo's (fixed; written in docs/benchmarks.md)
TEMPORAL = ["head.num_heads=4", "head.temporal_dim=64", "head.mlp_hidden=128", "head.history_seconds=64",
            "head.history_dense=16", "head.history_stride=4", "features.seconds=true",
            "features.second_pooler=run"]


def log(msg: str) -> None:
    print(msg, flush=True)


def run(args: list[str]) -> None:
    if cli(args) != 0:
        raise RuntimeError(f"cvsjepa {' '.join(args)} failed")


def group(name: str, runs: list[Path]) -> Scored:
    """The seeds of one model as one entry of the comparison (mean of their mAP per resample)."""
    parts = [load_scored(r, "test")[0] for r in runs]
    return Scored(name, parts[0].sample_ids, parts[0].video_ids, parts[0].labels, [p.probs[0] for p in parts])


def by_occlusion(data: Path, runs: list[Path]) -> dict[str, float]:
    """Mean over the seeds' runs of the test mAP on keyframes an occlusion hides and on the others
    (``synth_truth.csv`` says which): where a model with memory should differ from one without."""
    import csv

    import numpy as np
    from sklearn.metrics import average_precision_score

    with open(data / "synth_truth.csv", newline="") as f:
        hidden = {f"{r['vid']}_{r['frame']}": bool(r["occlusion"]) for r in csv.DictReader(f) if r["split"] == "test"}
    out: dict[str, list[float]] = {"visible": [], "occluded": []}
    for r in runs:
        scored = load_scored(r, "test")[0]
        occ = np.array([hidden[i] for i in scored.sample_ids])
        for name, sel in (("visible", ~occ), ("occluded", occ)):
            y, p = scored.labels[sel], scored.probs[0][sel]
            out[name].append(float(np.mean([average_precision_score(y[:, c], p[:, c])
                                            for c in range(y.shape[1]) if y[:, c].any()])))
    return {k: float(np.mean(v)) for k, v in out.items()}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-seed", type=int, default=7)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="training seeds")
    p.add_argument("--videos", type=int, nargs=3, default=[24, 8, 12], help="synthetic train/val/test videos")
    p.add_argument("--seconds", type=int, nargs=2, default=None, help="video lengths (default: synth's 40 90)")
    p.add_argument("--heads", nargs="+", default=["temporal_gated", "temporal_gru"])
    p.add_argument("--overrides", nargs="*", default=[], help="more key=value for every training run")
    p.add_argument("--temporal-overrides", nargs="*", default=[],
                   help="more key=value for the temporal heads' runs only (after --overrides)")
    p.add_argument("--resamples", type=int, default=2000)
    p.add_argument("--workdir", type=Path, default=None)
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    work = args.workdir or Path(tempfile.mkdtemp(prefix="cvsjepa-temporal-"))
    t0, load = time.perf_counter(), os.getloadavg()[0]
    try:
        data, store = work / "data", work / "store"
        if not (data / "oracle.json").is_file():
            log(f"synth --seed {args.data_seed} --videos {args.videos} (occlusions on) ...")
            run(["synth", "--out", str(data), "--seed", str(args.data_seed), "--videos", *map(str, args.videos),
                 "--no-progress", *(["--seconds", *map(str, args.seconds)] if args.seconds else [])])
        common = [*DEMO_OVERRIDES, f"data.root={data}", f"features.store={store}", *args.overrides, "--no-progress"]
        timing = {}
        t = time.perf_counter()
        run(["extract", *common])
        timing["extract_tokens_s"] = time.perf_counter() - t
        runs: dict[str, list[Path]] = {"clip": [], **{h: [] for h in args.heads}}
        for seed in args.seeds:
            clip = work / f"clip_s{seed}"
            if not (clip / "summary.json").is_file():
                shutil.rmtree(clip, ignore_errors=True)
                log(f"seed {seed}: clip-only head (stage 1) ...")
                run(["train", *common, f"seed={seed}", f"out={clip}"])
            runs["clip"].append(clip)
            seconds = [*common, *TEMPORAL, f"features.pooler_run={clip}"]
            t = time.perf_counter()
            run(["extract", *seconds])
            timing.setdefault("extract_seconds_s", []).append(time.perf_counter() - t)
            for head in args.heads:
                out = work / f"{head}_s{seed}"
                if not (out / "summary.json").is_file():
                    shutil.rmtree(out, ignore_errors=True)
                    log(f"seed {seed}: {head} over the stage-1 head's per-second embeddings ...")
                    run(["train", *seconds, f"head.type={head}", *args.temporal_overrides, f"seed={seed}",
                         f"out={out}"])
                runs[head].append(out)
        res = {"data_seed": args.data_seed, "seeds": args.seeds, "videos": args.videos, "timing": timing,
               "oracle": json.loads((data / "oracle.json").read_text())["test"], "per_seed": {}, "over_seeds": {}}
        for head in args.heads:
            for seed, a, b in zip(args.seeds, runs["clip"], runs[head]):
                entries = [load_scored(a, "test")[0], load_scored(b, "test")[0]]
                res["per_seed"][f"{head} s{seed}"] = compare(entries, ("C1", "C2", "C3"), args.resamples)
            entries = [group("clip-only (mean over seeds)", runs["clip"]),
                       group(f"{head} (mean over seeds)", runs[head])]
            res["over_seeds"][head] = compare(entries, ("C1", "C2", "C3"), args.resamples)
        res["by_occlusion"] = {name: by_occlusion(data, r) for name, r in runs.items()}
        res["load_average"] = [load, os.getloadavg()[0]]
        res["seconds"] = time.perf_counter() - t0
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)
    o = res["oracle"]
    log(f"\ntest: oracle mAP {o['map']:.3f} (a model with memory can approach), frame-only bound "
        f"{o.get('map_frame_only', float('nan')):.3f}; {o.get('occluded_keyframes')} of {o['keyframes']} keyframes "
        f"occluded")
    for name, r in {**res["per_seed"], **res["over_seeds"]}.items():
        log(f"\n[{name}]\n" + format_result({**r, "split": "test"}))
    log("\ntest mAP on the keyframes an occlusion hides / the others (mean over seeds):")
    for name, v in res["by_occlusion"].items():
        log(f"  {name:>16}: occluded {v['occluded']:.3f}   visible {v['visible']:.3f}")
    log(f"load average {res['load_average'][0]:.1f} -> {res['load_average'][1]:.1f}; {res['seconds']:.0f} s")
    if args.json:
        args.json.write_text(json.dumps(res, indent=2, default=str))
    return res


if __name__ == "__main__":
    main()
    sys.exit(0)
