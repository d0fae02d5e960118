"""`cvsjepa evaluate RUN [--split val|test] [--tta S,T] [--ensemble RUN2 ...] [--per-video] [--bootstrap N]`."""

from __future__ import annotations

import math

from ..errors import ConfigError
from ._common import add_reopen_args, reopen_from_args

NAME = "evaluate"
HELP = "score a run's best checkpoint: AP/mAP, thresholds from val, calibration, CIs over videos"


def add_parser(sub) -> None:
    e = sub.add_parser(
        NAME, help=HELP,
        description="Load RUN/checkpoints/best, re-index the data from the run's config, predict val and the "
                    "chosen split, and write into RUN: eval_<split>.json (per-criterion AP, mAP, full-CVS AP, "
                    "balanced accuracy and F1 at thresholds chosen on VAL, Brier, ECE, 95% CIs by bootstrap over "
                    "videos, figure data), thresholds.json, predictions_<split>.csv, pr_curves_<split>.png and "
                    "reliability_<split>.png. On a SAGES CVS Challenge 2024 dataset the JSON also holds the "
                    "challenge's tasks under 'challenge' (A: macro mAP; B: Brier against the confidence-aware and "
                    "the majority labels; C: the minimum mAP over seeded resamples that over-represent hard "
                    "frames), printed after the table; a run's splits.json is reused, never redrawn. With --tta "
                    "or --ensemble the file names get a suffix (e.g. eval_test_tta3x2.json) so the plain results "
                    "are never overwritten; on another --data-root than the run's, the suffix starts with "
                    "data-<folder>-<hash>, so the run's own predictions and thresholds.json (which predict uses) "
                    "stay.")
    e.add_argument("run", metavar="RUN", help="run directory written by `cvsjepa train`")
    e.add_argument("--split", choices=("val", "test"), default="test",
                   help="split to score (default: test). Thresholds always come from val.")
    e.add_argument("--tta", default="1,1", metavar="S,T",
                   help="test-time augmentation: S spatial views (center, left, right, up, down, corners; max 9) "
                        "x T temporal offsets (0, step, 2*step ... seconds back); default 1,1 = none")
    e.add_argument("--tta-step", type=int, default=2, metavar="SECONDS",
                   help="seconds between temporal offsets (default 2)")
    e.add_argument("--tta-shift", type=float, default=0.5, metavar="F",
                   help="spatial views move by F x the free margin around the center crop (default 0.5)")
    e.add_argument("--ensemble", nargs="+", default=[], metavar="RUN2",
                   help="more run directories: probabilities are averaged over RUN and these (same keyframes)")
    e.add_argument("--per-video", action="store_true", help="also report AP computed within each video, averaged")
    e.add_argument("--bootstrap", type=int, default=1000, metavar="N",
                   help="bootstrap resamples over videos for 95%% CIs (default 1000; 0 = none)")
    e.add_argument("--seed", type=int, default=0, help="bootstrap seed (default 0)")
    e.add_argument("--tag", default=None, help="file-name suffix for the outputs (default: derived from TTA/ensemble)")
    add_reopen_args(e)
    e.set_defaults(func=run)


def parse_tta(text: str, step: int, shift: float):
    from ..evaluate.tta import TTASettings

    try:
        s, t = (int(x) for x in text.split(","))
    except ValueError:
        raise ConfigError(f"--tta expects S,T (spatial views, temporal offsets), e.g. 3,2; got {text!r}") from None
    if t < 1 or step < 1:
        raise ConfigError(f"--tta needs T >= 1 and --tta-step >= 1, got T={t}, step={step}")
    return TTASettings(views=s, offsets=tuple(k * step for k in range(t)), shift=shift)


def run(args) -> int:
    from ..evaluate.runner import EvalOptions, evaluate_run

    options = EvalOptions(split=args.split, tta=parse_tta(args.tta, args.tta_step, args.tta_shift),
                          ensemble=tuple(args.ensemble), per_video=args.per_video, bootstrap=args.bootstrap,
                          seed=args.seed, tag=args.tag)
    res = evaluate_run(args.run, options, reopen_from_args(args))
    print(summary_table(res.report))
    print(f"wrote {res.files['json']} (+ thresholds, predictions, PR curves, reliability diagram)")
    return 0


def summary_table(r: dict) -> str:
    m, ci = r["metrics"], r["ci95"]
    lines = [f"{r['split']} ({r['split_name']}): {r['n_samples']} keyframes, {r['n_videos']} videos; "
             f"thresholds from val {[round(t, 3) for t in r['thresholds']['values']]}",
             f"{'metric':<28}{'value':>8}   95% CI (bootstrap over videos)"]
    keys = ["map", *[f"ap_{n}" for n in r["criteria"]], "full_cvs_ap", "per_video_map", "balanced_accuracy_mean",
            "f1_mean", "brier_mean", "ece_mean"]
    for k in keys:
        if k not in m:
            continue
        lo, hi = ci.get(k, (math.nan, math.nan))
        band = "" if lo is None or (isinstance(lo, float) and math.isnan(lo)) else f"[{lo:.3f}, {hi:.3f}]"
        v = m[k]
        lines.append(f"{k:<28}{'n/a' if v is None or v != v else f'{v:.3f}':>8}   {band}")
    if r.get("challenge"):
        lines += challenge_lines(r["challenge"])
    return "\n".join(lines)


def challenge_lines(c: dict) -> list[str]:
    """The SAGES challenge's three tasks (docs/evaluation.md), after the usual table."""
    def f(v) -> str:
        return "n/a" if v is None or v != v else f"{v:.3f}"

    a, b, t = c["task_a"], c["task_b"], c["task_c"]
    return [f"SAGES CVS Challenge 2024 ({c['n_frames']} annotated frames, {c['n_videos']} videos):",
            f"  task A  mAP (sklearn macro)                {f(a['map']):>8}",
            f"  task B  Brier vs confidence-aware [q > 0]  {f(b['brier_official']['mean']):>8}   "
            "(official code, as written)",
            f"          Brier vs majority label            {f(b['brier_majority']['mean']):>8}",
            f"          Brier vs q itself                  {f(b['brier_soft']['mean']):>8}",
            f"  task C  robustness: min mAP of resamples   {f(t['robustness_map']):>8}   (worst stratum: "
            f"{t['worst_stratum']})"]
