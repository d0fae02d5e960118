"""Operating points chosen on val (every policy meets its target there, moves with the target, and says
why when val cannot support it), the temperature calibration fitted on val, and the decision states."""

from __future__ import annotations

import math
import numpy as np
import pytest
import torch

from cvsjepa.evaluate.calibration import brier_score
from cvsjepa.evaluate.decision import STATES, DecisionRule
from cvsjepa.evaluate.metrics import cvs_average_precision
from cvsjepa.evaluate.operating_points import POLICIES, choose, choose_policies, min_count, read_policy
from cvsjepa.evaluate.temperature import T_MAX, Temperature, nll
from cvsjepa.evaluate.threshold_file import build_document, parse_document


def val_like(seed: int, n: int = 400, rate: float = 0.3, signal: float = 1.5):
    """Scores with some signal: positives' logits are shifted up by ``signal``."""
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < rate).astype(float)
    z = rng.normal(size=n) + signal * y - 1.0
    return 1 / (1 + np.exp(-z)), y


def rates_at(s, y, t) -> dict:
    """Independent of the module: the four rates of ``s >= t`` against ``y``."""
    pred, pos = s >= t, y == 1
    tp, fp, tn, fn = (pred & pos).sum(), (pred & ~pos).sum(), (~pred & ~pos).sum(), (~pred & pos).sum()
    return {"sensitivity": tp / (tp + fn), "specificity": tn / (tn + fp), "ppv": tp / max(tp + fp, 1),
            "tp": tp, "tn": tn}


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("policy,rate,target,extreme", [
    ("specificity", "specificity", 0.95, "lowest"), ("specificity", "specificity", 0.8, "lowest"),
    ("precision", "ppv", 0.6, "lowest"), ("sensitivity", "sensitivity", 0.9, "highest"),
    ("sensitivity", "sensitivity", 0.7, "highest")])
def test_policy_threshold_meets_its_target_on_val(seed, policy, rate, target, extreme):
    s, y = val_like(seed)
    op = choose(policy, s, y, target)
    assert op.supported and op.threshold in set(s)  # a score seen on val
    got = rates_at(s, y, op.threshold)
    assert got[rate] >= target - 1e-12
    assert op.val[rate] == pytest.approx(got[rate])
    # ... and it is the extreme threshold that does: one step further fails the target (or is degenerate)
    u = np.unique(s)
    i = int(np.searchsorted(u, op.threshold))
    if extreme == "lowest" and i > 0:
        below = rates_at(s, y, u[i - 1])
        assert below[rate] < target or (policy == "specificity" and below["tp"] == 0)
    if extreme == "highest" and i + 1 < len(u):
        assert rates_at(s, y, u[i + 1])[rate] < target


def test_thresholds_move_with_the_target_and_only_with_val():
    s, y = val_like(0)
    spec = [choose("specificity", s, y, t).threshold for t in (0.8, 0.9, 0.95, 0.99)]
    assert spec == sorted(spec) and len(set(spec)) == 4  # a stricter specificity needs a higher threshold
    sens = [choose("sensitivity", s, y, t).threshold for t in (0.7, 0.8, 0.9, 0.95)]
    assert sens == sorted(sens, reverse=True) and len(set(sens)) == 4
    # the policies are pure functions of val: another split's labels cannot enter
    before = choose_policies(np.stack([s] * 3, 1), np.stack([y] * 3, 1), ("C1", "C2", "C3"))
    again = choose_policies(np.stack([s] * 3, 1), np.stack([y] * 3, 1), ("C1", "C2", "C3"))
    assert before == again
    changed = choose_policies(np.stack([s] * 3, 1), np.stack([1 - y] * 3, 1), ("C1", "C2", "C3"))
    assert changed["specificity"]["criteria"]["C1"]["threshold"] != before["specificity"]["criteria"]["C1"]["threshold"]


@pytest.mark.parametrize("case,policy,needle", [
    ("no_pos", "specificity", "no positive"), ("no_neg", "sensitivity", "no negative"),
    ("few_neg", "specificity", "needs at least 20"), ("few_pos", "sensitivity", "needs at least 10"),
    ("constant", "specificity", "still calls a val positive"),
    ("constant", "sensitivity", "still calls a val negative"),
    ("constant", "precision", "no threshold reaches a PPV"), ("no_pos", "balanced", "no positive")])
def test_val_that_cannot_support_a_policy_says_why(case, policy, needle):
    rng = np.random.default_rng(0)
    s = rng.random(200)
    y = {"no_pos": np.zeros(200), "no_neg": np.ones(200), "constant": (rng.random(200) < 0.3).astype(float),
         "few_neg": np.r_[np.ones(190), np.zeros(10)], "few_pos": np.r_[np.zeros(195), np.ones(5)]}[case]
    if case == "constant":
        s = np.full(200, 0.7)
    op = choose(policy, s, y)
    assert op.threshold is None and needle in op.reason
    assert min_count(0.95) == 20 and min_count(0.9) == 10 and min_count(0.8) == 5


