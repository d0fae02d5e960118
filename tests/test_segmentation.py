"""Multi-task CVS + segmentation: masks aligned with the clip, the masked loss, mIoU, the run."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from cvsjepa.cli import main
from cvsjepa.config import load_config
from cvsjepa.data.masks import (CocoMasks, dataset_label_map, read_label_map, read_semseg, seg_class_ids,
                                seg_class_names)
from cvsjepa.data.seg_dataset import preprocess_mask, remap_classes
from cvsjepa.data.transforms import crop_box, preprocess_frames
from cvsjepa.errors import DataError
from cvsjepa.evaluate.segmentation import ConfusionMatrix, constant_prediction_miou, seg_report
from cvsjepa.heads.segmentation import SEG_DECODERS, FineSegDecoder, SegDecoder, masked_seg_loss


def test_mask_follows_the_frame_geometry():
    # a frame whose left half is white and a mask whose left half is class 2: after the same resize
    # and center crop, white pixels and class-2 pixels coincide
    h, w, crop = 480, 854, 64
    frame = np.zeros((h, w, 3), np.uint8)
    mask = np.zeros((h, w), np.uint8)
    frame[:, : w // 2] = 255
    mask[:, : w // 2] = 2
    mask[:10] = 255  # an ignore band at the top is cropped away or kept as 255, never turned into a class
    x = preprocess_frames(torch.from_numpy(frame)[None], crop)[0]
    m = preprocess_mask(mask, crop)
    assert m.shape == (crop, crop) and m.dtype == torch.long
    white = x[0] > 0  # normalised white > 0, black < 0
    labelled = m != 255
    agree = ((m == 2) == white)[labelled].float().mean()
    assert agree > 0.97  # only the boundary column may differ (bilinear vs nearest)
    assert set(m.unique().tolist()) <= {0, 2, 255}
    new_h, new_w, top, left, _, _ = crop_box(h, w, crop)
    assert (new_h, top) == (73, 4)


def test_remap_keeps_ignore_and_folds_unlisted_classes():
    raw = torch.tensor([0, 1, 2, 3, 4, 5, 6, 255])
    assert remap_classes(raw, [0, 1, 2, 3, 4]).tolist() == [0, 1, 2, 3, 4, 0, 0, 255]
    assert remap_classes(raw, [0, 5, 6]).tolist() == [0, 0, 0, 0, 0, 1, 2, 255]


def test_samples_without_masks_do_not_touch_the_loss():
    torch.manual_seed(0)
    logits = torch.randn(4, 5, 8, 8, requires_grad=True)
    mask = torch.randint(0, 5, (4, 8, 8))
    has = torch.tensor([True, False, True, False])
    loss = masked_seg_loss(logits, mask, has)
    loss.backward()
    assert logits.grad[~has].abs().sum() == 0 and logits.grad[has].abs().sum() > 0
    only = torch.nn.functional.cross_entropy(logits[has], mask[has], ignore_index=255)
    assert loss.item() == pytest.approx(only.item())
    # nobody has a mask: zero, not a loss against an all-background mask
    none = masked_seg_loss(logits, mask, torch.zeros(4, dtype=torch.bool))
    assert none.item() == 0.0


def test_mis_sized_or_bad_masks_are_refused(tmp_path):
    Image.fromarray(np.zeros((240, 427, 3), np.uint8)).save(tmp_path / "small.png")
    with pytest.raises(DataError, match="small.png.*expected 854x480"):
        read_semseg(tmp_path / "small.png")
    bad = np.zeros((480, 854, 3), np.uint8)
    bad[0, 0] = 9
    Image.fromarray(bad).save(tmp_path / "values.png")
    with pytest.raises(DataError, match="values.png.*9"):
        read_semseg(tmp_path / "values.png")
    diff = np.zeros((480, 854, 3), np.uint8)
    diff[0, 0, 1] = 1
    Image.fromarray(diff).save(tmp_path / "channels.png")
    with pytest.raises(DataError, match="channels"):
        read_semseg(tmp_path / "channels.png")


def test_label_map_formats(tmp_path):
    p = tmp_path / "seg_label_map.txt"
    p.write_text("background: 0\ncystic_plate 1\n2 calot_triangle\n# comment\n")
    assert read_label_map(p) == {"background": 0, "cystic_plate": 1, "calot_triangle": 2}


def test_iou_and_constant_floor():
    cm = ConfusionMatrix(3)
    target = torch.tensor([[0, 0, 1, 2], [0, 0, 1, 255]])
    cm.update(target.clamp(max=2), target)  # perfect where labelled
    assert cm.iou() == [1.0, 1.0, 1.0] and cm.pixels == 7
    assert constant_prediction_miou(cm) == pytest.approx((4 / 7) / 3)


def test_decoder_uses_the_keyframe_tokens():
    dec = SegDecoder(embed_dim=8, num_classes=3, grid=(2, 2, 2), out_size=16, dim=16)
    tokens = torch.randn(1, 8, 8)
    out = dec(tokens)
    assert out.shape == (1, 3, 16, 16)
    changed = tokens.clone()
    changed[:, :4] += 10  # the first time step: not the keyframe
    assert torch.equal(dec(changed), out)


def test_multitask_run_reports_miou(synth_root, tmp_path):
    out = tmp_path / "run"
    assert main(["train", "configs/exp8_multitask.yaml", "backbone=tiny", f"data.root={synth_root}", f"out={out}",
                 "data.frames=4", "head.num_heads=4", "head.mlp_hidden=32", "train.batch_size=8", "train.epochs=1",
                 "train.min_steps=0",
                 "seg.decoder_dim=32", "--no-progress"]) == 0
    header = (out / "metrics.csv").read_text().splitlines()[0].split(",")
    assert "val_miou" in header and "val_iou_cystic_plate" in header and "val_map" in header
    summary = json.loads((out / "summary.json").read_text())
    assert summary["val_seg"]["pixels"] > 0 and "seg_head" in summary["trainable_breakdown"]
    from cvsjepa.checkpoint import load_classifier

    model, _, _ = load_classifier(out / "checkpoints" / "best")  # reloads with its decoder
    assert model.seg_head is not None


def test_diagnose_seg_writes_the_grid(synth_root, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "configs/exp8_multitask.yaml", "backbone=tiny", f"data.root={synth_root}", f"out={out}",
                 "data.frames=4", "head.num_heads=4", "head.mlp_hidden=32", "train.batch_size=8", "train.epochs=1",
                 "train.min_steps=0",
                 "seg.decoder_dim=32", "adapt.mode=frozen", "--no-progress"]) == 0
    assert main(["diagnose", str(out), "seg", "--samples", "2"]) == 0
    pngs = list((out / "diagnose").glob("segmentation_check_*.png"))
    assert len(pngs) == 1 and pngs[0].stat().st_size > 10_000
    report = (out / "diagnose" / "report.md").read_text()
    assert "Segmentation check" in report and "pixel accuracy" in report
    # a run without a decoder gets one clear line
    plain = tmp_path / "plain"
    assert main(["train", "backbone=tiny", f"data.root={synth_root}", f"out={plain}", "data.frames=4",
                 "head.num_heads=4", "train.epochs=1", "train.min_steps=0", "--no-progress"]) == 0
    capsys.readouterr()
    assert main(["diagnose", str(plain), "seg"]) == 2
    assert "segmentation decoder" in capsys.readouterr().err


def test_the_label_map_is_honoured_when_its_ids_differ_from_the_defaults(tmp_path):
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent))
    from fixtures_endoscapes import build_dataset

    from cvsjepa.data.endoscapes import load_split
    from cvsjepa.data.seg_dataset import SegClipDataset

    root = build_dataset(tmp_path / "endoscapes")
    (root / "seg_label_map.txt").write_text("background 0\nCystic Plate: 7\ncalot_triangle = 3\ncystic_duct 1\n"
                                            "cystic_artery 2\ngallbladder 4\ntool 5\n")
    label_map = dataset_label_map(root)
    assert label_map["cystic_plate"] == 7 and label_map["cystic_duct"] == 1
    by_name = load_config(None, ["seg.classes=[background, cystic_plate, cystic_duct]"])
    by_default_id = load_config(None, ["seg.classes=[0, 1, 4]"])  # ids of the Endoscapes map = the same names
    assert seg_class_names(by_name) == seg_class_names(by_default_id) == ["background", "cystic_plate", "cystic_duct"]
    assert seg_class_ids(by_name, label_map) == seg_class_ids(by_default_id, label_map) == [0, 7, 1]
    sample = load_split(root, "train", frames=2, stride=1).samples[0]
    mask = np.zeros((24, 32, 3), np.uint8)
    mask[:, :8], mask[:, 8:16], mask[:, 16:24] = 7, 1, 3  # plate, duct, calot triangle (not kept)
    (root / "semseg").mkdir()
    Image.fromarray(mask).save(root / "semseg" / f"{sample.video_id}_{sample.frame}.png")
    ds = SegClipDataset([sample], crop=24, mask_dir=root / "semseg", classes=seg_class_ids(by_name, label_map),
                        masks="semseg", label_map=label_map, view="letterbox")
    m = ds[0]["mask"]
    rows = m[m[:, 0] != 255]  # letterbox: padding rows are ignore
    assert set(rows[:, :5].unique().tolist()) == {1} and set(rows[:, 7:11].unique().tolist()) == {2}
    assert set(rows[:, 13:17].unique().tolist()) == {0} and (m == 255).any()
    # COCO instance masks: categories are matched by name to the map's values
    coco = {"images": [{"id": 1, "file_name": "1_0.jpg", "height": 4, "width": 4, "video_id": 1}],
            "categories": [{"id": 1, "name": "cystic_plate"}, {"id": 4, "name": "cystic_duct"}],
            "annotations": [{"id": 9, "image_id": 1, "category_id": 1, "bbox": [0, 0, 2, 4],
                             "segmentation": [[0, 0, 2, 0, 2, 4, 0, 4]]}]}
    (root / "train_seg").mkdir()
    (root / "train_seg" / "annotation_coco.json").write_text(json.dumps(coco))
    painted = CocoMasks.find(root, label_map).semantic(1, 0)
    assert set(np.unique(painted).tolist()) == {0, 7}


def test_an_unknown_class_name_in_the_label_map_names_the_file(tmp_path):
    (tmp_path / "seg_label_map.txt").write_text("background 0\nliver_bed 1\n")
    with pytest.raises(DataError, match=r"seg_label_map.txt: unknown class name 'liver_bed'"):
        dataset_label_map(tmp_path)
    (tmp_path / "seg_label_map.txt").write_text("background 0\ncystic_plate 1\n")
    with pytest.raises(DataError, match="seg.classes asks for 'tool'"):
        seg_class_ids(load_config(None, ["seg.classes=[0, tool]"]), dataset_label_map(tmp_path))


def test_a_background_only_split_gives_nan_miou_with_a_warning(caplog):
    import logging

    cm = ConfusionMatrix(3)
    only_bg = torch.zeros(2, 8, 8, dtype=torch.long)
    cm.update(only_bg, only_bg)  # a perfect "background everywhere" prediction
    assert np.isnan(cm.miou()) and np.isnan(constant_prediction_miou(cm))  # not 1.0
    log = logging.getLogger("cvsjepa")
    log.addHandler(caplog.handler)  # the CLI stops propagation to the root logger
    try:
        with caplog.at_level(logging.WARNING, logger="cvsjepa"):
            report = seg_report(cm, ["background", "cystic_plate", "cystic_duct"], "test")
    finally:
        log.removeHandler(caplog.handler)
    assert np.isnan(report["miou"]) and "only background" in report["miou_undefined"]
    assert "test: segmentation mIoU is NaN" in caplog.text and "only background" in caplog.text
    # a class absent from the ground truth has no IoU and is left out of the mean
    cm2 = ConfusionMatrix(3)
    cm2.update(torch.tensor([[0, 2], [1, 1]]), torch.tensor([[0, 0], [1, 1]]))
    assert np.isnan(cm2.iou()[2]) and cm2.miou() == pytest.approx((0.5 + 1.0) / 2)


def test_the_fine_decoder_draws_below_the_token_grid():
    assert set(SEG_DECODERS) == {"coarse", "fine"}
    dec = FineSegDecoder(embed_dim=8, num_classes=3, grid=(2, 2, 2), out_size=16, dim=16, levels=2)
    tokens = torch.randn(2, 16, 8, requires_grad=True)  # 2 levels x 2 x 2 x 2
    out = dec(tokens)
    assert out.shape == (2, 3, 16, 16)
    out.sum().backward()
    assert tokens.grad[:, :4].abs().sum() == 0 and tokens.grad[:, 4:8].abs().sum() > 0  # keyframe step only
    assert tokens.grad[:, 8:12].abs().sum() == 0 and tokens.grad[:, 12:].abs().sum() > 0  # of every level
    # each token decodes its own 8x8 patch: logits vary inside a patch (the coarse decoder is smooth there)
    assert out[0, 0, :8, :8].std() > 0
