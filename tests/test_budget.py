"""Training budgets in optimizer steps or epochs, and the early-stopping guard: no stop before
train.min_steps, patience on a smoothed val mAP, a warning when val has few positives."""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import pytest

from cvsjepa.cli import main
from cvsjepa.config import load_config
from cvsjepa.errors import ConfigError
from cvsjepa.evaluate.inference import Predictions
from cvsjepa.evaluate.metrics import APResult
from cvsjepa.rundir import LOG_FILE
from cvsjepa.train.build import AUTO_MIN_STEPS_AFTER_WARMUP, StagePlan, stage_budget, stage_plans
from cvsjepa.train.members import Progress
from tiny_runs import tiny_train_args

REPO = Path(__file__).resolve().parents[1]


def _plan(**kw) -> StagePlan:
    base = dict(stage=1, epochs=15, patience=2, batch_size=32, grad_accum=1, head_lr=1e-3, backbone_lr=1e-5,
                warmup_epochs=0.0)
    return StagePlan(**{**base, **kw})


def test_epochs_and_steps_become_one_budget_in_optimizer_steps():
    big = stage_budget(_plan(), steps_per_epoch=218)  # Endoscapes2023: 6,960 keyframes / 32
    assert (big.total_steps, big.epochs, big.min_steps, big.extended) == (3270, 15, AUTO_MIN_STEPS_AFTER_WARMUP, False)
    small = stage_budget(_plan(), steps_per_epoch=7)  # 200 keyframes: 15 epochs would be 105 steps
    assert small.extended and small.total_steps == AUTO_MIN_STEPS_AFTER_WARMUP
    assert small.epochs == math.ceil(AUTO_MIN_STEPS_AFTER_WARMUP / 7)
    exact = stage_budget(_plan(steps=50, min_steps=80), steps_per_epoch=7)  # train.steps is exact
    assert (exact.total_steps, exact.epochs, exact.min_steps, exact.extended) == (50, 8, 50, False)
    warm = stage_budget(_plan(warmup_epochs=2.0, min_steps=-1), steps_per_epoch=100)
    assert warm.warmup_steps == 200 and warm.min_steps == 200 + AUTO_MIN_STEPS_AFTER_WARMUP
    assert stage_budget(_plan(warmup_steps=30), steps_per_epoch=100).warmup_steps == 30
    off = stage_budget(_plan(min_steps=0, epochs=2), steps_per_epoch=7)
    assert (off.total_steps, off.min_steps, off.extended) == (14, 0, False)


def test_the_logs_configs_keep_their_early_stopping():
    exp2 = stage_budget(stage_plans(load_config(REPO / "configs" / "exp2_attention.yaml"))[0], steps_per_epoch=218)
    assert exp2.min_steps <= 3 * 218  # the log's exp2 stopped at epoch 4 with patience 2: still possible
    s1, s2 = stage_plans(load_config(REPO / "configs" / "exp9_staged.yaml"))
    assert s1.smoothing == 1 and s1.patience == 5 and s1.min_steps == 0  # the log stopped on the raw val mAP
    assert stage_budget(s2, steps_per_epoch=55).total_steps == 5 * 55  # no floor on a continued head


def test_budget_keys_are_checked():
    with pytest.raises(ConfigError, match="warm-up once"):
        load_config(None, ["train.warmup_steps=10", "train.warmup_epochs=1"])
    with pytest.raises(ConfigError, match="train.patience_smoothing"):
        load_config(None, ["train.patience_smoothing=0"])
    with pytest.raises(ConfigError, match="train.min_steps"):
        load_config(None, ["train.min_steps=-2"])


def test_progress_stops_on_the_smoothed_score_never_before_min_steps():
    p = Progress()
    scores = [0.50, 0.70, 0.40, 0.65, 0.45, 0.44]  # raw best at epoch 2
    stops = []
    for e, s in enumerate(scores, 1):
        p.update(s, e, 1, smoothing=3)
        stops.append(p.should_stop(patience=2, steps_done=10 * e, min_steps=45))
    assert p.best_epoch == 2 and p.best_map == 0.70  # the checkpoint: the raw best
    # means of the last 3: .50 .60 .533 .583 .50 .513 -> records at epochs 1, 2; bad 3..6
    assert p.bad_epochs == 4
    assert stops == [False, False, False, False, True, True]  # patience met at epoch 4, min steps at 5
    assert not p.should_stop(patience=0, steps_done=10 ** 6, min_steps=0)  # patience 0 = never


def test_early_stopping_cannot_fire_before_the_minimum_steps(synth_root, tmp_path, monkeypatch):
    """A val mAP that only falls after epoch 1: patience 1 stops at epoch 2 without a floor, and not
    before the epoch that reaches train.min_steps with one."""
    def run(name: str, extra: list[str]) -> dict:
        calls = itertools.count()
        monkeypatch.setattr(Predictions, "ap",
                            lambda self, *a, **k: APResult((0.5, 0.5, 0.5), 0.9 - 0.01 * next(calls)))
        out = tmp_path / name
        args = [*tiny_train_args(synth_root, out, epochs=8), "train.patience=1", "train.patience_smoothing=1",
                "data.test_split=", *extra, "--no-progress"]
        assert main(["train", *args]) == 0
        return json.loads((out / "summary.json").read_text())

    free = run("free", ["train.min_steps=0"])
    spe = free["budget"]["1"]["steps_per_epoch"]
    assert free["epochs_run"] == 2 and free["best_epoch"] == 1
    guarded = run("guarded", [f"train.min_steps={4 * spe + 1}"])
    assert guarded["epochs_run"] == 5 and guarded["budget"]["1"]["steps_run"] == 5 * spe >= 4 * spe + 1
    assert guarded["best_epoch"] == 1  # the checkpoint is still the raw best


def test_a_small_epoch_budget_is_extended_and_val_with_few_positives_is_flagged(synth_root, tmp_path):
    out = tmp_path / "run"
    args = [*tiny_train_args(synth_root, out, epochs=1), "train.min_steps=6", "data.test_split=", "--no-progress"]
    assert main(["train", *args]) == 0
    budget = json.loads((out / "summary.json").read_text())["budget"]["1"]
    assert budget["extended"] and budget["total_steps"] == budget["steps_run"] == 6
    assert budget["epochs"] == math.ceil(6 / budget["steps_per_epoch"])
    text = (out / LOG_FILE).read_text()
    assert "WARNING val has fewer than 20 positives" in text and "extended to train.min_steps" in text
