"""`cvsjepa demo`: the whole flow on the embedded default, in under a minute on 2 CPU cores.

Synthetic data (labels driven by drawn anatomy, 3 noisy raters, the anatomy framed left, centre or
right) -> a TINY RANDOM backbone of V-JEPA 2's architecture (not V-JEPA weights: the tokens are
random projections of the pixels) run once over the three crops of every clip into a feature store
(``cvsjepa extract``) -> the log's attentive head trained frozen from the store with the default
budget (``train.min_steps``: a few hundred optimizer steps whatever the dataset's size) -> val/test
mAP next to the oracle (best possible) and the prevalence (the AP of a constant guess) -> the
operating point ``predict`` would use (calibrated on val, ``specificity`` policy) and what it gives
on test.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from .config import load_config
from .rundir import BEST_DIR, CURVE_FILE, METRICS_FILE, SUMMARY_FILE

log = logging.getLogger("cvsjepa")

# The demo's config, as overrides of the defaults (the defaults are the log's Experiment 2). No
# budget key: the default train.min_steps floor sizes the training on this ~200-keyframe dataset.
DEMO_OVERRIDES = [
    "name=demo",
    "description=attentive head, tiny random backbone (demo)",
    "backbone=tiny",
    "data.frames=8",
    "data.view=three_crops",  # the synthetic anatomy is often outside the centre crop (docs/benchmarks.md)
    "head.num_heads=4",
    "head.mlp_hidden=128",
    "train.batch_size=16",
    "train.lr=1e-3",
]
STORE_DIR = "store"  # the demo's feature store, next to its data


def run_demo(out: Path, seed: int = 0, epochs: int | None = None, progress: bool = True) -> dict:
    """``epochs``: train exactly that many epochs (no step floor) instead of the default budget."""
    from .data.oracle import ORACLE_FILE
    from .data.synth import write_synthetic_dataset
    from .features.extract import extract
    from .train.classifier import train

    data_dir = out / "data"
    if not (data_dir / ORACLE_FILE).is_file():
        log.info("writing the synthetic dataset to %s ...", data_dir)
        write_synthetic_dataset(data_dir, seed=seed, progress=progress)
    else:
        log.info("reusing the synthetic dataset in %s", data_dir)
    run_dir = _next_run_dir(out)
    overrides = DEMO_OVERRIDES + [f"data.root={data_dir}", f"out={run_dir}", f"seed={seed}",
                                  f"features.store={out / STORE_DIR}"]
    if epochs is not None:
        overrides += [f"train.epochs={epochs}", "train.min_steps=0"]
    cfg = load_config(None, overrides)
    extract(cfg, progress=progress)  # the frozen backbone once per clip (resumes / reuses a finished store)
    result = train(cfg, progress=progress)
    s = result.summary
    print(report(s, operating_point(result.run_dir)))
    print(f"\nrun directory: {result.run_dir}  ({SUMMARY_FILE}, {METRICS_FILE}, {CURVE_FILE}, {BEST_DIR})")
    return s


def operating_point(run) -> str:
    """predict's default operating point, chosen on the run's val predictions, and its effect on test
    (declaring full CVS when all three criteria pass), from the predictions files train wrote."""
    from .evaluate.operating_points import DEFAULT_POLICY
    from .evaluate.operating_report import operating_points_report
    from .evaluate.threshold_file import build_document, parse_document
    from .rundir import RunDir, predictions_file

    run = RunDir(run.path if hasattr(run, "path") else run)
    names = tuple(run.read_config().data.criteria)
    if not all((run / predictions_file(r)).is_file() for r in ("val", "test")):
        return "operating point: no val/test predictions in the run"
    val, test = run.read_predictions("val", names), run.read_predictions("test", names)
    doc = build_document(val["probs"], val["labels"], val["video_ids"], names, "val")
    rule = parse_document(doc, "val").rule(DEFAULT_POLICY, names)
    temps = doc["calibration"]["temperature"]
    ops = operating_points_report(doc["policies"], test["probs"], test["labels"], test["video_ids"], names,
                                  parse_document(doc, "val").calibration, 0, 0)["policies"][DEFAULT_POLICY]
    lines = [f"operating point (what `cvsjepa predict` uses): {rule.describe(names)}",
             "  probabilities calibrated on val: T = " + ", ".join(f"{n} {t:.2f}" for n, t in zip(names, temps))]
    if not rule.can_declare:
        lines.append(f"  CVS would never be declared: {rule.reason}")
    else:
        d = ops["decision"]
        fmt = (lambda v: "n/a" if v is None or v != v else f"{v:.3f}")  # noqa: E731
        lines.append(f"  test, full CVS declared when all three pass: sensitivity {fmt(d['sensitivity'])}, specificity "
                     f"{fmt(d['specificity'])}, PPV {fmt(d['ppv'])}, NPV {fmt(d['npv'])} "
                     f"({d['tp'] + d['fn']} of {d['tp'] + d['fn'] + d['tn'] + d['fp']} keyframes are full CVS)")
    return "\n".join(lines)


def report(s: dict, operating: str | None = None) -> str:
    lines = [f"backbone: {s['backbone']}  (a tiny random model for the demo, NOT V-JEPA weights)",
             f"{'split':<6}{'mAP':>8}{'oracle':>9}{'prevalence':>12}   AP per criterion (C1, C2, C3)"]
    for role in ("val", "test"):
        if s.get(f"{role}_map") is None:
            continue
        prev = sum(s[f"{role}_prevalence"]) / 3
        oracle = s.get(f"{role}_oracle_map")
        lines.append(f"{role:<6}{s[f'{role}_map']:>8.3f}{(oracle if oracle is not None else float('nan')):>9.3f}"
                     f"{prev:>12.3f}   " + ", ".join(f"{a:.3f}" for a in s[f"{role}_ap"]))
    lines.append("prevalence = mean positive rate = the mAP of a constant guess; oracle = mAP of the true "
                 "posterior (the best any model can score)")
    if operating:
        lines.append(operating)
    return "\n".join(lines)


def _next_run_dir(out: Path) -> Path:
    i = 1
    while (out / f"run{i}").exists():
        i += 1
    return out / f"run{i}"


if __name__ == "__main__":  # pragma: no cover
    print(json.dumps(run_demo(Path("demo_runs")), indent=2))
