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
                                   "train-val gap at the best epoch. Folders that hold run directories are "
                                   "searched one level down.")
    r.add_argument("run_dirs", nargs="+", metavar="DIR")
    r.add_argument("--baseline", help="run directory or experiment name to compare against (default: the first)")
    r.add_argument("--out", default="runs_summary", help="prefix of the .md and .csv files (default: runs_summary)")
    r.set_defaults(func=run)


def _expand(paths: list[str]) -> list[Path]:
    from ..rundir import RunDir

    out = []
    for p in map(Path, paths):
        if not p.is_dir() or RunDir(p).is_finished():
            out.append(p)
        else:
            out += sorted(d for d in p.iterdir() if RunDir(d).is_finished())
    return out


def run(args) -> int:
    from ..runs import format_row, runs_table, write_tables, COLUMNS

    rows = runs_table(_expand(args.run_dirs), args.baseline)
    print_table([{c: format_row(r)[c] for c in COLUMNS} for r in rows])
    md, cs = write_tables(rows, Path(args.out))
    print(f"\nwritten: {md} and {cs}")
    return 0
