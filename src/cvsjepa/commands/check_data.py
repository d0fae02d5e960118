"""`cvsjepa check-data ROOT`."""

from __future__ import annotations

from pathlib import Path

from ..config import choices
from ._common import print_table

NAME = "check-data"
HELP = "validate a dataset (frames or videos decode, labels, splits, links, masks, published counts)"


def add_parser(sub) -> None:
    c = sub.add_parser(NAME, help=HELP,
                       description="Validate a dataset before a long run. Endoscapes2023: every keyframe's clip "
                                   "frames exist and decode with one size per clip, labels are valid rater means, "
                                   "split lists name only annotated videos, splits share no video, symlinked folders "
                                   "are real links, masks have the right size and values, and the full release's "
                                   "counts match the published ones; a split without a positive keyframe for a "
                                   "criterion is a warning (that criterion leaves its mAP). SAGES CVS Challenge 2024: "
                                   "every labelled video decodes to the end and has at least as many frames as its "
                                   "labels need, frame.csv/video.csv have their columns, votes are 0/1, confidences "
                                   "numbers, and no video is in two splits. Exit status: 0 usable, 1 problems found "
                                   "(each printed with its file), 2 the root cannot be read.")
    c.add_argument("root", metavar="ROOT")
    c.add_argument("--format", choices=("auto", "endoscapes", "sages2024"), default="auto",
                   help="dataset layout (default: recognised from the files, as data.format=auto)")
    c.add_argument("--splits", nargs="+", default=["train", "val", "test"],
                   help="Endoscapes split folders to check (SAGES: every split of the copy is checked)")
    c.add_argument("--frames", type=int, default=16, help="Endoscapes: clip length to check (default 16)")
    c.add_argument("--stride", type=int, default=1, help="Endoscapes: clip stride to check (default 1)")
    c.add_argument("--frame-source", choices=("auto", "video", "frames"), default="auto",
                   help="SAGES: check the mp4s (video) or the frames/ folders (frames); default: videos when present")
    c.add_argument("--view", default="center", choices=choices("data.view"),
                   help="Endoscapes: field of view to measure on the masks, as the run's data.view (default "
                        "center): the share of each class's mask pixels it keeps is printed")
    c.add_argument("--crop", type=int, default=256,
                   help="the backbone's input size, as its preset's crop (default 256: V-JEPA 2 ViT-L/H/g)")
    c.add_argument("--no-decode", action="store_true",
                   help="check existence (and video headers) only, do not decode every JPEG or video")
    c.add_argument("--no-progress", action="store_true")
    c.set_defaults(func=run)


def run(args) -> int:
    from ..data.check import check_dataset

    report = check_dataset(Path(args.root), tuple(args.splits), args.frames, args.stride,
                           decode=not args.no_decode, progress=not args.no_progress, fmt=args.format,
                           frame_source=args.frame_source, view=args.view, crop=args.crop)
    print_table(report.rows)
    if report.videos_decoded:
        print(f"\n{report.videos_decoded} videos decoded to the end")
    else:
        print(f"\n{report.frames_decoded} clip frames decoded, {report.masks_checked} semseg masks and "
              f"{report.coco_masks_checked} COCO instance-mask frames checked")
    if report.coverage_rows():
        print(f"\nshare of each class's mask pixels that data.view={args.view} keeps at crop {args.crop}:")
        print_table(report.coverage_rows())
    if report.warnings:
        print(f"\n{len(report.warnings)} warning(s):")
        for where, what in report.warnings:
            print(f"  {where}: {what}")
    if report.usable:
        print("no problem found: the dataset is usable" if not report.warnings else
              "the dataset is usable, with the warning(s) above")
        return 0
    print(f"\n{len(report.problems)} problem(s):")
    for where, what in report.problems:
        print(f"  {where}: {what}")
    return 1
