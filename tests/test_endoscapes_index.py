"""The Endoscapes2023 index: sources, labels, clips, splits and every bad input."""

from __future__ import annotations

import json
import logging
import math
import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from fixtures_endoscapes import (Video, build_dataset, default_videos, edit_json, make_placeholder,  # noqa: E402
                                 write_csv, write_vids_txt)

from cvsjepa.data.endoscapes import (Sample, causal_clip, label_prevalence, load_split, load_splits,  # noqa: E402
                                     read_vids_txt)
from cvsjepa.errors import DataError  # noqa: E402

SPLITS = ["train", "val", "test"]
T = 1 / 3


def load_all(root, **kw):
    kw.setdefault("frames", 4)
    kw.setdefault("stride", 1)
    return load_splits(root, SPLITS, **kw)


@pytest.fixture
def root(tmp_path):
    return build_dataset(tmp_path / "endoscapes")


def strip(samples) -> list[tuple]:
    """Everything of a sample but its root folder."""
    return [(s.sample_id, s.split, s.rater_mean, s.label, s.clip_frames, [p.name for p in s.clip_paths])
            for s in samples]


def by_id(index) -> dict[str, Sample]:
    return {s.sample_id: s for s in index.samples}


# ---- what a good dataset gives -----------------------------------------------------------------

def test_counts_per_split_and_order(root):
    idx = load_all(root)
    assert {k: len(v.samples) for k, v in idx.items()} == {"train": 5, "val": 1, "test": 2}
    train = idx["train"]
    assert [s.sample_id for s in train.samples] == ["1_50", "1_175", "1_275", "2_125", "2_200"]
    assert train.video_frames[1] == [25 * i for i in range(12)]
    assert train.video_frames[2] == [25 * i for i in range(1, 9)]
    assert idx["test"].video_frames == {4: [0, 25, 75, 100, 150, 175]}
    assert all(s.split == "train" for s in train.samples) and train.skipped == []


def test_labels_are_rounded_means_and_soft_targets_are_the_means(root):
    s = by_id(load_split(root, "train", frames=4, stride=1))
    assert s["1_50"].rater_mean == (2 * T, T, 0.0)  # snapped to exact thirds
    assert s["1_50"].label == (1, 0, 0)
    assert s["1_175"].label == (1, 1, 1) and s["1_275"].label == (0, 0, 0)
    assert s["1_50"].target("hard") == (1.0, 0.0, 0.0)
    assert s["1_50"].target("soft") == (2 * T, T, 0.0)
    with pytest.raises(ValueError):
        s["1_50"].target("fuzzy")
    assert label_prevalence(s.values()) == [4 / 5, 2 / 5, 2 / 5]
    assert all(math.isnan(x) for x in label_prevalence([]))


def test_near_thirds_are_snapped(root):
    path = root / "train" / "annotation_ds_coco.json"
    edit_json(path, lambda d: d["images"][0].update(ds=[0.6667, 0.3333, 0.0004]))
    s = load_split(root, "train", frames=4, stride=1).samples[0]
    assert s.rater_mean == (2 * T, T, 0.0) and s.label == (1, 0, 0)


def test_float_ids_everywhere_give_the_same_index(root, tmp_path):
    floats = build_dataset(tmp_path / "floats", as_float=True)
    assert "1.0" in (floats / "train_vids.txt").read_text()
    for source in ("coco", "csv"):
        a, b = load_all(root, source=source), load_all(floats, source=source)
        for split in SPLITS:
            assert [s.sample_id for s in a[split].samples] == [s.sample_id for s in b[split].samples]
            assert a[split].video_frames == b[split].video_frames


def test_read_vids_txt(tmp_path):
    p = tmp_path / "train_vids.txt"
    p.write_text("1\n2.0\n\n 3 \n")
    assert read_vids_txt(p) == [1, 2, 3]
    for bad in ("1\n2.5\n", "1\nabc\n"):
        p.write_text(bad)
        with pytest.raises(DataError, match=r"train_vids.txt line 2"):
            read_vids_txt(p)


