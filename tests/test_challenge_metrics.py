"""The SAGES challenge metrics against scikit-learn (the official util/metrics.py calls sklearn), and the
robustness stand-in's definition."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, average_precision_score, brier_score_loss, f1_score

from cvsjepa.evaluate.challenge import challenge_metrics, macro_ap, robustness, strata


def case(seed: int, n: int = 60):
    rng = np.random.default_rng(seed)
    votes = rng.integers(0, 2, size=(n, 3, 3))  # [frame, criterion, rater]
    conf = np.repeat(rng.uniform(0.3, 1.0, size=(n // 6, 3)), 6, axis=0)  # per video, 6 frames each
    labels = (votes.sum(2) >= 2).astype(float)
    q = 0.5 + ((votes - 0.5) * conf[:, None, :]).sum(2) / 3
    probs = np.clip(0.6 * labels + 0.4 * rng.random((n, 3)), 0, 1)
    return probs, labels, votes.mean(2), q, conf.mean(1), [f"v{i // 6}" for i in range(n)]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_task_a_and_b_equal_sklearn(seed):
    probs, labels, means, q, vconf, vids = case(seed)
    labels[:, 1] = 0  # a criterion without a positive: sklearn counts its AP as 0, so must task A
    with pytest.warns(UserWarning):
        expected = average_precision_score(labels, probs, average="macro")
    c = challenge_metrics(probs, labels, means, q, vconf, vids, resamples=5)
    assert c["task_a"]["map"] == pytest.approx(expected, abs=1e-6) and c["task_a"]["ap"]["C2"] == 0.0
    for k, name in enumerate(("C1", "C2", "C3")):
        assert c["task_b"]["brier_official"][name] == pytest.approx(brier_score_loss(q[:, k] > 0, probs[:, k]))
        assert c["task_b"]["brier_majority"][name] == pytest.approx(np.mean((probs[:, k] - labels[:, k]) ** 2))
        assert c["task_b"]["official_ece"][name] == pytest.approx(np.mean(np.abs(q[:, k] - probs[:, k])))
    pred = probs > 0.5
    assert c["at_0.5"]["f1_samples"] == pytest.approx(f1_score(labels, pred, average="samples", zero_division=1))
    assert c["at_0.5"]["accuracy"] == pytest.approx(accuracy_score(labels, pred))


def test_robustness_is_the_minimum_over_seeded_resamples():
    probs, labels, means, q, vconf, vids = case(3, n=120)
    a = robustness(probs, labels, means, vconf, vids, seed=7, resamples=20)
    assert a == robustness(probs, labels, means, vconf, vids, seed=7, resamples=20)  # seeded
    mins = {k: v["min_map"] for k, v in a["strata"].items() if v["min_map"] is not None}
    assert a["strata"]["rater_disagreement"]["note"] == "empty or whole split: skipped"  # random votes: all disagree
    assert a["robustness_map"] == min(mins.values()) and a["worst_stratum"] == min(mins, key=mins.get)
    assert a["robustness_map"] <= macro_ap(probs, labels)[0] + 0.1
    perfect = robustness(labels, labels, means, vconf, vids, seed=7, resamples=5)
    assert perfect["robustness_map"] == pytest.approx(1.0)
    s = strata(labels, means, vconf, vids)
    assert s["positive"].tolist() == labels.any(1).tolist()
    per_video = sorted(set(zip(vids, vconf.tolist())))
    below = {v for v, c in per_video if c < np.median([c for _, c in per_video])}
    assert s["low_confidence"].tolist() == [v in below for v in vids]
