"""`cvsjepa evaluate`: metrics against hand values and sklearn, thresholds from val only, bootstrap
over videos, TTA, ensembles, the files written and the CLI's user errors."""

from __future__ import annotations

import csv
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.metrics import f1_score as sk_f1
from torchmetrics.functional.classification import binary_calibration_error

from cvsjepa.cli import main
from cvsjepa.data.loaders import build_splits
from cvsjepa.data.frames import read_frame
from cvsjepa.data.transforms import preprocess_frames
from cvsjepa.errors import ConfigError
from cvsjepa.evaluate.bootstrap import bootstrap_ci, bootstrap_indices, percentile_ci
from cvsjepa.evaluate.calibration import brier_score, expected_calibration_error, reliability_bins
from cvsjepa.evaluate.inference import predict_loader
from cvsjepa.evaluate.runner import EvalOptions, evaluate_run
from cvsjepa.reopen import Reopen, load_run
from cvsjepa.evaluate.scores import f1_score, full_cvs, point_metrics
from cvsjepa.evaluate.thresholds import choose_thresholds
from cvsjepa.evaluate.tta import (TTASettings, crop_and_normalise, predict_tta, resize_frame, shifted_clip_paths,
                                  view_window)
from tiny_runs import train_tiny_run


@pytest.fixture(scope="module")
def run_dir(synth_root, tmp_path_factory) -> Path:
    """One small trained run for the module (tiny random backbone, 2-frame clips, 2 epochs)."""
    return train_tiny_run(synth_root, tmp_path_factory.mktemp("eval") / "run", frames=2)


@pytest.fixture(scope="module")
def evaluated(run_dir):
    """`cvsjepa evaluate RUN` (test split, 200 resamples) through the CLI; returns the JSON."""
    assert main(["evaluate", str(run_dir), "--bootstrap", "200", "--per-video", "--no-progress"]) == 0
    return json.loads((run_dir / "eval_test.json").read_text())


# ------------------------------------------------------------------ calibration, F1, full CVS
def test_brier_and_ece_hand_values():
    p = torch.tensor([0.15, 0.15, 0.85, 0.85, 0.55])
    y = torch.tensor([0, 1, 1, 1, 0])
    assert brier_score(p, y) == pytest.approx((0.0225 + 0.7225 + 0.0225 + 0.0225 + 0.3025) / 5)
    # 10 bins: {0.15, 0.15} -> |0.5 - 0.15| * 2/5; {0.55} -> |0 - 0.55| * 1/5; {0.85, 0.85} -> |1 - 0.85| * 2/5
    assert expected_calibration_error(p, y, n_bins=10) == pytest.approx(0.35 * 0.4 + 0.55 * 0.2 + 0.15 * 0.4)
    b = reliability_bins(p, y, n_bins=10)
    assert b.count == [0, 2, 0, 0, 0, 1, 0, 0, 2, 0] and b.frac_pos[1] == 0.5 and math.isnan(b.mean_prob[0])
    assert expected_calibration_error(torch.tensor([1.0, 0.0]), torch.tensor([1, 0])) == 0.0  # p == 1: last bin


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ece_matches_torchmetrics(seed):
    g = torch.Generator().manual_seed(seed)
    p = torch.rand(500, generator=g) * 0.999
    y = (torch.rand(500, generator=g) < p ** 2).long()
    ref = float(binary_calibration_error(p, y, n_bins=15, norm="l1"))
    assert expected_calibration_error(p, y, 15) == pytest.approx(ref, abs=1e-6)


def test_f1_and_full_cvs_against_hand_and_sklearn():
    rng = np.random.default_rng(0)
    pred, label = rng.random(200) < 0.3, rng.random(200) < 0.4
    assert f1_score(torch.tensor(pred), torch.tensor(label)) == pytest.approx(sk_f1(label, pred))
    assert math.isnan(f1_score(torch.zeros(4), torch.zeros(4)))  # no positive anywhere: undefined
    probs = torch.tensor([[0.9, 0.8, 0.5], [0.2, 0.9, 0.9]])
    score, full = full_cvs(probs, torch.tensor([[1, 1, 1], [0, 1, 1]]))
    torch.testing.assert_close(score, torch.tensor([0.36, 0.162]))
    assert full.tolist() == [1.0, 0.0]


