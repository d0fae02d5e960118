"""`cvsjepa runs DIR...`: the summary table of several runs."""

from __future__ import annotations

from pathlib import Path

from ._common import print_table

NAME = "runs"
HELP = "summary table of run directories (the research log's table), as text, Markdown and CSV"


def add_parser(sub) -> None:
    r = sub.add_parser(NAME, help=HELP,
                       description="One row per run directory: experiment, approach, trainable params, best val "
                                   "mAP, per-criterion val AP, test mAP, delta vs a baseline, epochs to best, "
                                   "train-val gap at the best epoch. A seed group (cvsjepa train --seeds) is one row "
                                   "of mean +- sd over its seeds. With --baseline, each row's delta gets a 95% "
                                   "interval and p-value from the paired bootstrap over videos of the val mAP "
                                   "difference (on predictions_val.csv). Folders that hold run directories are "
                                   "searched one level down.")
    r.add_argument("run_dirs", nargs="+", metavar="DIR")
    r.add_argument("--baseline", help="run directory or experiment name to compare against (default: the first, "
                                      "without intervals)")
    r.add_argument("--bootstrap", type=int, default=1000, metavar="N",
                   help="paired resamples for the intervals against --baseline (default 1000; 0 = none)")
    r.add_argument("--seed", type=int, default=0, help="bootstrap seed (default 0)")
    r.add_argument("--out", default="runs_summary", help="prefix of the .md and .csv files (default: runs_summary)")
    r.set_defaults(func=run)


def _expand(paths: list[str]) -> list[Path]:
    from ..rundir import RunDir, is_group

    def usable(d: Path) -> bool:
        return RunDir(d).is_finished() or is_group(d)

    out = []
    for p in map(Path, paths):
        if not p.is_dir() or usable(p):
            out.append(p)
        else:
            out += sorted(d for d in p.iterdir() if d.is_dir() and usable(d))
    return out


def run(args) -> int:
    from ..runs import format_row, runs_table, write_tables, COLUMNS

    from ..errors import ConfigError

    if args.bootstrap < 0:
        raise ConfigError(f"--bootstrap must be >= 0, got {args.bootstrap}")
    rows = runs_table(_expand(args.run_dirs), args.baseline, args.bootstrap, args.seed)
    shown = [c for c in COLUMNS if c not in ("delta_ci95", "delta_p") or args.baseline]
    print_table([{c: format_row(r)[c] for c in shown} for r in rows])
    for r in rows:
        if r.get("delta_note"):
            print(f"{r['experiment']}: {r['delta_note']}")
    md, cs = write_tables(rows, Path(args.out))
    print(f"\nwritten: {md} and {cs}")
    return 0
