"""`cvsjepa compare`: the paired bootstrap against a brute-force enumeration of every resample, p ~ 1
for a run against itself, refusal of runs scored on other keyframes, and the JSON it writes."""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score

from cvsjepa.cli import main
from cvsjepa.errors import ConfigError
from cvsjepa.evaluate.bootstrap import video_draws
from cvsjepa.evaluate.compare import Scored, compare, p_value, resampled_ap, row_weights
from cvsjepa.evaluate.metrics import cvs_average_precision
from cvsjepa.evaluate.inference import Predictions
from cvsjepa.rundir import RunDir

NAMES = ("C1", "C2", "C3")


def small_case(seed: int = 0, n_videos: int = 4, per_video: int = 6):
    """Two runs on the same keyframes of a few videos; run B is a noisier version of run A."""
    rng = np.random.default_rng(seed)
    vids = np.repeat(np.arange(10, 10 + n_videos), per_video)
    y = (rng.random((len(vids), 3)) < 0.4).astype(float)
    y[::per_video] = 1  # every video has a positive of every criterion: AP defined on every resample
    a = np.clip(0.5 * y + 0.6 * rng.random(y.shape), 0, 1)
    b = np.clip(0.45 * y + 0.65 * rng.random(y.shape), 0, 1)
    ids = [f"{v}_{i}" for i, v in enumerate(vids)]
    return (Scored("A", ids, vids.tolist(), y, [a]), Scored("B", ids, vids.tolist(), y, [b]))


def brute_map(probs, labels) -> float:
    return float(np.mean([average_precision_score(labels[:, c], probs[:, c]) for c in range(3)]))


def test_paired_bootstrap_agrees_with_brute_force_enumeration():
    a, b = small_case()
    v = len(set(a.video_ids))
    every = np.array(list(itertools.product(range(v), repeat=v)))  # all V^V equally likely resamples
    exact_res = compare([a, b], NAMES, draws=every)["comparisons"][0]
    groups = [np.flatnonzero(np.asarray(a.video_ids) == x) for x in sorted(set(a.video_ids))]
    exact = []
    for draw in every:  # brute force: concatenate the drawn videos' keyframes, sklearn's AP on them
        rows = np.concatenate([groups[g] for g in draw])
        exact.append(brute_map(b.probs[0][rows], b.labels[rows]) - brute_map(a.probs[0][rows], a.labels[rows]))
    exact = np.array(exact)
    p_exact = min(1.0, 2 * min((exact <= 0).mean(), (exact >= 0).mean()))
    assert 0.01 < p_exact < 0.99  # the case is not degenerate: the checks below can fail
    assert exact_res["p_value"] == pytest.approx(p_exact, abs=1e-12)  # the same 256 resamples, same answer
    assert exact_res["ci95"] == pytest.approx(list(np.percentile(exact, [2.5, 97.5])), abs=1e-9)
    res = compare([a, b], NAMES, n_boot=4000, seed=1)["comparisons"][0]  # Monte Carlo converges to it
    assert res["p_value"] == pytest.approx(p_exact, abs=0.03)
    lo, hi = res["ci95"]
    for q, x in ((0.025, lo), (0.975, hi)):  # each bound is a quantile of the exact distribution
        assert (exact < x - 1e-12).mean() <= q + 0.02 and (exact <= x + 1e-12).mean() >= q - 0.02
    assert res["map_difference"] == pytest.approx(brute_map(b.probs[0], b.labels) - brute_map(a.probs[0], a.labels))
    assert p_value(np.array([0.1, 0.2, -0.1, np.nan])) == pytest.approx(2 / 3)


@pytest.mark.parametrize("seed", [0, 1])
def test_resampled_ap_is_the_ap_of_the_concatenated_rows(seed):
    rng = np.random.default_rng(seed)
    s = np.round(rng.random(60), 1)  # many ties
    y = (rng.random(60) < 0.3).astype(float)
    vids = np.repeat(np.arange(6), 10)
    draws = video_draws(6, 20, seed)
    w = row_weights(vids.tolist(), draws)
    fast = resampled_ap(s, y, w)
    for r, d in enumerate(draws):
        rows = np.concatenate([np.flatnonzero(vids == g) for g in d])
        three = lambda x: torch.tensor(np.stack([x[rows]] * 3, 1))  # noqa: E731 (the metric wants [N, C >= 2])
        want = cvs_average_precision(three(s), three(y)).ap[0] if y[rows].sum() else math.nan
        assert (math.isnan(fast[r]) and math.isnan(want)) or fast[r] == pytest.approx(want, abs=1e-6)


