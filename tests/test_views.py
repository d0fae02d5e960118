"""data.view: the field of view (center / letterbox / three_crops), one geometry for frames, masks,
the model, the feature store, TTA and prediction."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).parent))

from cvsjepa.backbones import build_backbone  # noqa: E402
from cvsjepa.config import BackboneConfig, load_config  # noqa: E402
from cvsjepa.data.transforms import (IMAGENET_MEAN, IMAGENET_STD, crop_box, preprocess_frames,  # noqa: E402
                                     preprocess_mask, view_coverage, view_windows)
from cvsjepa.errors import ConfigError  # noqa: E402



def _frames(t=2, h=48, w=86, seed=0) -> torch.Tensor:
    return torch.randint(0, 256, (t, h, w, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def _normalise(x: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    return (x.clamp(0, 255) / 255.0 - mean) / std


def test_center_view_is_vjepa2s_eval_transform():
    frames = _frames()
    new_h, new_w, top, left, _, _ = crop_box(48, 86, 32)
    resized = F.interpolate(frames.permute(0, 3, 1, 2).float(), size=(new_h, new_w), mode="bilinear",
                            antialias=True, align_corners=False)
    want = _normalise(resized[:, :, top:top + 32, left:left + 32])
    torch.testing.assert_close(preprocess_frames(frames, 32), want, atol=1e-6, rtol=0)
    assert torch.equal(preprocess_frames(frames, 32, "center"), preprocess_frames(frames, 32))


def test_letterbox_keeps_the_whole_frame_and_pads_with_the_mean():
    frames = _frames()
    x = preprocess_frames(frames, 32, "letterbox")
    (win,) = view_windows(48, 86, 32, "letterbox")
    assert x.shape == (2, 3, 32, 32) and (win.new_w, win.new_h) == (32, 18)  # 86x48 -> 32x18, 7 rows above
    pad_top = -win.top
    assert pad_top == 7 and torch.equal(x[:, :, :pad_top], torch.zeros_like(x[:, :, :pad_top]))  # exactly the mean
    assert torch.equal(x[:, :, pad_top + 18:], torch.zeros_like(x[:, :, pad_top + 18:]))
    resized = F.interpolate(frames.permute(0, 3, 1, 2).float(), size=(18, 32), mode="bilinear", antialias=True,
                            align_corners=False)
    torch.testing.assert_close(x[:, :, pad_top:pad_top + 18], _normalise(resized), atol=1e-6, rtol=0)


def test_three_crops_cover_the_frame_left_centre_right():
    frames = _frames()
    x = preprocess_frames(frames, 32, "three_crops")
    wins = view_windows(48, 86, 32, "three_crops")
    assert x.shape == (3, 2, 3, 32, 32)
    assert [w.left for w in wins] == [0, (57 - 32) // 2, 57 - 32] and all(w.top == 0 and w.new_h == 32 for w in wins)
    resized = F.interpolate(frames.permute(0, 3, 1, 2).float(), size=(32, 57), mode="bilinear", antialias=True,
                            align_corners=False)
    for v, w in enumerate(wins):
        torch.testing.assert_close(x[v], _normalise(resized[..., w.left:w.left + 32]), atol=1e-6, rtol=0)
    tall = view_windows(86, 48, 32, "three_crops")  # portrait frames: crops along the height
    assert [w.top for w in tall] == [0, 12, 25] and all(w.left == 0 for w in tall)


def test_masks_follow_the_view_and_coverage_counts_what_it_keeps():
    mask = np.zeros((48, 86), dtype=np.uint8)
    mask[:, :10] = 3  # a structure at the left edge of the frame
    mask[20:28, 40:46] = 1  # one in the middle
    centre = preprocess_mask(mask, 32, "center")
    assert centre.shape == (32, 32) and 3 not in centre.unique().tolist()  # the centre crop cuts it away
    box = preprocess_mask(mask, 32, "letterbox")
    assert (box[:7] == 255).all() and (box[7 + 18:] == 255).all() and 3 in box.unique().tolist()
    assert preprocess_mask(mask, 32, "three_crops").shape == (3, 32, 32)
    for view, kept3 in (("center", 0.0), ("letterbox", 1.0), ("three_crops", 1.0)):
        cov = view_coverage(mask, 32, view, [1, 3])
        assert cov[3][0] / cov[3][1] == pytest.approx(kept3) and cov[1][0] == cov[1][1] > 0, view


def test_the_model_pools_the_three_views_tokens_view_major(synth_root):
    from cvsjepa.data.dataset import ClipDataset
    from cvsjepa.data.endoscapes import load_split
    from cvsjepa.model import CVSClassifier, token_layout
    from cvsjepa.heads import build_head

    samples = load_split(synth_root, "val", frames=4, stride=1).samples[:2]
    bb = build_backbone(BackboneConfig(preset="tiny")).freeze()
    ds = ClipDataset(samples, crop=bb.crop_size, view="three_crops")
    video = torch.stack([ds[0]["video"], ds[1]["video"]])  # [B, V, T, 3, crop, crop]
    assert video.shape == (2, 3, 4, 3, bb.crop_size, bb.crop_size)
    cfg = load_config(None, ["backbone=tiny", "data.frames=4", "data.view=three_crops", "head.num_heads=4",
                             "head.pos_embed=learned"])
    layout = token_layout(cfg, bb)
    model = CVSClassifier(bb, build_head(cfg.head, bb.embed_dim, layout=layout)).eval()
    tokens = model.tokens({"video": video})
    per_view = [bb.extract(video[:, v]) for v in range(3)]
    torch.testing.assert_close(tokens, torch.cat(per_view, dim=1), atol=1e-5, rtol=0)
    assert tokens.shape[1] == layout.num_tokens and layout.views == 3
    assert model({"video": video}).shape == (2, 3)


def test_views_that_cannot_combine_are_refused():
    with pytest.raises(ConfigError, match="features.views"):
        load_config(None, ["data.view=letterbox", "features.views=3"])
    with pytest.raises(ConfigError, match="three_crops"):
        load_config(None, ["data.view=three_crops", "seg.enabled=true"])
    with pytest.raises(ConfigError, match="data.view"):
        load_config(None, ["data.view=fisheye"])


def test_tta_on_a_whole_frame_view_takes_temporal_offsets_only(synth_root):
    from cvsjepa.data.dataset import ClipDataset
    from cvsjepa.data.endoscapes import load_split
    from cvsjepa.evaluate.tta import TTAClipDataset, TTASettings

    index = load_split(synth_root, "val", frames=4, stride=1)
    with pytest.raises(ConfigError, match="temporal offsets"):
        TTAClipDataset(index, 64, 1, TTASettings(views=3), view="letterbox")
    tta = TTAClipDataset(index, 64, 1, TTASettings(views=1, offsets=(0, 2)), view="letterbox")
    plain = ClipDataset(index.samples, crop=64, view="letterbox")
    item = tta[3]["video"]
    assert item.shape == (2, 4, 3, 64, 64) and torch.equal(item[0], plain[3]["video"])


def test_predict_clip_and_timeline_use_the_runs_view(synth_root, tmp_path):
    from cvsjepa.api import CVSModel
    from cvsjepa.checkpoint import save_classifier
    from cvsjepa.data.dataset import ClipDataset
    from cvsjepa.data.endoscapes import load_split
    from cvsjepa.data.frames import read_frame
    from cvsjepa.heads import build_head
    from cvsjepa.model import CVSClassifier, token_layout
    from cvsjepa.predict.timeline import iter_clips
    from cvsjepa.data.video import SampledFrame

    cfg = load_config(None, ["backbone=tiny", "data.frames=4", "data.view=three_crops", "head.num_heads=4"])
    bb = build_backbone(cfg.backbone).freeze()
    head = build_head(cfg.head, bb.embed_dim, layout=token_layout(cfg, bb))
    save_classifier(tmp_path / "ck", CVSClassifier(bb, head), cfg)
    m = CVSModel.from_run(tmp_path / "ck", device="cpu", thresholds=[0.5, 0.5, 0.5])
    s = load_split(synth_root, "val", frames=4, stride=1).samples[5]
    raw = torch.stack([read_frame(p) for p in s.clip_paths])
    clip = ClipDataset([s], crop=m.crop, view="three_crops")[0]["video"]
    torch.testing.assert_close(m.predict_clip(raw), m.predict_clip(clip), atol=1e-6, rtol=0)
    frames = [SampledFrame(index=i, time_s=float(i), frame_index=i, source_time_s=float(i), image=raw[i].numpy())
              for i in range(4)]
    last = list(iter_clips(iter(frames), m.crop, 4, 1, view="three_crops"))[-1][1]
    assert torch.equal(last, clip)


def test_the_store_keeps_the_view_and_pools_three_crops_like_the_model(synth_root, tmp_path):
    from cvsjepa.data.loaders import build_splits
    from cvsjepa.features.dataset import open_store_splits
    from cvsjepa.features.extract import extract
    from cvsjepa.features.store import FeatureStore, StoreKeyError
    from cvsjepa.model import CVSClassifier

    args = ["backbone=tiny", f"data.root={synth_root}", "data.frames=4", "data.limit_per_split=3",
            "features.splits=[val]", "features.dtype=float32", f"features.store={tmp_path / 'st'}"]
    cfg = load_config(None, [*args, "data.view=three_crops"])
    extract(cfg, progress=False)
    layout = FeatureStore.open(tmp_path / "st").layout
    assert layout["spatial_views"] == 3 and layout["views"] == 1 and layout["tokens_per_clip"] == 3 * 2 * 16
    bb = build_backbone(cfg.backbone).freeze()
    stored = open_store_splits(cfg, roles=("val",), backbone=bb)["val"].dataset
    live = build_splits(cfg, bb.crop_size, roles=("val",))["val"].dataset
    model = CVSClassifier(bb, torch.nn.Identity())
    for i in range(3):
        want = model.tokens({"video": live[i]["video"][None]})[0]
        torch.testing.assert_close(stored[i]["tokens"], want, atol=1e-5, rtol=0)
    with pytest.raises(StoreKeyError, match="data.view"):  # tokens of another field of view are never mixed
        open_store_splits(load_config(None, [*args, "data.view=center"]), roles=("val",), backbone=bb)