def test_calibrated_thresholds_give_the_raw_decisions_and_read_back():
    s, y = val_like(3)
    probs, labels = np.stack([s, s ** 2, np.sqrt(s)], 1), np.stack([y, y, y], 1)
    doc = build_document(probs, labels, list(range(len(s))), ("C1", "C2", "C3"), "val")
    back = parse_document(doc, "doc")
    for policy in POLICIES:
        for c, n in enumerate(("C1", "C2", "C3")):
            e = doc["policies"][policy]["criteria"][n]
            if e["threshold_raw"] is None:
                continue
            raw_pred = probs[:, c] >= e["threshold_raw"]
            cal_pred = back.calibration.apply(probs)[:, c] >= e["threshold"]
            assert (raw_pred == cal_pred).all()
    rule = back.rule("specificity", ("C1", "C2", "C3"))
    assert rule.thresholds == read_policy(doc["policies"], "specificity", ("C1", "C2", "C3"), "doc").thresholds
    assert rule.band_policy == "sensitivity" and rule.can_declare


# ------------------------------------------------------------------ calibration
def test_temperature_recovers_a_known_overconfidence_and_lowers_val_nll():
    rng = np.random.default_rng(1)
    z = rng.normal(scale=2.0, size=4000)
    y = (rng.random(4000) < 1 / (1 + np.exp(-z))).astype(float)  # calibrated at T = 1 on logit z
    over = 1 / (1 + np.exp(-3 * z))  # the model's logits are 3x too sharp
    cal = Temperature.fit_val(np.stack([over] * 3, 1), np.stack([y] * 3, 1), ("C1", "C2", "C3"), "val")
    assert cal.temperature[0] == pytest.approx(3.0, rel=0.1)
    assert cal.fit["val_nll_after"][0] < cal.fit["val_nll_before"][0] - 0.05
    after = cal.apply(np.stack([over] * 3, 1))
    assert nll(after[:, 0], y) == pytest.approx(cal.fit["val_nll_after"][0])
    assert brier_score(after[:, 0], y) < brier_score(over, y)
    # the map is increasing: AP is unchanged
    ap = lambda p: cvs_average_precision(torch.tensor(p), torch.tensor(np.stack([y] * 3, 1))).map  # noqa: E731
    assert ap(after) == pytest.approx(ap(np.stack([over] * 3, 1)), abs=1e-6)
    assert Temperature.from_dict(cal.to_dict(), "x").temperature == cal.temperature


@pytest.mark.parametrize("seed", [0, 1])
def test_temperature_never_makes_val_nll_worse(seed):
    s, y = val_like(seed, n=300, signal=0.2)  # a weak model
    cal = Temperature.fit_val(np.stack([s] * 3, 1), np.stack([y] * 3, 1), ("C1", "C2", "C3"))
    assert all(a <= b + 1e-9 for a, b in zip(cal.fit["val_nll_after"], cal.fit["val_nll_before"]))


def test_temperature_of_a_one_class_or_uninformative_criterion():
    s, y = val_like(0)
    probs = np.stack([s, s, np.full_like(s, 0.7)], 1)
    labels = np.stack([y, np.zeros_like(y), y], 1)
    cal = Temperature.fit_val(probs, labels, ("C1", "C2", "C3"))
    assert cal.temperature[1] == 1.0 and "no positive" in cal.notes[1]
    assert cal.temperature[2] == T_MAX  # a constant score: the best it can do is move towards 0.5
    with pytest.raises(ValueError, match="positive number"):
        Temperature.from_dict({**cal.to_dict(), "temperature": [1.0, -1.0, 2.0]}, "calibration.json")


# ------------------------------------------------------------------ decision states
def test_states_band_and_unsupported_thresholds():
    probs = np.array([[0.9, 0.9, 0.9], [0.5, 0.9, 0.9], [0.1, 0.9, 0.9], [0.9, 0.9, 0.25]])
    rule = DecisionRule((0.8, 0.8, 0.8), "specificity", 0.95, band=(0.3, 0.3, 0.3), band_policy="sensitivity")
    assert [STATES[k] for k in rule.states(probs)] == ["cvs", "uncertain", "no_cvs", "no_cvs"]
    no_band_c1 = DecisionRule((0.8, 0.8, 0.8), band=(None, 0.3, 0.3))  # C1 can rule nothing out
    assert [STATES[k] for k in no_band_c1.states(probs)] == ["cvs", "uncertain", "uncertain", "no_cvs"]
    cannot = DecisionRule((None, 0.8, 0.8), band=(0.3, 0.3, 0.3), reason="val cannot support it")
    assert not cannot.can_declare and not cannot.passing(probs).any()
    assert [STATES[k] for k in DecisionRule((0.8, 0.8, 0.8)).states(probs)] == ["cvs", "no_cvs", "no_cvs", "no_cvs"]
    back = DecisionRule.from_dict(rule.to_dict())
    assert back == rule and "uncertain from 0.3/0.3/0.3" in rule.describe(("C1", "C2", "C3"))
    assert math.isnan(no_band_c1.lower_edges()[0])
