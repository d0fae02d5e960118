"""Semantic masks painted from COCO instance masks, for a dataset with no semseg/ PNGs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from cvsjepa.cli import main
from cvsjepa.data.endoscapes import load_split
from cvsjepa.data.masks import IGNORE, CocoMasks, read_semseg
from cvsjepa.data.seg_dataset import SegClipDataset
from cvsjepa.errors import DataError

H, W = 12, 16


def _rle(m: np.ndarray) -> dict:
    enc = mask_utils.encode(np.asfortranarray(m.astype(np.uint8)))
    return {"size": list(enc["size"]), "counts": enc["counts"].decode()}


def _uncompressed_counts(m: np.ndarray) -> list[int]:
    """COCO's list form: run lengths over the column-major pixels, starting with a run of zeros."""
    flat = m.T.ravel().astype(np.int8)
    edges = np.flatnonzero(np.diff(flat)) + 1
    runs = np.diff(np.r_[0, edges, flat.size]).tolist()
    return ([0] if flat[0] else []) + runs


def _write(root: Path, anns: list[dict], *, images: list[dict] | None = None, hw=(H, W)) -> Path:
    """A {root}/train_seg/annotation_coco.json with one image 3_125.jpg (and that frame)."""
    folder = root / "train_seg"
    folder.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.zeros((*hw, 3), np.uint8)).save(folder / "3_125.jpg")
    images = images or [{"file_name": "3_125.jpg", "id": 3_000_125, "video_id": 3.0, "height": H, "width": W}]
    for i, a in enumerate(anns):
        a.setdefault("id", i + 1)
        a.setdefault("image_id", 3_000_125)
        a.setdefault("iscrowd", 0)
    path = folder / "annotation_coco.json"
    path.write_text(json.dumps({"images": images, "annotations": anns, "categories": []}))
    return path


def test_synthetic_coco_masks_match_the_semseg_pngs(synth_root):
    """synth writes both; outside the PNG's 255 border band they must agree pixel for pixel."""
    coco = CocoMasks.find(synth_root)
    pngs = sorted((synth_root / "semseg").glob("*.png"))
    assert len(coco) == len(pngs) > 0
    for png in pngs:
        vid, frame = (int(x) for x in png.stem.split("_"))
        assert coco.has(vid, frame)
        painted, truth = coco.semantic(vid, frame, expected_hw=(480, 854)), read_semseg(png)
        known = truth != IGNORE
        assert np.array_equal(painted[known], truth[known]), png.name
        assert (painted != IGNORE).all()  # every instance has a mask: nothing unknown


def test_dataset_falls_back_to_coco_and_aligns_like_the_pngs(synth_root, tmp_path):
    index = load_split(synth_root, "train", frames=2, stride=1)
    common = dict(crop=64, classes=[0, 1, 2, 3, 4], coco=CocoMasks.find(synth_root))
    from_png = SegClipDataset(index.samples, mask_dir=synth_root / "semseg", masks="semseg", **common)
    # no semseg folder at all: "auto" reads the instance masks of *_seg/annotation_coco.json
    from_coco = SegClipDataset(index.samples, mask_dir=tmp_path / "no_semseg", masks="auto", **common)
    masked = [i for i, s in enumerate(index.samples) if from_png.mask_source(s) == "semseg"]
    assert masked and all(from_coco.mask_source(index.samples[i]) == "coco" for i in masked)
    unmasked = [i for i in range(len(index.samples)) if i not in masked][:3]
    for i in masked:
        a, b = from_png[i], from_coco[i]
        assert b["has_mask"] and b["mask"].shape == (64, 64)
        known = a["mask"] != IGNORE
        agree = (a["mask"][known] == b["mask"][known]).float().mean().item()
        assert agree == 1.0, index.samples[i].sample_id
    for i in unmasked:
        item = from_coco[i]
        assert not item["has_mask"] and (item["mask"] == IGNORE).all()
    # "semseg" never looks at COCO
    only_png = SegClipDataset(index.samples, mask_dir=tmp_path / "no_semseg", masks="semseg", **common)
    assert only_png.mask_source(index.samples[masked[0]]) is None