def test_a_run_against_itself_gives_p_one_and_order_does_not_matter():
    a, _ = small_case(seed=2)
    perm = np.random.default_rng(0).permutation(len(a.sample_ids))  # same keyframes, rows in another order
    twin = Scored("A2", [a.sample_ids[i] for i in perm], [a.video_ids[i] for i in perm], a.labels[perm],
                  [a.probs[0][perm]])
    res = compare([a, twin], NAMES, n_boot=300)["comparisons"][0]
    assert res["map_difference"] == 0 and res["ci95"] == [0, 0] and res["p_value"] == 1
    assert all(c["p_value"] == 1 for c in res["per_criterion"].values())


def test_runs_scored_on_other_keyframes_are_refused():
    a, b = small_case()
    other = Scored("C", a.sample_ids[:-1] + ["99_0"], a.video_ids, a.labels, b.probs)
    with pytest.raises(ConfigError, match=r"different keyframes.*e\.g\. (99_0|13_23)"):
        compare([a, other], NAMES, n_boot=10)
    relabelled = Scored("D", a.sample_ids, a.video_ids, 1 - a.labels, b.probs)
    with pytest.raises(ConfigError, match="different labels"):
        compare([a, relabelled], NAMES, n_boot=10)


def _fake_run(path: Path, entry: Scored) -> Path:
    """A directory holding only predictions_test.csv, in the format train and evaluate write."""
    path.mkdir()
    n = len(entry.sample_ids)
    preds = Predictions(entry.sample_ids, entry.video_ids, list(range(n)), torch.tensor(entry.labels),
                        torch.tensor(entry.labels), torch.tensor(entry.probs[0]), math.nan)
    RunDir(path).write_predictions("test", preds)
    return path


def test_cli_writes_json_and_refuses_with_one_line(tmp_path, capsys):
    a, b = small_case()
    ra, rb = _fake_run(tmp_path / "a", a), _fake_run(tmp_path / "b", b)
    out = tmp_path / "cmp.json"
    assert main(["compare", str(ra), str(rb), str(ra), "--bootstrap", "200", "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    assert res["reference"] == str(ra) and len(res["comparisons"]) == 2
    first, self_ = res["comparisons"]
    for key in ("map_difference", "ci95", "p_value", "per_criterion"):
        assert key in first
    assert set(first["per_criterion"]) == set(NAMES) and self_["p_value"] == 1
    assert "p_value" in res["bootstrap"] and "min(1, 2" in res["bootstrap"]["p_value"]
    assert str(rb) in capsys.readouterr().out
    short = Scored("short", a.sample_ids[:-6], a.video_ids[:-6], a.labels[:-6], [a.probs[0][:-6]])
    rc_ = _fake_run(tmp_path / "c", short)
    assert main(["compare", str(ra), str(rc_), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert "different keyframes" in err and err.count("\n") == 0
    assert main(["compare", str(ra), str(tmp_path / "a" / "missing")]) == 2
    assert main(["compare", str(ra), str(rb), "--split", "val"]) == 2
    assert "predictions_val.csv does not exist" in capsys.readouterr().err


def test_draws_are_shared_with_the_row_bootstrap():
    from cvsjepa.evaluate.bootstrap import bootstrap_indices

    vids = [1, 1, 2, 3, 3, 3]
    rows = list(bootstrap_indices(vids, 5, seed=3))
    draws = video_draws(3, 5, seed=3)
    groups = [np.array([0, 1]), np.array([2]), np.array([3, 4, 5])]
    assert all((r == np.concatenate([groups[g] for g in d])).all() for r, d in zip(rows, draws))


def test_named_videos_read_back_and_compare(tmp_path):
    """SAGES videos are names, not numbers: the predictions file keeps them and compare groups by them."""
    a, b = small_case()
    named = [f"case_{v:03d}" for v in a.video_ids]
    ra = _fake_run(tmp_path / "a", Scored("A", a.sample_ids, named, a.labels, a.probs))
    rb = _fake_run(tmp_path / "b", Scored("B", b.sample_ids, named, b.labels, b.probs))
    assert RunDir(ra).read_predictions("test")["video_ids"] == named
    assert main(["compare", str(ra), str(rb), "--bootstrap", "100", "--out", str(tmp_path / "c.json")]) == 0
    res = json.loads((tmp_path / "c.json").read_text())
    want = compare([a, b], NAMES, n_boot=100)  # the same videos under numbers: the same draws, the same answer
    assert res["n_videos"] == 4 and res["comparisons"][0]["ci95"] == pytest.approx(want["comparisons"][0]["ci95"])
