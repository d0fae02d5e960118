"""`cvsjepa predict` and `CVSModel`: a video gives the same probabilities as the JPEG dataset, the
outputs, thresholds, exit codes, and the Python API."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cvsjepa.cli import main
from cvsjepa.data.dataset import ClipDataset
from cvsjepa.data.endoscapes import load_split
from cvsjepa.data.synth import frame_number, write_video_mp4
from cvsjepa.errors import CheckpointError
from cvsjepa.predict.timeline import Timeline, first_run_start, iter_clips
from cvsjepa.data.video import open_frames
from test_video_decode import coded_frames, encode, truncate

SOURCE_FPS = 25  # Endoscapes frame numbers count 25 fps source frames


@pytest.fixture(scope="module")
def tiny_run(synth_root, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("predict") / "run"
    rc = main(["train", "backbone=tiny", f"data.root={synth_root}", "data.frames=4", "head.num_heads=4",
               "head.mlp_hidden=32", "train.epochs=1", "train.min_steps=0", f"out={out}", "--no-progress"])
    assert rc == 0
    return out


@pytest.fixture(scope="module")
def val_video(synth_root) -> tuple[int, list[Path]]:
    """The first val video: its id and its 1 fps JPEGs in order."""
    vid = int(float((synth_root / "val_vids.txt").read_text().split()[0]))
    return vid, sorted((synth_root / "val").glob(f"{vid}_*.jpg"), key=frame_number)


@pytest.fixture(scope="module")
def lossless_mp4(val_video, tmp_path_factory) -> Path:
    """The val video's JPEGs as a 1 fps lossless RGB H.264 mp4: decoding gives the JPEGs' pixels."""
    _, jpegs = val_video
    path = tmp_path_factory.mktemp("videos") / "val_lossless.mp4"
    return encode(path, [np.asarray(Image.open(p).convert("RGB")) for p in jpegs], fps=1)


def val_rows(run: Path, vid: int) -> list[dict]:
    with open(run / "predictions_val.csv", newline="") as f:
        return [r for r in csv.DictReader(f) if int(r["video_id"]) == vid]


def timeline_rows(path: Path) -> dict[float, dict]:
    """timeline.json's rows by time (they hold the raw model outputs next to the calibrated ones)."""
    return {float(r["time_s"]): r for r in json.loads(path.read_text())["timeline"]}


def max_diff_to_val(run: Path, vid: int, first_frame: int, timeline: dict[float, dict]) -> float:
    """Largest |p_video - p_dataset| of the raw model outputs over the video's keyframes (keyframe f is
    at (f - first) / 25 s); predictions_val.csv holds raw probabilities, the timeline calibrated ones too."""
    diffs = []
    for r in val_rows(run, vid):
        t = (int(r["frame"]) - first_frame) / SOURCE_FPS
        diffs += [abs(float(r[f"prob_C{c}"]) - float(timeline[t][f"raw_C{c}"])) for c in (1, 2, 3)]
    assert len(diffs) >= 3 * 5  # several keyframes compared
    return max(diffs)


# ----------------------------------------------------------------------------- agreement with the dataset


@pytest.mark.parametrize("rate", [1, 25])
def test_predict_on_an_mp4_agrees_with_the_jpeg_dataset(tiny_run, val_video, lossless_mp4, tmp_path, capsys, rate):
    """The key check: `predict` on a video of the val JPEGs scores each keyframe as training's val pass did.

    Lossless RGB H.264, at 1 fps and as a 25 fps source (each JPEG 25 times, as the real 25 fps
    videos the 1 fps frames were extracted from): the same pixels, so equal up to the 6 decimals
    both CSVs keep (measured max |diff|: 1e-6).
    """
    vid, jpegs = val_video
    video = lossless_mp4 if rate == 1 else encode(
        tmp_path / "val_25fps.mp4", [a for p in jpegs for a in [np.asarray(Image.open(p).convert("RGB"))] * rate],
        fps=rate)
    rc = main(["predict", str(video), "--run", str(tiny_run), "--out", str(tmp_path / "tl"), "--no-progress"])
    assert rc == 0
    timeline = timeline_rows(tmp_path / "tl" / "timeline.json")
    assert sorted(timeline) == [float(k) for k in range(len(jpegs))]
    assert [int(r["frame_index"]) for r in timeline.values()] == [k * rate for k in range(len(jpegs))]
    assert max_diff_to_val(tiny_run, vid, frame_number(jpegs[0]), timeline) <= 2e-6
    assert "CVS" in capsys.readouterr().out


