import math
import warnings

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score

from cvsjepa.evaluate.metrics import cvs_average_precision, prevalence
from cvsjepa.train.schedule import warmup_cosine


def _sk_ap(scores, labels):
    out = []
    for c in range(labels.shape[1]):
        out.append(average_precision_score(labels[:, c], scores[:, c]) if labels[:, c].any() else math.nan)
    return out


@pytest.mark.parametrize("seed,n,rate", [(0, 50, 0.3), (1, 400, 0.1), (2, 17, 0.5), (3, 1000, 0.05)])
def test_ap_matches_sklearn(seed, n, rate):
    rng = np.random.default_rng(seed)
    labels = (rng.random((n, 3)) < rate).astype(int)
    labels[0] = 1  # at least one positive per criterion
    scores = np.clip(labels * 0.3 + rng.random((n, 3)), 0, None)
    r = cvs_average_precision(torch.tensor(scores), torch.tensor(labels))
    np.testing.assert_allclose(r.ap, _sk_ap(scores, labels), atol=1e-6)
    assert r.map == pytest.approx(np.mean(_sk_ap(scores, labels)), abs=1e-6)


def test_ties_match_sklearn():
    scores = np.array([[0.5, 0.5, 0.1]] * 6 + [[0.9, 0.2, 0.1]] * 4)
    labels = np.array([[1, 0, 1], [0, 1, 0]] * 5)
    r = cvs_average_precision(torch.tensor(scores), torch.tensor(labels))
    np.testing.assert_allclose(r.ap, _sk_ap(scores, labels), atol=1e-6)


def test_criterion_without_positives_is_nan_and_left_out():
    rng = np.random.default_rng(0)
    labels = (rng.random((60, 3)) < 0.3).astype(int)
    labels[:, 1] = 0
    scores = rng.random((60, 3))
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        r = cvs_average_precision(torch.tensor(scores), torch.tensor(labels))
    assert math.isnan(r.ap[1])
    assert any("C2" in str(x.message) for x in w)
    sk = _sk_ap(scores, labels)
    assert r.map == pytest.approx(np.nanmean(sk), abs=1e-6)


def test_soft_rater_means_are_rounded():
    means = torch.tensor([[1 / 3, 2 / 3, 1.0], [2 / 3, 0.0, 1 / 3], [0, 1, 0]])
    scores = torch.rand(3, 3)
    hard = means.round()
    assert cvs_average_precision(scores, means).ap == cvs_average_precision(scores, hard).ap


def test_bad_shapes_and_nan():
    with pytest.raises(ValueError):
        cvs_average_precision(torch.rand(4, 3), torch.ones(4, 2))
    with pytest.raises(ValueError):
        cvs_average_precision(torch.tensor([[float("nan")] * 3]), torch.ones(1, 3))


def test_prevalence_is_constant_score_ap():
    labels = torch.tensor([[1, 0, 1], [0, 0, 1], [0, 1, 1], [0, 0, 0]])
    r = cvs_average_precision(torch.full((4, 3), 0.5), labels)
    assert list(r.ap) == pytest.approx(prevalence(labels))


def test_schedule_shape():
    vals = [warmup_cosine(s, 100, 10, 0.1) for s in range(101)]
    assert vals[0] == pytest.approx(0.1) and vals[9] == pytest.approx(1.0)
    assert all(a >= b - 1e-12 for a, b in zip(vals[10:], vals[11:]))  # monotone decay after warm-up
    assert vals[100] == pytest.approx(0.1)


def test_thresholds_maximise_balanced_accuracy_on_val_only():
    from cvsjepa.evaluate.thresholds import balanced_accuracy, choose_thresholds

    probs = torch.tensor([[0.1], [0.2], [0.35], [0.4], [0.8], [0.9]])
    labels = torch.tensor([[0], [0], [0], [1], [1], [1]])
    (t,) = choose_thresholds(probs, labels)
    assert t == pytest.approx(0.4)  # separates perfectly: balanced accuracy 1
    assert balanced_accuracy(probs[:, 0] >= t, labels[:, 0]) == 1.0
    # an undefined criterion (no positives) falls back to 0.5
    assert choose_thresholds(probs, torch.zeros(6, 1)) == [0.5]