def test_forward_filled_non_keyframes_are_not_keyframes(root):
    # coco_vid holds every 1 fps frame with a forward-filled ds: none of them may become a keyframe.
    vid = json.loads((root / "train" / "annotation_coco_vid.json").read_text())["images"]
    assert len(vid) == 20 and sum(i["is_ds_keyframe"] for i in vid) == 5
    assert len(load_split(root, "train", frames=4, stride=1).samples) == 5


def test_is_ds_keyframe_absent_in_ds_coco_means_keyframe(root):
    edit_json(root / "train" / "annotation_ds_coco.json",
              lambda d: [img.pop("is_ds_keyframe") for img in d["images"]])
    assert len(load_split(root, "train", frames=4, stride=1).samples) == 5


def test_keyframes_from_coco_vid_alone_use_only_the_explicit_flag(tmp_path, root):
    only_vid = build_dataset(tmp_path / "vid_only", ds_coco=False, csv_file=False)
    a, b = load_all(root), load_all(only_vid)
    for split in SPLITS:
        assert strip(a[split].samples) == strip(b[split].samples)
    # without the flag a coco_vid entry is never taken as a keyframe
    edit_json(only_vid / "val" / "annotation_coco_vid.json",
              lambda d: [img.pop("is_ds_keyframe") for img in d["images"]])
    assert load_split(only_vid, "val", frames=4, stride=1).samples == []


def test_csv_only_dataset_gives_the_same_index_as_coco(tmp_path):
    coco = load_all(build_dataset(tmp_path / "c", csv_file=False))
    csv_only = load_all(build_dataset(tmp_path / "s", coco=False))
    for split in SPLITS:
        assert strip(coco[split].samples) == strip(csv_only[split].samples)
        assert coco[split].video_frames == csv_only[split].video_frames


def test_csv_uses_c_columns_when_votes_are_absent(tmp_path):
    root = build_dataset(tmp_path / "e", coco=False)
    cols = ["vid", "frame", "C1", "C2", "C3", "is_ds_keyframe"]
    write_csv(root, default_videos(), columns=cols)
    assert by_id(load_split(root, "train", frames=4, stride=1))["1_50"].rater_mean == (2 * T, T, 0.0)


def test_frame_list_falls_back_to_jpegs(tmp_path, root):
    bare = build_dataset(tmp_path / "bare", coco_vid=False, csv_file=False)
    a, b = load_all(root), load_all(bare)
    for split in SPLITS:
        assert a[split].video_frames == b[split].video_frames
        assert [s.clip_frames for s in a[split].samples] == [s.clip_frames for s in b[split].samples]


def test_clip_paths_and_limit(root):
    idx = load_split(root, "train", frames=4, stride=1, limit=2)
    assert [s.sample_id for s in idx.samples] == ["1_50", "1_175"]
    s = idx.samples[0]
    assert s.clip_frames == (0, 0, 25, 50)
    assert s.clip_paths == tuple(root / "train" / f"1_{f}.jpg" for f in (0, 0, 25, 50))


# ---- causal clips --------------------------------------------------------------------------

def test_causal_clip_pads_with_the_first_frame_at_the_start():
    frames = [25 * i for i in range(10)]
    assert causal_clip(frames, 50, 4, 1) == [0, 0, 25, 50]
    assert causal_clip(frames, 0, 3, 1) == [0, 0, 0]
    assert causal_clip(frames, 225, 4, 1) == [150, 175, 200, 225]


def test_causal_clip_with_stride_2():
    frames = [25 * i for i in range(10)]
    assert causal_clip(frames, 225, 4, 2) == [75, 125, 175, 225]
    assert causal_clip(frames, 100, 4, 2) == [0, 0, 50, 100]  # positions -2, 0, 2, 4


def test_causal_clip_follows_positions_not_a_frame_step():
    frames = [10, 35, 100, 101, 250, 400]  # the list need not start at 0 nor step by 25
    assert causal_clip(frames, 250, 3, 1) == [100, 101, 250]
    assert causal_clip(frames, 101, 6, 1) == [10, 10, 10, 35, 100, 101]
    assert causal_clip(frames, 400, 2, 3) == [100, 400]  # positions 2, 5
    with pytest.raises(ValueError):
        causal_clip(frames, 36, 2, 1)


