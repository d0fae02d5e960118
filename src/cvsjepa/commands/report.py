"""`cvsjepa report RUN [--out FILE] [--split test|val] [--timeline PATH ...]`."""

from __future__ import annotations

NAME = "report"
HELP = "one self-contained HTML page of a run: metrics with CIs, curves, operating points, per video, attention"


def add_parser(sub) -> None:
    p = sub.add_parser(
        NAME, help=HELP,
        description="Write RUN/report.html: the metrics with 95% CIs over videos, the training curve, PR and "
                    "reliability plots (raw and calibrated), the operating points, time-to-CVS, the per-video "
                    "table, the attention overlays of `cvsjepa diagnose`, timeline examples and the model card. "
                    "One file: images are embedded and nothing is fetched, so it opens from disk and can be sent "
                    "as it is. It shows what the run holds: run `cvsjepa evaluate` (and `cvsjepa diagnose`) first "
                    "for the full page; `cvsjepa evaluate RUN --report` writes it at the end.")
    p.add_argument("run", metavar="RUN", help="run directory")
    p.add_argument("--out", metavar="FILE", help="where to write the page (default RUN/report.html)")
    p.add_argument("--split", choices=("test", "val"), default="test",
                   help="the evaluation shown (default test; falls back to the other split's when missing)")
    p.add_argument("--timeline", action="append", default=[], metavar="PATH",
                   help="a timeline.png (or the folder `cvsjepa predict` wrote it into) to show; repeatable. "
                        "timeline*.png files inside RUN are shown anyway")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..report import write_report

    path = write_report(args.run, args.out, args.split, args.timeline)
    print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB, self-contained)")
    return 0
