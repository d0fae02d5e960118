"""`cvsjepa predict VIDEO_OR_FRAME_DIR --run RUN`: a CVS timeline for one video."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import get_args

from ..config import DecisionPolicy

from ._common import add_backbone_path_arg

NAME = "predict"
HELP = "CVS timeline (per-second probabilities, plot, first time CVS is reached) for a video"

EXIT_INCOMPLETE = 4  # the timeline was written, but reading the video stopped early (see timeline.json)


def add_parser(sub) -> None:
    p = sub.add_parser(
        NAME, help=HELP,
        description="Decode a video (mp4, mkv, avi, mov, ...; any codec the installed FFmpeg decodes) or read a "
                    "folder of JPEG/PNG frames, sample it at the model's training rate (1 fps), score the causal "
                    "clip ending at every sample, and write timeline.csv, timeline.json and timeline.png. "
                    "Probabilities are calibrated (temperature fitted on val) when the run has a calibration. "
                    "Each second is cvs (all three criteria >= the --policy thresholds chosen on val; default "
                    "specificity: at most 5% of val negatives pass), uncertain (between the sensitivity and the "
                    "--policy thresholds) or no_cvs. Prints when CVS is first reached: --consecutive seconds of cvs "
                    "in a row; a run whose val cannot support the policy reports no time and says why. "
                    "Exit status: 0 done; 2 the input or run cannot be used; "
                    f"{EXIT_INCOMPLETE} the video failed part way (the timeline up to there is written, the "
                    "error is in timeline.json). With --format sages2024 it writes the SAGES CVS Challenge 2024 "
                    "submission instead: DIR/cvs-criteria.json = {\"overall_outputs\": 90 x 3 (calibrated) "
                    "probabilities}, "
                    "one row per second of a 90-s 1 fps video, after the challenge's own checks (shape, range; "
                    "a failure exits 2 and writes nothing). See docs/predict.md for the container recipe.")
    p.add_argument("input", metavar="VIDEO_OR_FRAME_DIR", help="a video file, or a folder of one video's frames")
    p.add_argument("--run", required=True, metavar="RUN",
                   help="run directory from `cvsjepa train`, or its checkpoints/best directory")
    p.add_argument("--out", metavar="DIR", help="output folder (default: ./<input name>_timeline)")
    p.add_argument("--format", choices=("timeline", "sages2024"), default="timeline",
                   help="timeline (default): timeline.csv/json/png; sages2024: the challenge's cvs-criteria.json "
                        "(90 x 3, checked as the challenge checks it)")
    p.add_argument("--fps", type=float, default=None,
                   help="sampling rate (default: the training rate, 1); for a folder, the rate its frames were "
                        "taken at")
    p.add_argument("--consecutive", type=float, default=3.0, metavar="K",
                   help="seconds in state cvs in a row for CVS to count as reached (default 3)")
    p.add_argument("--batch-size", type=int, default=8, metavar="B", help="clips per forward pass (default 8)")
    p.add_argument("--policy", default=None, choices=get_args(DecisionPolicy),
                   help="operating point that declares CVS (default specificity: the lowest thresholds with val "
                        "specificity >= 0.95). Read from the run's thresholds.json (cvsjepa evaluate), else "
                        "computed from its predictions_val.csv; see docs/evaluation.md")
    p.add_argument("--thresholds", type=float, nargs=3, metavar=("T1", "T2", "T3"),
                   help="decision thresholds for C1 C2 C3 given by hand instead of a policy (compared with the "
                        "probabilities shown, calibrated when the run has a calibration; no uncertain state)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (default auto)")
    add_backbone_path_arg(p)
    p.add_argument("--no-plot", action="store_true", help="skip timeline.png")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..api import CVSModel
    from ..errors import ConfigError

    if args.policy is not None and args.thresholds is not None:
        raise ConfigError("give either --policy or --thresholds, not both")
    if args.batch_size < 1:
        raise ConfigError(f"--batch-size must be >= 1, got {args.batch_size}")
    if not args.consecutive > 0:
        raise ConfigError(f"--consecutive must be > 0 seconds, got {args.consecutive}")
    if args.fps is not None and not args.fps > 0:
        raise ConfigError(f"--fps must be > 0, got {args.fps}")
    source = Path(args.input)
    out = Path(args.out) if args.out else Path(f"{source.name.rsplit('.', 1)[0] or source.name}_timeline")
    model = CVSModel.from_run(Path(args.run), device=args.device, thresholds=args.thresholds, policy=args.policy,
                              backbone_path=args.backbone_path)
    timeline = model.predict_video(source, fps=args.fps, consecutive=args.consecutive,
                                   batch_size=args.batch_size, progress=not args.no_progress)
    if args.format == "sages2024":
        from ..predict.submission import write_submission

        path = write_submission(timeline, out)
        print(f"wrote {path}: {len(timeline)} x 3 probabilities (C1, C2, C3 per second)")
        return 0
    written = timeline.save(out, plot=not args.no_plot)
    print(timeline.summary())
    print("wrote " + ", ".join(str(p) for p in written.values()))
    if not timeline.complete:
        print(f"cvsjepa: error: {'; '.join(timeline.errors)} (partial timeline written)", file=sys.stderr)
        return EXIT_INCOMPLETE
    return 0