# ---- bad input: each a DataError naming the file -------------------------------------------

def test_missing_root_split_and_labels(tmp_path, root):
    with pytest.raises(DataError, match="nowhere.*expected the Endoscapes2023 layout"):
        load_split(tmp_path / "nowhere", "train", frames=4, stride=1)
    with pytest.raises(DataError, match=r"split folder 'nope'.*expected"):
        load_split(root, "nope", frames=4, stride=1)
    for f in ("annotation_ds_coco.json", "annotation_coco_vid.json"):
        (root / "train" / f).unlink()
    (root / "all_metadata.csv").unlink()
    with pytest.raises(DataError, match=r"annotation_ds_coco.json.*all_metadata.csv"):
        load_split(root, "train", frames=4, stride=1)


def test_explicit_source_must_exist(tmp_path):
    coco_only = build_dataset(tmp_path / "c", csv_file=False)
    with pytest.raises(DataError, match="all_metadata.csv"):
        load_split(coco_only, "train", frames=4, stride=1, source="csv")
    csv_only = build_dataset(tmp_path / "s", coco=False)
    with pytest.raises(DataError, match="annotation_ds_coco.json"):
        load_split(csv_only, "train", frames=4, stride=1, source="coco")


def test_truncated_json(root):
    path = root / "train" / "annotation_ds_coco.json"
    path.write_text(path.read_text()[:300])
    with pytest.raises(DataError, match=r"annotation_ds_coco.json is not valid JSON.*truncated"):
        load_split(root, "train", frames=4, stride=1)


def test_json_without_images(root):
    (root / "val" / "annotation_coco_vid.json").write_text('{"annotations": []}')
    with pytest.raises(DataError, match=r"annotation_coco_vid.json has no 'images'"):
        load_split(root, "val", frames=4, stride=1)


def test_csv_missing_columns(tmp_path):
    root = build_dataset(tmp_path / "e", coco=False)
    write_csv(root, default_videos(), columns=["vid", "frame", "avg_cvs"])
    with pytest.raises(DataError, match=r"all_metadata.csv lacks column\(s\).*cvs_annotator_1..3 or C1"):
        load_split(root, "train", frames=4, stride=1)


def test_csv_without_vids_txt(tmp_path):
    root = build_dataset(tmp_path / "e", coco=False, vids_txt=False)
    with pytest.raises(DataError, match=r"all_metadata.csv has no split column.*train_vids.txt"):
        load_split(root, "train", frames=4, stride=1)


def test_bad_rater_mean_names_file_image_and_value(root):
    edit_json(root / "train" / "annotation_ds_coco.json", lambda d: d["images"][1].update(ds=[0.5, 0, 0]))
    with pytest.raises(DataError, match=r"annotation_ds_coco.json image 1 \(1_175.jpg\).*0.5.*C1"):
        load_split(root, "train", frames=4, stride=1)


def test_bad_votes_in_csv(tmp_path):
    root = build_dataset(tmp_path / "e", coco=False)
    p = root / "all_metadata.csv"
    p.write_text(p.read_text().replace('"[1, 0, 0]"', '"[2, 0, 0]"', 1))
    with pytest.raises(DataError, match=r"all_metadata.csv line \d+: cvs_annotator_1 '\[2, 0, 0\]'"):
        load_split(root, "train", frames=4, stride=1)


def test_non_integral_ids(root):
    edit_json(root / "val" / "annotation_ds_coco.json", lambda d: d["images"][0].update(video_id=3.5))
    with pytest.raises(DataError, match=r"annotation_ds_coco.json image 0.*video_id 3.5"):
        load_split(root, "val", frames=4, stride=1)
    edit_json(root / "val" / "annotation_ds_coco.json", lambda d: d["images"][0].update(video_id=4))
    with pytest.raises(DataError, match="disagrees with file_name"):
        load_split(root, "val", frames=4, stride=1)