def test_point_metrics_thresholds_apply_as_given():
    probs = torch.tensor([[0.2, 0.6, 0.3], [0.4, 0.1, 0.8], [0.7, 0.7, 0.9], [0.1, 0.2, 0.2]])
    labels = torch.tensor([[0, 1, 0], [1, 0, 1], [1, 1, 1], [0, 0, 0]])
    m = point_metrics(probs, labels, [0.3, 0.5, 0.5])
    assert m["balanced_accuracy_C1"] == 1.0 and m["f1_C1"] == 1.0
    m = point_metrics(probs, labels, [0.5, 0.5, 0.5])  # C1 sample 2 (p=0.4) now missed
    assert m["balanced_accuracy_C1"] == pytest.approx(0.75) and m["f1_C1"] == pytest.approx(2 / 3)
    assert m["full_cvs_ap"] == 1.0 and m["full_cvs_balanced_accuracy"] == 1.0


# ------------------------------------------------------------------ bootstrap over videos
def test_every_resample_is_a_union_of_whole_videos():
    vids = [3] * 5 + [7] * 2 + [9] * 4 + [11] * 1
    size = {v: vids.count(v) for v in set(vids)}
    draws = list(bootstrap_indices(vids, 200, seed=1))
    assert len(draws) == 200
    for rows in draws:
        got = [vids[i] for i in rows]
        per_video = {v: got.count(v) for v in set(got)}
        for v, k in per_video.items():
            assert k % size[v] == 0  # a video comes whole (k copies of all its rows)
            rows_of_v = sorted(i for i in rows if vids[i] == v)
            assert sorted(set(rows_of_v)) == [i for i, x in enumerate(vids) if x == v]
        assert sum(k // size[v] for v, k in per_video.items()) == 4  # 4 videos drawn per resample
    again = list(bootstrap_indices(vids, 200, seed=1))
    assert all((a == b).all() for a, b in zip(draws, again))  # seeded


def test_ci_shrinks_with_more_videos():
    rng = np.random.default_rng(0)

    def case(n_videos):
        vids = np.repeat(np.arange(n_videos), 10)
        y = (rng.random(vids.size) < 0.3).astype(float)
        p = np.clip(0.3 * y + 0.7 * rng.random(vids.size), 0, 1)
        stat = lambda rows: {"brier": float(((p[rows] - y[rows]) ** 2).mean())}
        lo, hi = bootstrap_ci(stat, vids.tolist(), 300, seed=0, progress=False)["brier"]["ci"]
        return hi - lo

    assert case(40) < 0.6 * case(5)


def test_percentile_ci_ignores_undefined():
    assert percentile_ci([1.0, 2.0, float("nan"), 3.0], level=0.5) == (1.5, 2.5)
    assert all(math.isnan(x) for x in percentile_ci([float("nan")]))


# ------------------------------------------------------------------ TTA
def test_center_view_is_exactly_the_shared_preprocessing(synth_root):
    path = next((synth_root / "val").glob("*.jpg"))
    frame = read_frame(path)
    h, w, _ = frame.shape
    new_h, new_w, top, left = view_window(h, w, 64, (0, 0), 0.5)
    ours = crop_and_normalise(resize_frame(path, 64), top, left, 64)
    assert torch.equal(ours, preprocess_frames(frame.unsqueeze(0), 64)[0])
    _, _, top_r, left_r = view_window(h, w, 64, (0, 1), 1.0)  # right view: the full margin
    assert top_r == top and left_r == new_w - 64


def test_tta_with_identical_views_equals_no_tta(run_dir):
    from cvsjepa.data.dataset import ClipDataset
    from cvsjepa.data.endoscapes import SplitIndex
    from torch.utils.data import DataLoader

    model, cfg, _ = load_run(run_dir, device=torch.device("cpu"))
    full = build_splits(cfg, 64, roles=("val",))["val"].index
    index = SplitIndex(full.split, full.samples[::3], full.video_frames)  # every 3rd clip keeps the test short
    cpu = torch.device("cpu")
    plain = predict_loader(model, DataLoader(ClipDataset(index.samples, crop=64), batch_size=8), cpu, progress=False)
    same = TTASettings(views=3, offsets=(0, 0), shift=0.0)  # 6 views, all the plain clip
    tta = predict_tta(model, index, 64, cfg.data.stride, same, cpu, batch_size=12, progress=False)
    assert tta.sample_ids == plain.sample_ids
    torch.testing.assert_close(tta.probs, plain.probs, atol=1e-6, rtol=0)
    shifted = TTASettings(views=2, offsets=(4,), shift=1.0)
    other = predict_tta(model, index, 64, cfg.data.stride, shifted, cpu, batch_size=12, progress=False)
    assert not torch.allclose(other.probs, plain.probs, atol=1e-6)  # real views do change the input


def test_temporal_offset_moves_the_clip_end_back(synth_root):
    from cvsjepa.data.endoscapes import load_split

    index = load_split(synth_root, "val", frames=4, stride=1)
    s = index.samples[10]
    frames = index.video_frames[s.video_id]
    p = frames.index(s.frame)
    known = {(x.video_id, f): q for x in index.samples for f, q in zip(x.clip_frames, x.clip_paths)}
    assert shifted_clip_paths(s, index, 0, 1, known) == s.clip_paths
    paths = shifted_clip_paths(s, index, 3, 1, known)
    end = max(p - 3, 0)
    expected = [frames[max(end - (3 - i), 0)] for i in range(4)]  # causal, 4 frames, stride 1, padded
    assert [q.name for q in paths] == [f"{s.video_id}_{f}.jpg" for f in expected]
    assert all(q.is_file() for q in paths)


# ------------------------------------------------------------------ the command
def test_evaluate_writes_the_files_and_json(run_dir, evaluated):
    for name in ["eval_test.json", "thresholds.json", "calibration.json", "predictions_test.csv", "predictions_val.csv",
                 "pr_curves_test.png", "reliability_test.png"]:
        assert (run_dir / name).is_file(), name
    e = evaluated
    assert e["split"] == "test" and e["n_videos"] == 2 and e["n_samples"] > 0
    m = e["metrics"]
    for key in ["map", "ap_C1", "full_cvs_ap", "balanced_accuracy_mean", "f1_mean", "brier_mean", "ece_mean",
                "per_video_map"]:
        assert key in m, key
    assert e["bootstrap"]["unit"] == "video" and e["bootstrap"]["resamples"] == 200
    lo, hi = e["ci95"]["brier_mean"]
    assert 0 <= lo <= hi <= 1
    assert e["full_cvs"]["score"].startswith("product") and e["ece"]["bins"] == 15
    assert e["thresholds"]["chosen_on"] == "val" and e["tta"]["n_views"] == 1 and e["ensemble"] is None
    assert len(e["per_video"]["videos"]) == 2
    curve = e["figures"]["pr_curves"]["C1"]
    assert len(curve["precision"]) == len(curve["recall"]) > 1
    assert sum(e["figures"]["reliability"]["C1"]["count"]) == e["n_samples"]
    # same CSV format as train's predictions, and thresholds = choose_thresholds(val predictions)
    rows = list(csv.DictReader(open(run_dir / "predictions_val.csv")))
    assert list(rows[0]) == ["sample_id", "video_id", "frame", "label_C1", "label_C2", "label_C3", "rater_mean_C1",
                             "rater_mean_C2", "rater_mean_C3", "prob_C1", "prob_C2", "prob_C3"]
    probs = torch.tensor([[float(r[f"prob_C{i}"]) for i in (1, 2, 3)] for r in rows])
    labels = torch.tensor([[float(r[f"label_C{i}"]) for i in (1, 2, 3)] for r in rows])
    saved = json.loads((run_dir / "thresholds.json").read_text())
    np.testing.assert_allclose(saved["thresholds"], choose_thresholds(probs, labels), atol=1e-5)
    assert saved["thresholds"] == e["thresholds"]["values"]
    # version 2: calibration and every policy, for each criterion and full CVS
    assert saved["format_version"] == 2 and saved["default_policy"] == "specificity"
    assert saved["calibration"]["temperature"] == json.loads((run_dir / "calibration.json").read_text())["temperature"]
    for policy in ("balanced", "specificity", "precision", "sensitivity"):
        block = saved["policies"][policy]
        assert set(block["criteria"]) == {"C1", "C2", "C3"} and "full_cvs" in block
        for entry in block["criteria"].values():
            assert (entry["threshold"] is None) == (entry["reason"] is not None)


def test_eval_json_reports_calibration_operating_points_and_time_to_cvs(run_dir, evaluated):
    e = evaluated
    cal = e["calibration"]
    assert cal["method"]["fitted_on"] == "val" and len(cal["method"]["temperature"]) == 3
    for key in ("brier_C1", "ece_C1", "brier_mean", "ece_mean"):
        assert key in cal["before"] and key in cal["after"]
    assert cal["before"]["brier_mean"] == pytest.approx(e["metrics"]["brier_mean"])  # before = the raw metrics
    assert all(a <= b + 1e-9 for a, b in zip(cal["method"]["val_nll_after"], cal["method"]["val_nll_before"]))
    ops = e["operating_points"]
    assert ops["chosen_on"] == "val" and ops["ci"]["resamples"] == 200
    for policy, block in ops["policies"].items():
        for name, row in [*block["criteria"].items(), ("full_cvs", block["full_cvs"]), ("decision", block["decision"])]:
            if row.get("threshold") is None and name != "decision" or "sensitivity" not in row:
                assert row["reason"], (policy, name)  # unsupported: says why instead of a number
                continue
            for k in ("sensitivity", "specificity", "ppv", "npv"):
                assert k in row and k in row["ci95"], (policy, name, k)
            assert row["tp"] + row["fp"] + row["tn"] + row["fn"] == e["n_samples"]
    balanced = ops["policies"]["balanced"]["criteria"]
    assert [balanced[n]["threshold_raw"] for n in ("C1", "C2", "C3")] == e["thresholds"]["values"]
    t = e["time_to_cvs"]
    assert t["method"] == "seconds" and t["rule"]["policy"] == "specificity" and t["consecutive_s"] == 3
    assert len(t["videos"]) == e["n_videos"] and t["summary"]["n_videos"] == e["n_videos"]
    # every 1 fps second was scored: the synthetic test videos are 30-45 s long
    assert all(30 <= v["n_seconds"] <= 46 for v in t["videos"])
    for key in ("false_early_call_rate", "missed_rate", "median_latency_s"):
        assert key in t["summary"] and key in t["ci95"]


def test_time_to_cvs_scores_every_second_as_predict_does(run_dir, synth_root, tmp_path):
    """evaluate's every-second clips give predict's probabilities for the same video, and the same rule
    on them declares at the same second."""
    from cvsjepa import CVSModel
    from cvsjepa.evaluate.decision import DecisionRule
    from cvsjepa.evaluate.decision_report import time_to_cvs_rows
    from cvsjepa.evaluate.runner import SECONDS, predict_members
    from cvsjepa.predict.timeline import Timeline

    frames: dict = {}
    preds, _ = predict_members([run_dir], ("test",), TTASettings(), Reopen(progress=False), torch.device("cpu"),
                               seconds_of="test", video_frames=frames)
    sec, kf = preds[SECONDS], preds["test"]
    rule = DecisionRule(tuple(float(x) for x in sec.probs.median(dim=0).values))  # passes now and then
    rows = {r["video_id"]: r for r in time_to_cvs_rows(kf, sec, frames["test"], rule, None, 2)}
    model = CVSModel.from_run(run_dir)
    declared = 0
    for vid, row in rows.items():
        folder = tmp_path / f"v{vid}"
        folder.mkdir()
        for f in frames["test"][vid]:
            (folder / f"{vid}_{f}.jpg").symlink_to(synth_root / "test" / f"{vid}_{f}.jpg")
        tl = model.predict_video(folder)
        raw = tl.raw_probs if tl.raw_probs is not None else tl.probs
        mine = sec.probs[[i for i, v in enumerate(sec.video_ids) if v == vid]].double().numpy()
        assert raw.shape == mine.shape and np.abs(raw - mine).max() < 1e-5
        same = Timeline(tl.times, tl.frame_indices, raw, None, tl.fps, consecutive_s=2, rule=rule)
        assert same.cvs_reached_at == row["declared_at_s"] and len(tl) == row["n_seconds"]
        declared += row["declared_at_s"] is not None
    assert declared  # something was declared: the comparison has teeth


def _flip_test_labels(src: Path, dst: Path) -> None:
    """A copy of the dataset (JPEGs as symlinks) whose test labels are all inverted."""
    shutil.copytree(src, dst, copy_function=lambda a, b: Path(b).symlink_to(Path(a).resolve())
                    if a.endswith(".jpg") else shutil.copy2(a, b), symlinks=True)
    for name in ("annotation_ds_coco.json", "annotation_coco_vid.json"):
        path = dst / "test" / name
        if path.is_file():
            d = json.loads(path.read_text())
            for img in d["images"]:
                if "ds" in img:
                    img["ds"] = [1.0 - x for x in img["ds"]]
            path.unlink()
            path.write_text(json.dumps(d))


def test_thresholds_never_see_test_labels(run_dir, synth_root, tmp_path, evaluated):
    flipped = tmp_path / "flipped"
    _flip_test_labels(synth_root, flipped)
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    res = evaluate_run(copy, EvalOptions("test", bootstrap=0), Reopen(data_root=str(flipped), progress=False))
    # the test labels really changed (so a leak would move the thresholds) ...
    test_csv = list(csv.DictReader(open(res.files["predictions_test"])))  # other data: its own, tagged file
    orig_csv = list(csv.DictReader(open(run_dir / "predictions_test.csv")))
    assert all(int(a["label_C1"]) == 1 - int(b["label_C1"]) for a, b in zip(test_csv, orig_csv))
    probs = torch.tensor([[float(r[f"prob_C{i}"]) for i in (1, 2, 3)] for r in orig_csv])
    lab = torch.tensor([[float(r[f"label_C{i}"]) for i in (1, 2, 3)] for r in orig_csv])
    assert choose_thresholds(probs, lab) != choose_thresholds(probs, 1 - lab)  # the control is sensitive
    # ... but the thresholds, the operating points and the calibration, chosen on val, did not
    assert res.report["thresholds"]["values"] == evaluated["thresholds"]["values"]
    assert res.report["metrics"]["ap_C1"] != evaluated["metrics"]["ap_C1"]
    thr = lambda r: {(p, n): v["threshold"] for p, b in r["operating_points"]["policies"].items()  # noqa: E731
                     for n, v in [*b["criteria"].items(), ("full_cvs", b["full_cvs"])]}
    assert thr(res.report) == thr(evaluated)
    assert res.report["calibration"]["method"]["temperature"] == evaluated["calibration"]["method"]["temperature"]
    assert res.report["time_to_cvs"]["rule"] == evaluated["time_to_cvs"]["rule"]


def test_ensemble_of_identical_members_equals_single_and_mismatch_is_refused(run_dir, tmp_path, evaluated):
    twin = tmp_path / "twin"
    shutil.copytree(run_dir, twin)
    res = evaluate_run(run_dir, EvalOptions("val", ensemble=(twin,), bootstrap=0), Reopen(progress=False))
    assert res.files["json"].name == "eval_val_ens2.json"
    single = list(csv.DictReader(open(run_dir / "predictions_val.csv")))
    both = list(csv.DictReader(open(run_dir / "predictions_val_ens2.csv")))
    assert [r["sample_id"] for r in both] == [r["sample_id"] for r in single]
    assert all(abs(float(a["prob_C2"]) - float(b["prob_C2"])) < 1e-5 for a, b in zip(both, single))
    assert res.report["ensemble"]["runs"] == [str(run_dir), str(twin)]
    meta_path = twin / "checkpoints" / "best" / "config.json"
    meta = json.loads(meta_path.read_text())
    meta["config"]["data"]["limit_per_split"] = 5  # indexes other keyframes
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(ConfigError, match="different keyframes"):
        evaluate_run(run_dir, EvalOptions("test", ensemble=(twin,), bootstrap=0), Reopen(progress=False))


def test_tta_outputs_get_their_own_names(run_dir):
    assert main(["evaluate", str(run_dir), "--split", "val", "--tta", "1,2", "--tta-step", "3", "--bootstrap", "0",
                 "--no-progress"]) == 0
    e = json.loads((run_dir / "eval_val_tta1x2.json").read_text())
    assert e["tta"]["temporal_offsets_s"] == [0, 3] and e["tta"]["n_views"] == 2
    assert "val itself" in e["thresholds"]["note"]
    assert (run_dir / "thresholds_tta1x2.json").is_file() and (run_dir / "reliability_val_tta1x2.png").is_file()
    assert json.loads((run_dir / "thresholds.json").read_text())["tta"]["n_views"] == 1  # plain file untouched


@pytest.mark.parametrize("make,needle", [
    (lambda p: None, "does not exist"),
    (lambda p: (p.mkdir(), (p / "config.yaml").write_text("name: x\n")), "no best checkpoint"),
])
def test_cli_errors_are_one_line(tmp_path, capsys, make, needle):
    run = tmp_path / "run"
    make(run)
    rc = main(["evaluate", str(run), "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and needle in err and err.count("\n") == 0 and "Traceback" not in err


@pytest.mark.parametrize("args,needle", [(["--tta", "3"], "S,T"), (["--tta", "12,1"], "between 1 and 9"),
                                         (["--bootstrap", "-1"], "bootstrap"),
                                         (["--target", "balanced=0.9"], "take a target"),
                                         (["--target", "specificity=1.5"], "strictly between 0 and 1"),
                                         (["--target", "specificity"], "POLICY=VALUE"),
                                         (["--consecutive", "0"], "--consecutive")])
def test_cli_bad_options_are_one_line(run_dir, capsys, args, needle):
    rc = main(["evaluate", str(run_dir), *args, "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and needle in err and err.count("\n") == 0
