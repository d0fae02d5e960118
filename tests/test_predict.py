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
from cvsjepa.evaluate.thresholds import choose_thresholds
from cvsjepa.predict.timeline import Timeline, first_run_start, iter_clips
from cvsjepa.data.video import open_frames
from test_video_decode import coded_frames, encode, truncate

SOURCE_FPS = 25  # Endoscapes frame numbers count 25 fps source frames


@pytest.fixture(scope="module")
def tiny_run(synth_root, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("predict") / "run"
    rc = main(["train", "backbone=tiny", f"data.root={synth_root}", "data.frames=4", "head.num_heads=4",
               "head.mlp_hidden=32", "train.epochs=1", f"out={out}", "--no-progress"])
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
    with open(path, newline="") as f:
        return {float(r["time_s"]): r for r in csv.DictReader(f)}


def max_diff_to_val(run: Path, vid: int, first_frame: int, timeline: dict[float, dict]) -> float:
    """Largest |p_video - p_dataset| over the video's keyframes (keyframe f is at (f - first) / 25 s)."""
    diffs = []
    for r in val_rows(run, vid):
        t = (int(r["frame"]) - first_frame) / SOURCE_FPS
        diffs += [abs(float(r[f"prob_C{c}"]) - float(timeline[t][f"p_C{c}"])) for c in (1, 2, 3)]
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
    timeline = timeline_rows(tmp_path / "tl" / "timeline.csv")
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
    timeline = timeline_rows(tmp_path / "tl" / "timeline.csv")
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
    assert list(rows[0]) == ["time_s", "frame_index", "p_C1", "p_C2", "p_C3", "p_all"]
    assert [float(r["time_s"]) for r in rows] == [0.0, 1.0]  # 8 frames at 6.25 fps: t = 0 and 1 s
    for r in rows:
        prod = float(r["p_C1"]) * float(r["p_C2"]) * float(r["p_C3"])
        assert float(r["p_all"]) == pytest.approx(prod, abs=2e-6)
    meta = json.loads((out / "timeline.json").read_text())
    for key in ["summary", "complete", "errors", "warnings", "cvs_reached_at_s", "thresholds", "video", "model",
                "decode", "timeline", "consecutive_s", "fps"]:
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


def test_thresholds_from_val_predictions_are_cached_in_the_checkpoint(run_copy, tmp_path):
    from cvsjepa import CVSModel

    with open(run_copy / "predictions_val.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    want = choose_thresholds(torch.tensor([[float(r[f"prob_C{c}"]) for c in (1, 2, 3)] for r in rows]),
                             torch.tensor([[float(r[f"label_C{c}"]) for c in (1, 2, 3)] for r in rows]))
    m = CVSModel.from_run(run_copy)
    assert m.thresholds == pytest.approx(want) and "predictions_val.csv" in m.threshold_source
    cached = run_copy / "checkpoints" / "best" / "thresholds.json"
    assert json.loads(cached.read_text())["thresholds"] == pytest.approx(want)
    alone = tmp_path / "model"  # the checkpoint directory by itself is enough
    shutil.copytree(run_copy / "checkpoints" / "best", alone)
    m2 = CVSModel.from_run(alone)
    assert m2.thresholds == pytest.approx(want) and m2.threshold_source.endswith("thresholds.json")


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
