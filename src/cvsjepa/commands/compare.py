"""`cvsjepa compare RUN_A RUN_B [RUN_C ...] --split test`: paired bootstrap of mAP and AP differences."""

from __future__ import annotations

import math
from pathlib import Path

NAME = "compare"
HELP = "paired bootstrap over videos of the mAP and per-criterion AP differences between runs (CI, p-value)"


def add_parser(sub) -> None:
    c = sub.add_parser(
        NAME, help=HELP,
        description="Compare RUN_B (and RUN_C ...) with RUN_A on the same keyframes: every bootstrap resample draws "
                    "the split's videos with replacement and scores both runs on the drawn keyframes. Prints and "
                    "writes JSON with map_difference (run minus RUN_A), its 95% percentile interval ci95 and a "
                    "two-sided p_value = min(1, 2 * min(#{d* <= 0}, #{d* >= 0}) / B), per criterion too. Reads "
                    "predictions_<split>.csv from each run (written by train or evaluate; nothing is re-run) and "
                    "refuses runs scored on different keyframes. A seed group (cvsjepa train --seeds) counts as "
                    "the mean over its seeds. See docs/evaluation.md.")
    c.add_argument("runs", nargs="+", metavar="RUN", help="run directories (or seed groups); the first is the reference")
    c.add_argument("--split", choices=("val", "test"), default="test", help="split whose predictions are compared "
                                                                            "(default test)")
    c.add_argument("--tag", default="", help="compare predictions_<split>_<tag>.csv (e.g. tta3x2) instead")
    c.add_argument("--bootstrap", type=int, default=2000, metavar="N", help="paired resamples (default 2000)")
    c.add_argument("--seed", type=int, default=0, help="bootstrap seed (default 0)")
    c.add_argument("--out", default=None, metavar="FILE",
                   help="JSON output (default: compare_<split>.json in the current folder)")
    c.set_defaults(func=run)


def run(args) -> int:
    from ..errors import ConfigError
    from ..evaluate.compare import compare, load_scored
    from ..io import atomic_write_json, json_safe

    if len(args.runs) < 2:
        raise ConfigError("compare needs at least two runs: RUN_A (the reference) and RUN_B")
    if args.bootstrap < 1:
        raise ConfigError(f"--bootstrap must be >= 1, got {args.bootstrap}")
    loaded = [load_scored(r, args.split, args.tag) for r in args.runs]
    names = loaded[0][1]
    res = compare([s for s, _ in loaded], names, args.bootstrap, args.seed)
    res = {"split": args.split, "tag": args.tag or None, "criteria": list(names), **res}
    out = Path(args.out or f"compare_{args.split}.json")
    atomic_write_json(out, json_safe(res))
    print(format_result(res))
    print(f"wrote {out}")
    return 0


def _f(v, signed: bool = False) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "n/a"
    return f"{100 * v:+.2f}" if signed else f"{100 * v:.2f}"


def _p(p, resamples: int) -> str:
    from ..runs import format_p

    return "n/a" if p is None or p != p else format_p(p, resamples)


def format_result(res: dict) -> str:
    b = res["bootstrap"]["resamples"]
    lines = [f"reference: {res['reference']} ({res['split']}, {res['n_samples']} keyframes, {res['n_videos']} videos; "
             f"{res['bootstrap']['resamples']} paired resamples over videos). Differences in AP points, run - reference:"]
    for c in res["comparisons"]:
        lo, hi = c["ci95"]
        lines.append(f"  {c['run']}: mAP {_f(c['map_run'])} vs {_f(c['map_reference'])}: {_f(c['map_difference'], True)} "
                     f"[{_f(lo, True)}, {_f(hi, True)}], p = {_p(c['p_value'], b)}")
        for n, d in c["per_criterion"].items():
            lo, hi = d["ci95"]
            lines.append(f"      AP {n}: {_f(d['difference'], True)} [{_f(lo, True)}, {_f(hi, True)}], "
                         f"p = {_p(d['p_value'], b)}")
    return "\n".join(lines)
