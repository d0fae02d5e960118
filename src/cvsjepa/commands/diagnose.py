"""`cvsjepa diagnose RUN [attention|categories|entropy|curves|all ...]`."""

from __future__ import annotations

from ._common import add_reopen_args, reopen_from_args

NAME = "diagnose"
HELP = ("attention maps, label-category analyses, backbone attention entropy, training curves, a temporal head's "
        "history weights -> RUN/diagnose/")


def add_parser(sub) -> None:
    d = sub.add_parser(
        NAME, help=HELP,
        description="The research log's diagnostics of a run, written to RUN/diagnose/report.md with PNGs and "
                    "diagnose.json. attention: the head's pooler attention over the token grid, overlaid on the "
                    "frames of sampled clips (per-clip std, max, entropy). categories: full CVS / C1-only / C2-only / "
                    "C3-only / mixed / all-negative with attention statistics and accuracy at val thresholds, the "
                    "criterion comparison and the wrong-class analysis. entropy: the backbone's internal "
                    "self-attention entropy per layer and head (eager attention); --compare RUN2 side by side. "
                    "curves: train/val mAP and the gap of RUN and --runs on one plot. temporal (a temporal run, "
                    "head.type=temporal_*; its 'all' is temporal and curves): for sampled or --sample-ids "
                    "keyframes, which past seconds the head used (the gated head's attention over its history, the "
                    "GRU's per-second influence), against the span the clip itself covers and, on synthetic data, "
                    "the seconds an occlusion hid the anatomy.")
    d.add_argument("run", metavar="RUN", help="run directory written by `cvsjepa train`")
    d.add_argument("analyses", nargs="*", default=["all"], metavar="ANALYSIS",
                   help="attention, categories, entropy, curves or all (default: all); seg (the segmentation "
                        "grid of a multi-task run, e.g. exp8) is not part of all and must be named; temporal: a "
                        "temporal run's history weights (its all = temporal + curves)")
    d.add_argument("--split", choices=("val", "test"), default="val", help="split to analyse (default: val)")
    d.add_argument("--samples", type=int, default=2, metavar="N",
                   help="attention heatmaps for up to N sampled clips per label category (default 2); seg "
                        "shows max(N, 4) masked clips")
    d.add_argument("--sample-ids", nargs="+", default=None, metavar="ID",
                   help="heatmaps for these clips instead (ids as in predictions_<split>.csv, e.g. 7_125)")
    d.add_argument("--entropy-samples", type=int, default=8, metavar="N",
                   help="clips for the internal attention entropy (default 8; one at a time)")
    d.add_argument("--compare", default=None, metavar="RUN2",
                   help="second run for the entropy comparison (e.g. frozen vs LoRA), on the same clips")
    d.add_argument("--runs", nargs="+", default=[], metavar="RUN2", help="more runs on the training-curve plot")
    d.add_argument("--seed", type=int, default=0, help="seed for sampling clips (default 0)")
    add_reopen_args(d)
    d.set_defaults(func=run)


def run(args) -> int:
    from ..diagnose.runner import DiagnoseOptions, diagnose_run

    options = DiagnoseOptions(analyses=tuple(args.analyses), split=args.split, samples=args.samples,
                              sample_ids=tuple(args.sample_ids or ()), compare=args.compare, runs=tuple(args.runs),
                              entropy_samples=args.entropy_samples, seed=args.seed)
    res = diagnose_run(args.run, options, reopen_from_args(args))
    figs = res.data.get("figures", [])
    print(f"wrote {res.report} ({', '.join(res.data['analyses'])}) and {len(figs)} figure(s) in {res.out_dir}: "
          f"{', '.join(figs[:6])}{' ...' if len(figs) > 6 else ''}")
    return 0