@pytest.mark.parametrize("rate", [1, pytest.param(25, marks=pytest.mark.slow)])
def test_predict_on_a_lossy_mp4_agrees_within_decode_tolerance(tiny_run, val_video, tmp_path, rate):
    """H.264 crf 18, 4:2:0 (`write_video_mp4`, as a user's export would be); measured max |diff| ~1e-4."""
    vid, jpegs = val_video
    frames = [a for p in jpegs for a in [np.asarray(Image.open(p).convert("RGB"))] * rate]
    video = write_video_mp4(frames, tmp_path / f"val_{rate}fps.mp4", fps=rate)
    rc = main(["predict", str(video), "--run", str(tiny_run), "--out", str(tmp_path / "tl"), "--no-progress",
               "--no-plot"])
    assert rc == 0
    timeline = timeline_rows(tmp_path / "tl" / "timeline.json")
    assert sorted(timeline) == [float(k) for k in range(len(jpegs))]
    assert max_diff_to_val(tiny_run, vid, frame_number(jpegs[0]), timeline) <= 0.02


def test_video_clips_equal_the_dataset_clips(synth_root, val_video, lossless_mp4):
    """Stronger than probabilities (the tiny random model's vary little): the clip tensors are identical."""
    vid, jpegs = val_video
    first = frame_number(jpegs[0])
    for frames, stride in [(4, 1), (4, 3)]:
        samples = [s for s in load_split(synth_root, "val", frames=frames, stride=stride).samples if s.video_id == vid]
        dataset = ClipDataset(samples, crop=64)
        wanted = {(s.frame - first) // SOURCE_FPS: dataset.load_clip(s) for s in samples}
        with open_frames(lossless_mp4, 1.0) as reader:
            got = {m.index: clip for m, clip in iter_clips(reader, 64, frames, stride) if m.index in wanted}
        assert sorted(got) == sorted(wanted)
        for k in wanted:
            assert torch.equal(got[k], wanted[k]), (frames, stride, k)


def test_frame_folder_agrees_with_the_dataset(tiny_run, val_video, tmp_path):
    from cvsjepa import CVSModel

    vid, jpegs = val_video
    folder = tmp_path / "frames"
    folder.mkdir()
    for p in jpegs:
        shutil.copy(p, folder / p.name)
    timeline = CVSModel.from_run(tiny_run).predict_video(folder)
    assert list(timeline.frame_indices) == [frame_number(p) for p in jpegs]
    rows = {float(r["time_s"]): r for r in timeline.rows()}
    assert max_diff_to_val(tiny_run, vid, frame_number(jpegs[0]), rows) <= 2e-6


# ----------------------------------------------------------------------------- CLI outputs and exit codes


def test_cli_writes_csv_json_png(tiny_run, tmp_path, capsys):
    video = encode(tmp_path / "v.mkv", coded_frames(8, 96, 128), fps=25 / 4, codec="libx264")
    rc = main(["predict", str(video), "--run", str(tiny_run), "--out", str(tmp_path / "o"), "--consecutive", "2",
               "--batch-size", "3", "--no-progress"])
    assert rc == 0
    out = tmp_path / "o"
    with open(out / "timeline.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["time_s", "frame_index", "p_C1", "p_C2", "p_C3", "p_all", "state", "policy",
                             "threshold_C1", "threshold_C2", "threshold_C3", "uncertain_from_C1", "uncertain_from_C2",
                             "uncertain_from_C3"]
    assert {r["policy"] for r in rows} == {"specificity"} and {r["state"] for r in rows} <= {"cvs", "uncertain", "no_cvs"}
    assert [float(r["time_s"]) for r in rows] == [0.0, 1.0]  # 8 frames at 6.25 fps: t = 0 and 1 s
    for r in rows:
        prod = float(r["p_C1"]) * float(r["p_C2"]) * float(r["p_C3"])
        assert float(r["p_all"]) == pytest.approx(prod, abs=2e-6)
    meta = json.loads((out / "timeline.json").read_text())
    for key in ["summary", "complete", "errors", "warnings", "cvs_reached_at_s", "thresholds", "video", "model",
                "decode", "timeline", "consecutive_s", "fps", "decision", "calibration", "seconds_per_state"]:
        assert key in meta, key
    assert meta["complete"] and meta["consecutive_s"] == 2 and meta["video"]["codec"] == "h264"
    assert meta["model"]["frames"] == 4 and len(meta["thresholds"]) == 3
    assert (out / "timeline.png").stat().st_size > 1000
    printed = capsys.readouterr().out
    assert meta["summary"] in printed and "timeline.png" in printed


def test_cli_partial_timeline_for_a_truncated_video(tiny_run, tmp_path, capsys):
    video = encode(tmp_path / "full.mkv", coded_frames(40, 96, 128), fps=1, codec="libx264")
    cut = truncate(video, tmp_path / "cut.mkv")
    rc = main(["predict", str(cut), "--run", str(tiny_run), "--out", str(tmp_path / "o"), "--no-progress"])
    assert rc == 4
    meta = json.loads((tmp_path / "o" / "timeline.json").read_text())
    assert not meta["complete"] and "truncated" in meta["errors"][0]
    assert 5 <= len(meta["timeline"]) < 35
    err = capsys.readouterr().err
    assert "truncated" in err and "partial timeline written" in err


@pytest.mark.parametrize("name,content", [("empty.mp4", b""), ("fake.mov", b"\x00" * 4000), ("gone.mp4", None)])
def test_cli_unusable_video_is_one_line_and_exit_2(tiny_run, tmp_path, capsys, name, content):
    path = tmp_path / name
    if content is not None:
        path.write_bytes(content)
    rc = main(["predict", str(path), "--run", str(tiny_run), "--out", str(tmp_path / "o"), "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2 and len(err.strip().splitlines()) == 1 and name in err and "Traceback" not in err
    assert not (tmp_path / "o").exists()


def test_cli_bad_run_directory(tmp_path, capsys):
    video = encode(tmp_path / "v.mp4", coded_frames(2))
    assert main(["predict", str(video), "--run", str(tmp_path / "nope"), "--no-progress"]) == 2
    assert "nope does not exist" in capsys.readouterr().err


# ----------------------------------------------------------------------------- thresholds


@pytest.fixture
def run_copy(tiny_run, tmp_path) -> Path:
    dst = tmp_path / "run"
    shutil.copytree(tiny_run, dst)
    (dst / "checkpoints" / "best" / "thresholds.json").unlink(missing_ok=True)
    (dst / "thresholds.json").unlink(missing_ok=True)
    return dst


def test_operating_points_from_val_predictions_are_cached_in_the_checkpoint(run_copy, tmp_path):
    """No thresholds.json: predict computes what evaluate would from predictions_val.csv (val only):
    the temperature fit and every policy; the default (specificity) and an explicit one."""
    from cvsjepa import CVSModel
    from cvsjepa.evaluate.operating_points import choose
    from cvsjepa.evaluate.temperature import Temperature

    with open(run_copy / "predictions_val.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    raw = np.array([[float(r[f"prob_C{c}"]) for c in (1, 2, 3)] for r in rows])
    labels = np.array([[float(r[f"label_C{c}"]) for c in (1, 2, 3)] for r in rows])
    cal = Temperature.fit_val(raw, labels, ("C1", "C2", "C3"))

    def want(policy):
        ops = [choose(policy, raw[:, c], labels[:, c]) for c in range(3)]
        return [None if o.threshold is None else cal.apply_one(o.threshold, c) for c, o in enumerate(ops)]

    m = CVSModel.from_run(run_copy)
    assert m.rule.policy == "specificity" and "predictions_val.csv" in m.threshold_source
    assert m.calibration.temperature == pytest.approx(cal.temperature)
    assert list(m.thresholds) == want("specificity")  # the session's tiny val: None + a reason (too few negatives)
    assert (m.rule.reason is None) == all(t is not None for t in m.thresholds)
    cached = json.loads((run_copy / "checkpoints" / "best" / "thresholds.json").read_text())
    assert cached["format_version"] == 2 and set(cached["policies"]) == {"balanced", "specificity", "precision",
                                                                          "sensitivity"}
    alone = tmp_path / "model"  # the checkpoint directory by itself is enough, for any policy
    shutil.copytree(run_copy / "checkpoints" / "best", alone)
    m2 = CVSModel.from_run(alone, policy="balanced")
    assert m2.thresholds == pytest.approx(want("balanced")) and m2.threshold_source.endswith("thresholds.json")
    assert all(t is not None for t in m2.thresholds)


@pytest.mark.parametrize("content", [{"thresholds": [0.2, 0.3, 0.4]}, [0.2, 0.3, 0.4],
                                     {"thresholds": {"C1": 0.2, "C2": 0.3, "C3": 0.4}, "metric": "ba"},
                                     {"C1": 0.2, "C2": 0.3, "C3": 0.4}])
def test_run_thresholds_json_wins(run_copy, content):
    from cvsjepa import CVSModel

    (run_copy / "thresholds.json").write_text(json.dumps(content))
    m = CVSModel.from_run(run_copy / "checkpoints" / "best")  # the run dir is found from its checkpoint too
    assert m.thresholds == (0.2, 0.3, 0.4)
    assert json.loads((run_copy / "checkpoints" / "best" / "thresholds.json").read_text())["thresholds"] == \
        [0.2, 0.3, 0.4]


def test_bad_thresholds_and_fallback(run_copy, caplog):
    from cvsjepa import CVSModel

    (run_copy / "thresholds.json").write_text(json.dumps({"thresholds": [0.2, 1.5]}))
    with pytest.raises(CheckpointError, match="3 numbers in"):
        CVSModel.from_run(run_copy)
    (run_copy / "thresholds.json").unlink()
    (run_copy / "predictions_val.csv").unlink()
    with caplog.at_level("WARNING", logger="cvsjepa"):
        assert CVSModel.from_run(run_copy).thresholds == (0.5, 0.5, 0.5)
    assert "0.5" in caplog.text
    assert CVSModel.from_run(run_copy, thresholds=[0.1, 0.2, 0.3]).thresholds == (0.1, 0.2, 0.3)


def _constant_model(m, p: float) -> None:
    """Make a loaded CVSModel output ``p`` for every criterion of every clip (no learned signal)."""
    fc2 = m.model.head.classifier.fc2
    with torch.no_grad():
        fc2.weight.zero_()
        fc2.bias.fill_(float(np.log(p / (1 - p))))


def test_a_constant_model_never_declares_cvs_before_the_first_positive_label(run_copy, synth_root, tmp_path):
    """A model no better than chance (constant probability 0.7, in val and on the test videos): the
    default policy never declares CVS, and says why; balanced accuracy, the old rule, declares at 0 s."""
    from cvsjepa import CVSModel
    from cvsjepa.data.seconds import frame_seconds
    from cvsjepa.evaluate.time_to_cvs import first_full_cvs_time

    csv_path = run_copy / "predictions_val.csv"
    with open(csv_path, newline="") as f:
        rows = list(csv.DictReader(f))
    for r in rows:  # what evaluate would have written for this model
        r.update({f"prob_C{c}": "0.700000" for c in (1, 2, 3)})
    with open(csv_path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    index = load_split(synth_root, "test", frames=4, stride=1)
    default, old_rule = CVSModel.from_run(run_copy), CVSModel.from_run(run_copy, policy="balanced")
    for m in (default, old_rule):
        _constant_model(m, 0.7)
    for vid in sorted({s.video_id for s in index.samples}):
        keys = [s for s in index.samples if s.video_id == vid]
        frames = index.video_frames[vid]
        first = first_full_cvs_time([frame_seconds(frames, s.frame) for s in keys], [s.label for s in keys])
        folder = tmp_path / f"v{vid}"
        folder.mkdir()
        for f in frames:
            (folder / f"{vid}_{f}.jpg").symlink_to(synth_root / "test" / f"{vid}_{f}.jpg")
        tl = default.predict_video(folder)
        assert np.ptp(tl.probs, axis=0).max() < 1e-9  # constant indeed
        assert tl.cvs_reached_at is None and "cannot support the specificity policy" in tl.summary()
        assert "cvs" not in {r["state"] for r in tl.rows()}
        # the control: the balanced-accuracy rule fires on this noise at the very first second
        early = old_rule.predict_video(folder).cvs_reached_at
        assert early == 0.0 and (first is None or early < first)


# ----------------------------------------------------------------------------- Python API


def test_predict_clip_accepts_frames_and_preprocessed_clips(tiny_run, val_video, lossless_mp4):
    from cvsjepa import CVSModel
    from cvsjepa.data.transforms import preprocess_frames

    m = CVSModel.from_run(tiny_run)
    _, jpegs = val_video
    raw = torch.from_numpy(np.stack([np.asarray(Image.open(p).convert("RGB")) for p in jpegs[6:10]]))  # [4, H, W, 3]
    p_raw = m.predict_clip(raw)
    p_pre = m.predict_clip(preprocess_frames(raw, m.crop))
    assert p_raw.shape == (3,) and torch.allclose(p_raw, p_pre)
    batch = m.predict_clip(torch.stack([raw, raw.flip(0)]))
    assert batch.shape == (2, 3) and torch.allclose(batch[0], p_raw, atol=1e-6)
    timeline = m.predict_video(lossless_mp4)  # sample 9's clip is frames 6..9
    assert np.allclose(timeline.probs[9], p_raw.numpy(), atol=1e-6)
    with pytest.raises(ValueError, match=r"\[T, H, W, 3\]"):
        m.predict_clip(raw[0])


def test_short_video_still_gives_a_timeline(tiny_run, tmp_path):
    from cvsjepa import CVSModel

    m = CVSModel.from_run(tiny_run)
    timeline = m.predict_video(encode(tmp_path / "short.mp4", coded_frames(2, 96, 128)), consecutive=1)
    assert len(timeline) == 2 and timeline.complete and timeline.probs.shape == (2, 3)


def test_lazy_export_keeps_import_light():
    import subprocess
    import sys

    code = "import sys, cvsjepa; assert 'torch' not in sys.modules; from cvsjepa import CVSModel; print(CVSModel)"
    assert "CVSModel" in subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout


# ----------------------------------------------------------------------------- timeline logic


def _timeline(probs, thresholds=(0.5, 0.5, 0.5), consecutive=3.0, fps=1.0) -> Timeline:
    probs = np.asarray(probs, float)
    return Timeline(times=np.arange(len(probs)) / fps, frame_indices=np.arange(len(probs)), probs=probs,
                    thresholds=thresholds, fps=fps, consecutive_s=consecutive, video={"path": "x.mp4"})


def test_cvs_reached_needs_k_consecutive_passing_seconds():
    hi, lo, mid = [0.9, 0.9, 0.9], [0.1, 0.9, 0.9], [0.9, 0.9, 0.6]
    t = _timeline([lo, hi, hi, lo, hi, hi, mid, hi, lo], thresholds=(0.5, 0.5, 0.7))
    assert list(t.passing) == [False, True, True, False, True, True, False, True, False]
    assert t.cvs_reached_at is None and "never reached" in t.summary() and "longest run 2 s" in t.summary()
    t.consecutive_s = 2
    assert t.cvs_reached_at == 1.0 and "CVS reached at 00:00:01" in t.summary()
    assert _timeline([hi] * 6, consecutive=2, fps=2).cvs_reached_at == 0.0  # 2 s at 2 fps = 4 samples
    assert _timeline([lo] * 3 + [hi] * 3, consecutive=2, fps=2).cvs_reached_at is None
    assert first_run_start(np.array([True, False, True, True]), 2) == 2
    assert np.allclose(t.p_all, np.prod(t.probs, axis=1))


def test_timeline_round_trips_and_plots(tmp_path):
    t = _timeline(np.random.default_rng(0).uniform(size=(700, 3)), consecutive=1)
    t.errors, t.complete = ["boom"], False
    written = t.save(tmp_path)
    back = Timeline.from_json(written["json"])
    assert np.allclose(back.probs, t.probs, atol=1e-6) and back.errors == ["boom"] and not back.complete
    assert back.cvs_reached_at == t.cvs_reached_at and "INCOMPLETE: boom" in back.summary()
    assert written["png"].stat().st_size > 1000
    empty = _timeline(np.zeros((0, 3)))
    assert empty.cvs_reached_at is None and empty.save(tmp_path / "e")["png"].is_file()
