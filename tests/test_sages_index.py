"""The SAGES CVS Challenge 2024 index on tiny hand-made trees: annotated frames at 30 and 25 fps,
labels against hand computation, layouts and frame-folder conventions, splits, clear errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from cvsjepa.config import load_config
from cvsjepa.data.index import detect_format, load_indices
from cvsjepa.data.sages import FrameVotes, annotated, annotation_step, sages_labels
from cvsjepa.data.sages_layout import find_layout
from cvsjepa.data.splits import draw_videos, plan_splits, read_split_file
from cvsjepa.data.video_frames import VideoCache
from cvsjepa.errors import ConfigError, DataError
from fixtures_sages import BRIGHT, DARK, NONE, add_case, grid_rows, write_labels, write_video


def cfg(root, *extra):
    return load_config(None, [f"data.root={root}", "data.frames=4", *extra])


def rows(*ids):
    return [FrameVotes(i, ((0,) * 3,) * 3, "x") for i in ids]


def test_annotated_frames_every_5_s_at_the_video_rate():
    ids = [0, 25, 30, 125, 150, 250, 300, 375, 450, 2550]
    assert [r.frame_id for r in annotated(rows(*ids), 30)] == [0, 150, 300, 450, 2550]  # % 150, as the official code
    assert [r.frame_id for r in annotated(rows(*ids), 25)] == [0, 125, 250, 375]  # % 125: 5 s at 25 fps
    assert annotation_step(29.97) == 150 and annotation_step(25.0) == 125


def test_a_25_fps_video_indexes_its_annotated_frames_and_decodes_second_k_as_frame_25k(tmp_path):
    votes = (1, 1, 0, 0, 0, 0, 1, 1, 1)
    add_case(tmp_path / "train", "v25", seconds=12, fps=25,
             rows=[(0, NONE), (125, NONE), (150, votes), (250, votes)])  # 150 is off the 25 fps grid
    add_case(tmp_path / "train", "v30", seconds=11, fps=30)
    index = load_indices(cfg(tmp_path, "data.val_split=", "data.test_split="), ["train"])["train"]
    by_id = {s.sample_id: s for s in index.samples}
    assert sorted(by_id) == ["v25_0", "v25_125", "v25_250", "v30_0", "v30_150", "v30_300"]
    s = by_id["v25_250"]
    assert s.clip_frames == (175, 200, 225, 250) and [r.second for r in s.clip_paths] == [7, 8, 9, 10]
    assert by_id["v25_0"].clip_frames == (0, 0, 0, 0)  # padded with the first frame, as Endoscapes
    assert by_id["v30_300"].clip_frames == (210, 240, 270, 300)
    cache = VideoCache(2, transform=lambda x: x)
    got = [int(cache.get(r).float().mean()) for r in s.clip_paths]
    assert all(abs(g - (BRIGHT + k)) <= 2 for g, k in zip(got, [7, 8, 9, 10])), got  # never a dark in-between frame
    assert min(got) > DARK + 50


def test_majority_and_confidence_aware_labels_by_hand(tmp_path):
    # c1: raters 1, 1, 0; c2: 0, 0, 1; c3: 1, 1, 1; confidences 0.9, 0.6, 0.3
    votes = (1, 1, 0, 0, 0, 1, 1, 1, 1)
    mean, label, conf = sages_labels(((1, 1, 0), (0, 0, 1), (1, 1, 1)), (0.9, 0.6, 0.3))
    assert mean == pytest.approx((2 / 3, 1 / 3, 1.0)) and label == (1, 0, 1)
    # 0.5 + (1/3)(0.5*0.9 + 0.5*0.6 - 0.5*0.3) = 0.7; 0.5 + (1/3)(-0.45 - 0.3 + 0.15) = 0.3; 0.5 + 0.9/3 = 0.8
    assert conf == pytest.approx((0.7, 0.3, 0.8))
    add_case(tmp_path / "train", "a", seconds=6, rows=[(0, NONE), (150, votes)], confidence=(0.9, 0.6, 0.3))
    s = load_indices(cfg(tmp_path, "data.val_split=", "data.test_split="), ["train"])["train"].samples[1]
    assert (s.sample_id, s.video_id, s.frame) == ("a_150", "a", 150)
    assert s.label == (1, 0, 1) and s.conf_label == pytest.approx((0.7, 0.3, 0.8))
    assert s.rater_mean == pytest.approx((2 / 3, 1 / 3, 1.0)) and s.rater_confidence == (0.9, 0.6, 0.3)


def test_a_video_shorter_than_its_labels_is_a_clear_error(tmp_path):
    add_case(tmp_path / "train", "ok", seconds=6)
    write_video(tmp_path / "train" / "videos" / "short.mp4", 8)  # 240 frames at 30 fps
    write_labels(tmp_path / "train" / "labels" / "short", grid_rows(11))  # labels up to frame 300
    c = cfg(tmp_path, "data.val_split=", "data.test_split=")
    with pytest.raises(DataError, match=r"short\.mp4 is shorter than its labels.*frame 300.*240 frames"):
        load_indices(c, ["train"])
    skipped = load_indices(cfg(tmp_path, "data.val_split=", "data.test_split=", "data.on_bad_sample=skip"), ["train"])
    assert [s.video_id for s in skipped["train"].samples] == ["ok", "ok"]
    assert "short" in skipped["train"].skipped[0][0]


def test_layouts_flat_with_and_without_lists_and_per_split(tmp_path):
    flat = tmp_path / "flat"
    for name in ("v1", "v2", "v3", "v4", "v5"):
        add_case(flat, name, seconds=6)
    layout = find_layout(flat)
    assert layout.kind == "flat" and layout.official == {"train": ["v1", "v2", "v3", "v4", "v5"]}
    # no lists: val and test are drawn from train, by video
    idx = load_indices(cfg(flat, "data.val_fraction=0.2"), ["train", "val", "test"])
    vids = {k: sorted(v.video_frames) for k, v in idx.items()}
    assert len(vids["val"]) == 1 and len(vids["test"]) == 1 and len(vids["train"]) == 3
    assert sorted(sum(vids.values(), [])) == ["v1", "v2", "v3", "v4", "v5"]
    (flat / "train_vids.txt").write_text("v1\nv2\nv3\n")
    (flat / "test_vids.txt").write_text("v4\n\nv5\n")
    assert find_layout(flat).official == {"train": ["v1", "v2", "v3"], "test": ["v4", "v5"]}
    per_split = tmp_path / "split"
    add_case(per_split / "train", "a", seconds=6)
    add_case(per_split / "train", "b", seconds=6)
    add_case(per_split / "test", "c", seconds=6)
    assert find_layout(per_split).official == {"test": ["c"], "train": ["a", "b"]}
    shutil.copytree(flat / "labels", per_split / "labels")
    with pytest.raises(DataError, match=r"ambiguous.*split/labels \(flat layout\).*split/test/labels"):
        find_layout(per_split)


def test_format_detection(tmp_path, synth_root):
    add_case(tmp_path / "s" / "train", "a", seconds=6)
    assert detect_format(tmp_path / "s") == "sages2024" and detect_format(synth_root) == "endoscapes"
    (tmp_path / "s" / "all_metadata.csv").write_text("vid,frame\n")
    with pytest.raises(DataError, match=r"ambiguous.*all_metadata.csv.*labels.*data.format"):
        detect_format(tmp_path / "s")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"empty is neither dataset layout"):
        detect_format(tmp_path / "empty")
    with pytest.raises(ConfigError, match="data.format"):
        cfg(tmp_path, "data.format=sages")


@pytest.mark.parametrize("convention", ["fe.py", "cvsdata", "flat"])
def test_frame_folder_conventions(tmp_path, convention):
    from PIL import Image

    frames = tmp_path / "train" / "frames"
    for k in range(11):  # 11 s of 1 fps frames, named as each convention names them
        name = {"fe.py": f"a/frame_{k:04d}.jpg", "cvsdata": f"a/{30 * k + 1:05d}.jpg", "flat": f"a_{30 * k}.jpg"}
        path = frames / name[convention]
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (32, 18), (k, k, k)).save(path)
    write_labels(tmp_path / "train" / "labels" / "a", grid_rows(11))
    index = load_indices(cfg(tmp_path, "data.val_split=", "data.test_split="), ["train"])["train"]
    s = index.samples[-1]
    assert s.frame == 300 and s.clip_frames == (210, 240, 270, 300)
    expected = {"fe.py": "frame_0010.jpg", "cvsdata": "00301.jpg", "flat": "a_300.jpg"}[convention]
    assert isinstance(s.clip_paths[-1], Path) and s.clip_paths[-1].name == expected
    with pytest.raises(DataError, match="frame_source=video"):
        load_indices(cfg(tmp_path, "data.val_split=", "data.test_split=", "data.frame_source=video"), ["train"])


def test_split_draws_are_seeded_by_video_and_a_split_file_fixes_them(tmp_path):
    videos = [f"v{i:02d}" for i in range(20)]
    a = draw_videos(videos, 0.15, seed=0, salt=1)
    assert a == draw_videos(videos, 0.15, seed=0, salt=1) and len(a) == 3 and set(a) <= set(videos)
    assert a != draw_videos(videos, 0.15, seed=1, salt=1)
    roles = {"train": "train", "val": "val", "test": "test"}
    plan = plan_splits({"train": videos, "test": ["t1"]}, roles, 0.15, 0, "x")
    assert plan.splits["val"] == a and not set(a) & set(plan.splits["train"]) and plan.splits["test"] == ["t1"]
    with pytest.raises(DataError, match="val_fraction"):
        plan_splits({"train": videos}, {"train": "train", "val": "val"}, 0.0, 0, "x")
    path = tmp_path / "splits.json"
    path.write_text(json.dumps({"splits": {"train": ["a"], "val": ["a"]}}))
    with pytest.raises(DataError, match=r"splits.json: video 'a' is in split 'train' and in split 'val'"):
        read_split_file(path)


def test_a_split_file_is_used_as_written(tmp_path):
    for name in ("a", "b", "c"):
        add_case(tmp_path / "train", name, seconds=6)
    split_file = tmp_path / "my_splits.json"
    split_file.write_text(json.dumps({"splits": {"train": ["a"], "val": ["c"], "test": ["b"]}}))
    idx = load_indices(cfg(tmp_path, f"data.splits_file={split_file}"), ["train", "val", "test"])
    assert {k: list(v.video_frames) for k, v in idx.items()} == {"train": ["a"], "val": ["c"], "test": ["b"]}
    split_file.write_text(json.dumps({"splits": {"train": ["a", "zz"]}}))
    with pytest.raises(DataError, match=r"names video\(s\) \['zz'\]"):
        load_indices(cfg(tmp_path, f"data.splits_file={split_file}"), ["train"])


@pytest.mark.parametrize("edit, message", [
    (lambda d: (d / "frame.csv").write_text("frame_id,c1_rater1\n0,1\n"), r"frame.csv lacks column\(s\) c1_rater2"),
    (lambda d: (d / "frame.csv").write_text((d / "frame.csv").read_text().replace("\n150,0", "\n150,2")),
     r"frame.csv line 3: c1_rater1 is '2'; labels must be 0 or 1"),
    (lambda d: (d / "video.csv").write_text("confidence_rater1,confidence_rater2,confidence_rater3\nhigh,1,1\n"),
     r"video.csv line 2: confidence_rater1 'high' is not a number"),
    (lambda d: (d / "video.csv").unlink(), r"video.csv does not exist"),
])
def test_bad_label_files_name_the_file(tmp_path, edit, message):
    add_case(tmp_path / "train", "a", seconds=6)
    edit(tmp_path / "train" / "labels" / "a")
    with pytest.raises(DataError, match=message):
        load_indices(cfg(tmp_path, "data.val_split=", "data.test_split="), ["train"])


def test_check_data_reports_each_broken_video(tmp_path, capsys):
    from cvsjepa.cli import main

    add_case(tmp_path / "train", "good", seconds=6)
    add_case(tmp_path / "train", "bad_vote", seconds=6, rows=[(0, (1, 1, 1, 0, 0, 0, 0, 0, 3))])
    write_video(tmp_path / "test" / "videos" / "short.mp4", 4)
    write_labels(tmp_path / "test" / "labels" / "short", grid_rows(11))
    add_case(tmp_path / "test", "no_video", seconds=6)
    (tmp_path / "test" / "videos" / "no_video.mp4").unlink()
    assert main(["check-data", str(tmp_path), "--no-progress"]) == 1
    out = capsys.readouterr().out
    assert "bad_vote/frame.csv line 2: c3_rater3 is '3'" in out
    assert "short.mp4: decodes to 120 frames but" in out and "labels frame 300" in out
    assert "no_video has labels" in out and "2 videos decoded to the end" in out
    shutil.rmtree(tmp_path / "test")
    shutil.rmtree(tmp_path / "train" / "labels" / "bad_vote")
    assert main(["check-data", str(tmp_path), "--no-progress"]) == 0
