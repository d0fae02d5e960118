"""Time-to-CVS on hand-made videos whose labels and probabilities give a known answer."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from cvsjepa.evaluate.decision import DecisionRule
from cvsjepa.evaluate.decision_report import keyframe_spacing, time_to_cvs_rows
from cvsjepa.evaluate.inference import Predictions
from cvsjepa.evaluate.time_to_cvs import summarise, time_to_cvs_report, video_time_to_cvs

RULE = DecisionRule((0.6, 0.6, 0.6), "specificity", 0.95)
HI, LO = [0.9, 0.8, 0.7], [0.9, 0.8, 0.2]  # all pass / C3 fails


def video(seconds: int, high: list[range]) -> tuple[np.ndarray, np.ndarray]:
    """Per-second probabilities: HI inside the given ranges, LO elsewhere."""
    p = np.array([HI if any(t in r for r in high) else LO for t in range(seconds)], dtype=float)
    return np.arange(seconds, dtype=float), p


def keyframes(seconds: int, full_from: float | None) -> tuple[np.ndarray, np.ndarray]:
    """A keyframe every 5 s, labelled full CVS from ``full_from`` on (C1 only before it)."""
    t = np.arange(0, seconds, 5, dtype=float)
    y = np.array([[1, 1, 1] if full_from is not None and x >= full_from else [1, 0, 0] for x in t])
    return t, y


def test_known_latency_and_false_early_call():
    # on time: full CVS labelled from 30 s, the model passes from 33 s on -> declared 33, latency +3
    on_time = video_time_to_cvs(1, *video(60, [range(33, 60)]), *keyframes(60, 30), RULE, 3)
    assert on_time["declared_at_s"] == 33 and on_time["first_full_cvs_label_s"] == 30
    assert on_time["latency_s"] == 3 and not on_time["false_early_call"]
    # early: a 3-s blip at 10-12 s counts (declared 10, 20 s before the label); a 2-s blip would not
    early = video_time_to_cvs(2, *video(60, [range(10, 13), range(40, 60)]), *keyframes(60, 30), RULE, 3)
    assert early["declared_at_s"] == 10 and early["latency_s"] == -20 and early["false_early_call"]
    blip = video_time_to_cvs(3, *video(60, [range(10, 12), range(40, 60)]), *keyframes(60, 30), RULE, 3)
    assert blip["declared_at_s"] == 40 and not blip["false_early_call"]
    # a video never labelled full CVS: any declaration is a false early call
    never_cvs = video_time_to_cvs(4, *video(40, [range(20, 40)]), *keyframes(40, None), RULE, 3)
    assert never_cvs["false_early_call"] and never_cvs["latency_s"] is None
    # missed: labelled from 15 s, never declared
    missed = video_time_to_cvs(5, *video(40, []), *keyframes(40, 15), RULE, 3)
    assert missed["declared_at_s"] is None and not missed["false_early_call"]
    rows = [on_time, early, blip, never_cvs, missed]
    s = summarise(rows)
    assert s["false_early_call_rate"] == pytest.approx(2 / 5)
    assert s["missed_rate"] == pytest.approx(1 / 4)  # of the 4 videos labelled full CVS
    assert s["median_latency_s"] == pytest.approx(np.median([3, -20, 10]))
    report = time_to_cvs_report(rows, RULE, ("C1", "C2", "C3"), "seconds", 3.0, 3, 300, 0)
    assert report["summary"]["n_false_early_calls"] == 2 and report["summary"]["n_declared"] == 4
    lo, hi = report["ci95"]["false_early_call_rate"]
    assert 0 <= lo <= 2 / 5 <= hi <= 1
    # a rule whose policy val cannot support never declares
    cannot = DecisionRule((None, 0.6, 0.6), reason="val cannot support it")
    assert video_time_to_cvs(6, *video(60, [range(0, 60)]), *keyframes(60, 0), cannot, 3)["declared_at_s"] is None


def test_rows_from_predictions_use_the_video_clock():
    """Frames count 25 fps source frames (step 25); a second's time is its position in the 1 fps list,
    and a keyframe (every 5th second) sits on the same clock. Calibration is applied before the rule."""
    vid, n = 7, 40
    frames = [100 + 25 * k for k in range(n)]
    _, p = video(n, [range(22, 40)])
    perm = np.random.default_rng(0).permutation(n)  # rows in any order: the clock sorts them
    seconds = Predictions([f"{vid}_{frames[k]}" for k in perm], [vid] * n, [frames[k] for k in perm],
                          torch.zeros(n, 3), torch.zeros(n, 3), torch.tensor(p[perm]), math.nan)
    kt, ky = keyframes(n, 20)
    kf = [frames[int(t)] for t in kt]
    keys = Predictions([f"{vid}_{f}" for f in kf], [vid] * len(kf), kf, torch.tensor(ky, dtype=torch.float32),
                       torch.zeros(len(kf), 3), torch.tensor(p[kt.astype(int)]), math.nan)
    rows = time_to_cvs_rows(keys, seconds, {vid: frames}, RULE, None, 3)
    assert rows[0]["declared_at_s"] == 22 and rows[0]["first_full_cvs_label_s"] == 20 and rows[0]["latency_s"] == 2
    # the keyframe approximation declares on the first passing keyframe (25 s)
    assert keyframe_spacing(keys, {vid: frames}) == 5
    assert time_to_cvs_rows(keys, keys, {vid: frames}, RULE, None, 1)[0]["declared_at_s"] == 25