def test_rle_forms_overlap_and_unknown_regions(tmp_path):
    gallbladder = np.zeros((H, W), bool)
    gallbladder[2:10, 2:14] = True
    artery = np.zeros((H, W), bool)
    artery[5:7, 0:16] = True  # thin, crosses the gallbladder: must stay on top
    counts = _uncompressed_counts(gallbladder)
    assert sum(counts) == H * W
    _write(tmp_path, [
        {"category_id": 5, "segmentation": {"size": [H, W], "counts": counts}},  # uncompressed RLE
        {"category_id": 3, "segmentation": _rle(artery)},  # compressed RLE
        {"category_id": 6, "segmentation": [[12.0, 0.0, 15.0, 0.0, 15.0, 1.0, 12.0, 1.0]]},  # polygon
        {"category_id": 4, "bbox": [0, 10, 3, 2]},  # a box without a mask: unknown, not background
    ])
    m = CocoMasks.find(tmp_path).semantic(3, 125, expected_hw=(H, W))
    assert (m[5:7, :] == 3).all()
    assert (m[2:5, 2:14] == 5).all() and (m[7:10, 2:14] == 5).all()
    assert m[0, 13] == 6
    assert (m[10:12, 0:2] == IGNORE).all()
    assert m[0, 0] == 0 and m[11, 15] == 0


def test_frames_with_boxes_only_have_no_mask_and_empty_frames_are_background(tmp_path):
    images = [{"file_name": "3_125.jpg", "id": 1, "video_id": 3, "height": H, "width": W},
              {"file_name": "3_250.jpg", "id": 2, "video_id": 3, "height": H, "width": W}]
    _write(tmp_path, [{"image_id": 1, "category_id": 2, "bbox": [1, 1, 4, 4]}], images=images)
    coco = CocoMasks.find(tmp_path)
    assert not coco.has(3, 125)
    assert coco.has(3, 250) and (coco.semantic(3, 250) == 0).all()


@pytest.mark.parametrize("ann, image_hw, needle", [
    ({"category_id": 3, "segmentation": {"size": [H + 1, W], "counts": "abc"}}, None, "RLE size"),
    ({"category_id": 3, "segmentation": {"size": [H, W], "counts": "\x7f\x7f~~"}}, None, "cannot be decoded"),
    ({"category_id": 3, "segmentation": {"size": [H, W], "counts": [5, 3]}}, None, "sum to 8"),
    ({"category_id": 9, "segmentation": {"size": [H, W], "counts": [H * W]}}, None, "category_id 9"),
    ({"category_id": 3, "segmentation": {"size": [H, W], "counts": [H * W]}}, (H, W + 2), "but its frame is"),
    ({"category_id": 3}, None, "neither a segmentation nor a bbox"),
])
def test_bad_instance_masks_name_the_file(tmp_path, ann, image_hw, needle):
    fine = {"category_id": 5, "segmentation": {"size": [H, W], "counts": [H * W]}}
    path = _write(tmp_path, [fine, ann])
    with pytest.raises(DataError) as err:
        CocoMasks.find(tmp_path).semantic(3, 125, expected_hw=image_hw)
    assert str(path) in str(err.value) and needle in str(err.value)


def test_check_data_reports_a_corrupt_instance_mask(synth_root, tmp_path, capsys):
    import shutil

    root = tmp_path / "copy"
    shutil.copytree(synth_root, root, symlinks=True)
    shutil.rmtree(root / "semseg")
    path = root / "val_seg" / "annotation_coco.json"
    data = json.loads(path.read_text())
    data["annotations"][0]["segmentation"]["counts"] = "\x7f\x7f~~"
    path.write_text(json.dumps(data))
    assert main(["check-data", str(root), "--no-progress"]) != 0
    err = capsys.readouterr()
    assert "cannot be decoded" in err.out + err.err and str(path) in err.out + err.err


def test_compressed_rle_validator_reads_what_pycocotools_writes():
    from cvsjepa.data.masks import _compressed_counts

    rng = np.random.default_rng(0)
    for t in range(200):
        h, w = (int(x) for x in rng.integers(1, 50, 2))
        m = rng.random((h, w)) < rng.random()
        if t % 3 == 0:  # long runs: multi-group numbers and negative deltas
            m = np.zeros((h, w), bool)
            m[rng.integers(0, h):, rng.integers(0, w):] = True
        runs = _compressed_counts(_rle(m)["counts"], "test")
        assert np.array_equal(np.repeat(np.arange(len(runs)) % 2, runs), m.T.ravel().astype(int))
