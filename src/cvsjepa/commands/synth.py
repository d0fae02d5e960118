"""`cvsjepa synth --out DIR`."""

from __future__ import annotations

import json
from pathlib import Path

NAME = "synth"
HELP = "write a synthetic dataset in the Endoscapes2023 layout"


def add_parser(sub) -> None:
    s = sub.add_parser(NAME, help=HELP,
                       description="Write a SYNTHETIC dataset in exactly the Endoscapes2023 layout (1 fps 854x480 "
                                   "JPEGs, COCO JSONs with ds, all_metadata.csv, *_vids.txt, semseg PNGs, symlinked "
                                   "seg folders) with labels driven by drawn structures and 3 noisy raters, plus "
                                   "oracle.json (the best achievable mAP).")
    s.add_argument("--out", required=True, help="folder to create (must not exist or be empty)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--videos", type=int, nargs=3, default=[16, 6, 6], metavar=("TRAIN", "VAL", "TEST"),
                   help="videos per split (default: 16 6 6)")
    s.add_argument("--seg-fraction", type=float, default=0.3,
                   help="share of each split's videos that get segmentation masks (default 0.3, like Seg50's "
                        "50 of 201; 1.0 = all)")
    s.add_argument("--seg-every", type=int, default=30, metavar="SECONDS",
                   help="seconds between masked frames of those videos (default 30, the BBox frames; 5 = every "
                        "CVS keyframe, to watch a segmentation head learn)")
    s.add_argument("--overwrite", action="store_true", help="replace a dataset folder this command wrote before")
    s.add_argument("--no-progress", action="store_true")
    s.set_defaults(func=run)


def run(args) -> int:
    from ..data.synth import write_synthetic_dataset

    summary = write_synthetic_dataset(Path(args.out), seed=args.seed, videos=tuple(args.videos),
                                      seg_fraction=args.seg_fraction, seg_every_s=args.seg_every,
                                      overwrite=args.overwrite, progress=not args.no_progress)
    print(json.dumps(summary, indent=2))
    return 0
