"""The model card (checkpoints/best/README.md): what it holds before and after `cvsjepa evaluate`."""

from __future__ import annotations

import json
import shutil

from cvsjepa.checkpoint import CARD_FILE
from cvsjepa.rundir import BEST_DIR


def test_the_card_after_evaluate_has_test_metrics_with_intervals(ecosystem_run):
    run = ecosystem_run.path
    card = (run / BEST_DIR / CARD_FILE).read_text()
    meta = json.loads((run / BEST_DIR / "config.json").read_text())
    evaluation = json.loads((run / "eval_test.json").read_text())
    assert meta["backbone_fingerprint"] in card and str(ecosystem_run.weights) in card
    assert "not a medical device" in card and "## Intended use" in card and "## Limitations" in card
    lo, hi = evaluation["ci95"]["map"]
    assert f"| map | {evaluation['metrics']['map']:.3f} | [{lo:.3f}, {hi:.3f}] |" in card
    assert "specificity (default)" in card and "## Calibration" in card
    temps = json.loads((run / "calibration.json").read_text())["temperature"]
    assert f"| {temps[0]:.3f} |" in card
    assert f"cvsjepa train {run}/config.yaml out=NEW_RUN" in card


def test_the_card_before_evaluate_points_to_it(ecosystem_run, tmp_path):
    from cvsjepa.card import write_card

    run = tmp_path / "run"
    shutil.copytree(ecosystem_run.path, run, ignore=shutil.ignore_patterns(
        "wandb", "mlflow", "tensorboard", "eval_*.json", "thresholds*.json", "calibration*.json"))
    for cached in ("thresholds.json",):
        (run / BEST_DIR / cached).unlink(missing_ok=True)
    card = write_card(run).read_text()
    summary = json.loads((run / "summary.json").read_text())
    assert "No evaluation yet" in card and f"cvsjepa evaluate {run}" in card
    assert f"test mAP {summary['test_map']:.3f} (no interval)" in card
    assert "95 % CI" not in card and "None yet" in card
