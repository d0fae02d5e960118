"""Multi-task CVS + segmentation: masks aligned with the clip, the masked loss, mIoU, the run."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from cvsjepa.cli import main
from cvsjepa.data.masks import read_label_map, read_semseg
from cvsjepa.data.seg_dataset import preprocess_mask, remap_classes
from cvsjepa.data.transforms import crop_box, preprocess_frames
from cvsjepa.errors import DataError
from cvsjepa.evaluate.segmentation import ConfusionMatrix, constant_prediction_miou
from cvsjepa.heads.segmentation import SegDecoder, masked_seg_loss


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
                 "data.frames=4", "head.num_heads=4", "head.mlp_hidden=32", "train.batch_size=8", "train.epochs=1", "train.min_steps=0",
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
                 "data.frames=4", "head.num_heads=4", "head.mlp_hidden=32", "train.batch_size=8", "train.epochs=1", "train.min_steps=0",
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
