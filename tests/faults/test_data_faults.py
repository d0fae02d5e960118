"""Data that is subtly wrong: a split list naming a video that is not there, a frame of another size in
a clip, a split without a positive for a criterion, and how that last one is reported.

Issue 15, items 7 (split lists and frame sizes), 8 (check-data on a criterion without positives) and
16 (warnings as one logged line naming the split and criterion)."""

from __future__ import annotations

import json
import logging
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cvsjepa.criteria import CRITERIA
from cvsjepa.data.dataset import ClipDataset
from cvsjepa.data.endoscapes import load_split
from cvsjepa.errors import DataError
from faults.cli_helpers import run_cli

GHOST = 999  # a video id no annotation, CSV row or frame knows


def _list_a_ghost_video(root: Path, split: str = "val") -> None:
    path = root / f"{split}_vids.txt"
    path.write_text(path.read_text() + f"{float(GHOST)}\n")


# ------------------------------------------------------------------ item 7: a split list naming a missing video
@pytest.mark.parametrize("source", ["coco", "csv"])
def test_a_split_list_naming_a_missing_video_is_an_error(data_copy, source, caplog):
    _list_a_ghost_video(data_copy)
    with pytest.raises(DataError, match=rf"val_vids\.txt.*\b{GHOST}\b"):
        load_split(data_copy, "val", frames=4, stride=1, source=source)
    with caplog.at_level(logging.WARNING, logger="cvsjepa"):  # asked to skip: a logged, counted skip
        index = load_split(data_copy, "val", frames=4, stride=1, source=source, on_bad_sample="skip")
    assert len(index.skipped) == 1 and str(GHOST) in index.skipped[0][0] + index.skipped[0][1]
    assert "skipped 1" in caplog.text and GHOST not in index.video_frames


def test_check_data_reports_a_split_list_naming_a_missing_video(data_copy, capsys):
    _list_a_ghost_video(data_copy)
    rc, out, _ = run_cli(capsys, "check-data", data_copy, "--frames", "4", "--no-decode", "--no-progress")
    assert rc == 1 and "val_vids.txt" in out and str(GHOST) in out


# ------------------------------------------------------------------ item 7: a frame of another size
def _shrink_a_clip_frame(root: Path) -> tuple[Path, str]:
    """Replace the oldest frame of the first train keyframe's 4-frame clip with a 10x7 JPEG."""
    index = load_split(root, "train", frames=4, stride=2)
    sample = next(s for s in index.samples if len(set(s.clip_paths)) == 4)
    Image.fromarray(np.zeros((7, 10, 3), np.uint8)).save(sample.clip_paths[0])
    return sample.clip_paths[0], sample.sample_id


def test_a_frame_of_another_size_inside_a_clip_is_an_error(data_copy, caplog):
    small, sid = _shrink_a_clip_frame(data_copy)
    samples = load_split(data_copy, "train", frames=4, stride=2).samples
    i = next(k for k, s in enumerate(samples) if s.sample_id == sid)
    with pytest.raises(DataError, match=rf"{small.name}.*10x7.*854x480"):
        ClipDataset(samples, crop=64)[i]
    with caplog.at_level(logging.WARNING, logger="cvsjepa"):
        assert ClipDataset(samples, crop=64, on_bad_sample="skip")[i] is None
    assert small.name in caplog.text


def test_check_data_reports_a_frame_of_another_size(data_copy, capsys):
    small, _ = _shrink_a_clip_frame(data_copy)
    rc, out, _ = run_cli(capsys, "check-data", data_copy, "--frames", "4", "--stride", "2", "--splits", "train",
                         "--no-progress")
    assert rc == 1 and small.name in out and "10x7" in out


# ------------------------------------------------------------------ item 8: a criterion without positives
def _no_positive(root: Path, split: str, criterion: int) -> None:
    """Every keyframe of ``split`` negative for ``criterion`` (in both label sources)."""
    ann = root / split / "annotation_ds_coco.json"
    coco = json.loads(ann.read_text())
    for img in coco["images"]:
        img["ds"][criterion] = 0.0
    ann.write_text(json.dumps(coco))


def test_check_data_names_a_split_without_a_positive_for_a_criterion(data_copy, capsys):
    _no_positive(data_copy, "val", 0)
    rc, out, _ = run_cli(capsys, "check-data", data_copy, "--frames", "4", "--no-decode", "--no-progress")
    assert rc == 0  # still usable, but not silently
    lines = [line for line in out.splitlines() if "no positive" in line]
    assert len(lines) == 1 and "val" in lines[0] and CRITERIA[0] in lines[0] and "mAP" in lines[0]
    assert "no problem found: the dataset is usable" not in out


# ------------------------------------------------------------------ item 16: warnings as one logged line
def test_an_undefined_ap_is_one_logged_line_naming_split_and_criterion(run_copy, data_copy, capsys):
    _no_positive(data_copy, "val", 1)
    rc, _, err = run_cli(capsys, "evaluate", run_copy, "--data-root", data_copy, "--split", "val", "--bootstrap",
                         "0", "--no-progress", "--device", "cpu")
    assert rc == 0, err
    lines = [line for line in err.splitlines() if "no positive" in line]
    assert len(lines) == 1, err
    assert f"criterion {CRITERIA[1]}" in lines[0] and "the val split" in lines[0]
    assert "UserWarning" not in err and "warnings.warn" not in err and ".py:" not in err


def test_the_metric_names_the_split_it_was_given():
    from cvsjepa.evaluate.metrics import cvs_average_precision

    labels = np.zeros((6, 3), int)
    labels[:3, 0] = labels[:3, 2] = 1
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        cvs_average_precision(np.random.default_rng(0).random((6, 3)), labels, where="val")
    expected = f"criterion {CRITERIA[1]} has no positive label in the val split"
    assert [str(x.message).split(":")[0] for x in w] == [expected]