def test_missing_clip_frame(root):
    (root / "train" / "1_25.jpg").unlink()
    with pytest.raises(DataError, match=r"1_25.jpg does not exist"):
        load_split(root, "train", frames=4, stride=1)
    assert len(load_split(root, "train", frames=4, stride=1, check_frames=False).samples) == 5


def test_video_in_two_splits(root):
    vids = default_videos()
    moved = Video(3, "train", vids[2].frames, vids[2].keyframes)  # video 3 also in train's COCO files
    from fixtures_endoscapes import write_coco, write_frames
    write_frames(root, [moved])
    write_coco(root, [v for v in vids if v.split == "train"] + [moved])
    (root / "train_vids.txt").write_text("1\n2\n3\n")
    with pytest.raises(DataError, match=r"video 3 appears in split 'train'.*and in split 'val'"):
        load_all(root)


def test_keyframe_video_not_in_vids_txt(root):
    (root / "train_vids.txt").write_text("1\n")
    with pytest.raises(DataError, match=r"train_vids.txt does not list video\(s\) \[2\]"):
        load_split(root, "train", frames=4, stride=1)


# ---- skip mode -------------------------------------------------------------------------------

def test_skip_mode_records_and_logs_skips(root, caplog):
    edit_json(root / "train" / "annotation_ds_coco.json", lambda d: d["images"][0].update(ds=[0.5, 0, 0]))
    (root / "train" / "2_200.jpg").unlink()
    with caplog.at_level(logging.WARNING, logger="cvsjepa"):
        idx = load_split(root, "train", frames=4, stride=1, on_bad_sample="skip")
    assert [s.sample_id for s in idx.samples] == ["1_175", "1_275", "2_125"]
    assert len(idx.skipped) == 2
    what, why = idx.skipped[0]
    assert "1_50" in what and "0.5" in why and "annotation_ds_coco.json" in why
    assert "2_200.jpg" in idx.skipped[1][1]
    assert "skipped 2 bad entries" in caplog.text


def test_limit_counts_good_samples_in_skip_mode(root):
    (root / "train" / "1_50.jpg").unlink()
    idx = load_split(root, "train", frames=4, stride=1, on_bad_sample="skip", limit=2)
    assert [s.sample_id for s in idx.samples] == ["1_175", "1_275"] and len(idx.skipped) == 1


# ---- symbolic links and their placeholders ---------------------------------------------------

def test_real_symlinks_work(root):
    os.symlink(root / "train", root / "train_link", target_is_directory=True)  # a linked folder
    files = root / "val_files"  # a real folder of linked files, like the seg folders
    files.mkdir()
    for f in (root / "val").iterdir():
        os.symlink(os.path.relpath(f, files), files / f.name)
    a = load_split(root, "train_link", frames=4, stride=1)
    assert [s.sample_id for s in a.samples] == [s.sample_id for s in load_split(root, "train", frames=4,
                                                                                stride=1).samples]
    assert len(load_split(root, "val_files", frames=4, stride=1).samples) == 1


def test_broken_symlink_frame(root):
    (root / "train" / "1_25.jpg").unlink()
    os.symlink("../elsewhere/1_25.jpg", root / "train" / "1_25.jpg")
    with pytest.raises(DataError, match=r"1_25.jpg is a symbolic link to ../elsewhere/1_25.jpg"):
        load_split(root, "train", frames=4, stride=1)


@pytest.mark.parametrize("rel,target", [
    ("val", "../val"),  # a split folder that arrived as a file
    ("val/annotation_ds_coco.json", "../val/annotation_ds_coco.json"),
    ("val/3_100.jpg", "../train/3_100.jpg"),
])
def test_link_placeholders_are_detected(root, rel, target):
    make_placeholder(root / rel, target)
    with pytest.raises(DataError, match=rf"{Path(rel).name} looks like a symbolic link that arrived as a plain "
                                        "file; re-extract the archive on a file system that keeps links"):
        load_split(root, "val", frames=4, stride=1)


def test_one_line_vids_txt_is_not_a_placeholder(root):
    write_vids_txt(root, default_videos())
    (root / "val_vids.txt").write_text("3.0")
    assert len(load_split(root, "val", frames=4, stride=1).samples) == 1
