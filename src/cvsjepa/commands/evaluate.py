"""`cvsjepa evaluate RUN [--split val|test] [--tta S,T] [--ensemble RUN2 ...] [--per-video] [--bootstrap N]
[--policy P] [--target P=X] [--time-to-cvs seconds|keyframes|off] [--consecutive K]`."""

from __future__ import annotations

import math
from typing import get_args

from ..config import DecisionPolicy, TimeToCvsMethod
from ..errors import ConfigError
from ._common import add_reopen_args, reopen_from_args

NAME = "evaluate"
HELP = ("score a run's best checkpoint: AP/mAP, calibration and operating points from val, time-to-CVS, "
        "CIs over videos")


def add_parser(sub) -> None:
    e = sub.add_parser(
        NAME, help=HELP,
        description="Load RUN/checkpoints/best, re-index the data from the run's config, predict val and the "
                    "chosen split, and write into RUN: eval_<split>.json (per-criterion AP, mAP, full-CVS AP, "
                    "balanced accuracy and F1 at thresholds chosen on VAL, Brier, ECE before and after a "
                    "temperature calibration fitted on VAL, the operating points of every policy (balanced, "
                    "specificity, precision, sensitivity; chosen on VAL) with their sensitivity, specificity, PPV "
                    "and NPV on the split, time-to-CVS per video, 95% CIs by bootstrap over videos, figure data), "
                    "thresholds.json, calibration.json, predictions_<split>.csv, pr_curves_<split>.png and "
                    "reliability_<split>.png. On a SAGES CVS Challenge 2024 dataset the JSON also holds the "
                    "challenge's tasks under 'challenge' (A: macro mAP; B: Brier against the confidence-aware and "
                    "the majority labels; C: the minimum mAP over seeded resamples that over-represent hard "
                    "frames), printed after the table; a run's splits.json is reused, never redrawn. With --tta "
                    "or --ensemble the file names get a suffix (e.g. eval_test_tta3x2.json) so the plain results "
                    "are never overwritten; on another --data-root than the run's, the suffix starts with "
                    "data-<folder>-<hash>, so the run's own predictions and thresholds.json (which predict uses) "
                    "stay. See docs/evaluation.md.")
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
    e.add_argument("--policy", default=None, choices=get_args(DecisionPolicy),
                   help="operating point that declares CVS in time-to-CVS, as predict would (default specificity)")
    e.add_argument("--target", action="append", default=[], metavar="P=X",
                   help="target of a policy instead of its default, e.g. specificity=0.98 (defaults: specificity 0.95, "
                        "precision 0.80, sensitivity 0.90); repeat for several")
    e.add_argument("--time-to-cvs", default="seconds", choices=get_args(TimeToCvsMethod),
                   help="seconds: score the causal clip of every 1 fps second of the split's videos, as predict does "
                        "(default; ~5x the keyframes); keyframes: use the keyframe predictions only (cheaper, "
                        "declarations fall on keyframes); off")
    e.add_argument("--consecutive", type=float, default=3.0, metavar="K",
                   help="seconds in state cvs in a row before CVS is declared in time-to-CVS (default 3, as predict)")
    e.add_argument("--report", action="store_true",
                   help="also write RUN/report.html, the self-contained HTML page of the run (see `cvsjepa report`)")
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


def parse_targets(items: list[str]) -> tuple[tuple[str, float], ...]:
    out = []
    for item in items:
        name, _, value = item.partition("=")
        try:
            out.append((name.strip(), float(value)))
        except ValueError:
            raise ConfigError(f"--target expects POLICY=VALUE, e.g. specificity=0.98; got {item!r}") from None
    return tuple(out)


def run(args) -> int:
    from ..evaluate.operating_points import DEFAULT_POLICY
    from ..evaluate.runner import EvalOptions, evaluate_run

    options = EvalOptions(split=args.split, tta=parse_tta(args.tta, args.tta_step, args.tta_shift),
                          ensemble=tuple(args.ensemble), per_video=args.per_video, bootstrap=args.bootstrap,
                          seed=args.seed, tag=args.tag, policy=args.policy or DEFAULT_POLICY,
                          targets=parse_targets(args.target), time_to_cvs=args.time_to_cvs,
                          consecutive=args.consecutive)
    res = evaluate_run(args.run, options, reopen_from_args(args))
    print(summary_table(res.report))
    print(decision_summary(res.report, options.policy))
    print(f"wrote {res.files['json']} (+ thresholds, calibration, predictions, PR curves, reliability diagram)")
    if args.report:
        from ..report import write_report

        print(f"wrote {write_report(args.run, split=args.split)}")
    return 0


def _num(v, fmt: str = ".3f") -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, fmt)


def _ci(ci) -> str:
    if not ci or ci[0] is None or (isinstance(ci[0], float) and math.isnan(ci[0])):
        return ""
    return f" [{ci[0]:.3f}, {ci[1]:.3f}]"


def decision_summary(r: dict, policy: str) -> str:
    """Calibration, the declaring policy's operating point and time-to-CVS, a few lines each."""
    names = r["criteria"]
    cal = r["calibration"]
    temps = cal["method"]["temperature"]
    lines = ["", "calibration (temperature fitted on val): T = " + ", ".join(f"{n} {t:.3g}" for n, t in zip(names, temps))
             + f"; {r['split']} Brier {_num(cal['before']['brier_mean'])} -> {_num(cal['after']['brier_mean'])}, "
             f"ECE {_num(cal['before']['ece_mean'])} -> {_num(cal['after']['ece_mean'])}"]
    op = r["operating_points"]["policies"][policy]
    target = "" if op["target"] is None else f" >= {op['target']:g}"
    lines.append(f"operating point: {policy}{target} on val, applied to {r['split']} (95% CI over videos)")
    for name, row in [*op["criteria"].items(), ("full CVS", op["full_cvs"]), ("decision", op["decision"])]:
        if row.get("sensitivity") is None and "reason" in row:
            lines.append(f"  {name:<10} n/a: {row['reason']}")
            continue
        thr = f"t={row['threshold']:.3g}" if row.get("threshold") is not None else "all three"
        ci = row.get("ci95", {})
        lines.append(f"  {name:<10} {thr:<9} " + "  ".join(
            f"{k[:4]} {_num(row[k])}{_ci(ci.get(k))}" for k in ("sensitivity", "specificity", "ppv", "npv")))
    t = r.get("time_to_cvs") or {}
    if t.get("method", "off") != "off":
        s, ci = t["summary"], t.get("ci95", {})
        if not t["declares"]:
            lines.append(f"time-to-CVS ({t['method']}): never declared: {t['reason']}")
        else:
            lines.append(f"time-to-CVS ({t['method']}, {t['rule_text']}; {t['consecutive_s']:g} s in a row): "
                         f"{s['n_videos']} videos, {s['n_declared']} declared, {s['n_false_early_calls']} false "
                         f"early call(s)")
            lines.append(f"  false early call rate {_num(s['false_early_call_rate'])}{_ci(ci.get('false_early_call_rate'))}"
                         f"; missed rate {_num(s['missed_rate'])}{_ci(ci.get('missed_rate'))}"
                         f"; median latency {_num(s['median_latency_s'], '.1f')}"
                         f"{'' if s['median_latency_s'] is None or s['median_latency_s'] != s['median_latency_s'] else ' s'}"
                         f"{_ci(ci.get('median_latency_s')).replace('.000', '')}")
    return "\n".join(lines)


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
