"""`cvsjepa synth --out DIR [--layout endoscapes|sages2024]`."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

NAME = "synth"
HELP = "write a synthetic dataset in the Endoscapes2023 (default) or SAGES CVS Challenge 2024 layout"
LAYOUTS = ("endoscapes", "sages2024")


def add_parser(sub) -> None:
    s = sub.add_parser(NAME, help=HELP,
                       description="Write a SYNTHETIC dataset with labels driven by drawn structures and 3 noisy "
                                   "raters, plus oracle.json (the best achievable mAP). --layout endoscapes (default): "
                                   "exactly the Endoscapes2023 layout (1 fps 854x480 JPEGs, COCO JSONs with ds, "
                                   "all_metadata.csv, *_vids.txt, semseg PNGs, symlinked seg folders). --layout "
                                   "sages2024: the SAGES CVS Challenge 2024 layout ({train,test}/videos/*.mp4 as "
                                   "H.264 at --fps, {train,test}/labels/<video>/frame.csv with 3 raters per criterion "
                                   "every 5 s and video.csv with each rater's confidence).")
    s.add_argument("--out", required=True, help="folder to create (must not exist or be empty)")
    s.add_argument("--layout", choices=LAYOUTS, default="endoscapes", help="dataset layout (default endoscapes)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--videos", type=int, nargs="+", default=None, metavar="N",
                   help="videos per split: TRAIN VAL TEST for endoscapes (default 16 6 6), TRAIN TEST for "
                        "sages2024 (default 10 5; its val split is drawn from train at training time)")
    s.add_argument("--seconds", type=int, nargs=2, default=None, metavar=("MIN", "MAX"),
                   help="video lengths are drawn in [MIN, MAX] seconds (default 40 90 endoscapes, 45 90 sages2024)")
    s.add_argument("--fps", type=int, default=30, help="sages2024: frame rate of the mp4s (default 30, as released)")
    s.add_argument("--width", type=int, default=192,
                   help="sages2024: frame width in pixels (default 192; height keeps 16:9)")
    s.add_argument("--seg-fraction", type=float, default=0.3,
                   help="endoscapes: share of each split's videos that get segmentation masks (default 0.3, like "
                        "Seg50's 50 of 201; 1.0 = all)")
    s.add_argument("--seg-every", type=int, default=30, metavar="SECONDS",
                   help="endoscapes: seconds between masked frames of those videos (default 30, the BBox frames; "
                        "5 = every CVS keyframe, to watch a segmentation head learn)")
    s.add_argument("--centred", action="store_true",
                   help="endoscapes: draw the anatomy inside the centre crop in every video (before generator "
                        "version 3); by default each video frames it left, centre or right, so data.view=center "
                        "misses part of it")
    s.add_argument("--occlusions", action=argparse.BooleanOptionalAction, default=True,
                   help="endoscapes: tool passes, smoke and blur hide the anatomy for 4-12 s now and then while the "
                        "true state, and so the labels, go on (default: on); oracle.json then also gives "
                        "map_frame_only, the best a model without memory can expect")
    s.add_argument("--overwrite", action="store_true", help="replace a dataset folder this command wrote before")
    s.add_argument("--no-progress", action="store_true")
    s.set_defaults(func=run)


def run(args) -> int:
    from ..errors import ConfigError

    n = {"endoscapes": 3, "sages2024": 2}[args.layout]
    if args.videos is not None and len(args.videos) != n:
        raise ConfigError(f"--videos takes {n} counts for --layout {args.layout}, got {args.videos}")
    seconds = {} if args.seconds is None else {"min_seconds": args.seconds[0], "max_seconds": args.seconds[1]}
    if args.layout == "sages2024":
        from ..data.sages_synth import write_sages_dataset

        summary = write_sages_dataset(Path(args.out), seed=args.seed, fps=args.fps, width=args.width,
                                      overwrite=args.overwrite, progress=not args.no_progress, **seconds,
                                      **({"videos": tuple(args.videos)} if args.videos else {}))
    else:
        from ..data.synth import write_synthetic_dataset

        summary = write_synthetic_dataset(Path(args.out), seed=args.seed, seg_fraction=args.seg_fraction,
                                          seg_every_s=args.seg_every, overwrite=args.overwrite,
                                          progress=not args.no_progress, outside_crop=not args.centred,
                                          occlusions=args.occlusions, **seconds,
                                          **({"videos": tuple(args.videos)} if args.videos else {}))
    print(json.dumps(summary, indent=2))
    return 0
