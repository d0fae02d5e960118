"""Every backbone family behind the one contract: VideoMAE and per-frame DINOv2 next to V-JEPA 2
(tiny random configs, local HF directories, refusals), FLOPs per clip against the reference, the
`cvsjepa backbones` listing, and each family through `cvsjepa train` and `cvsjepa extract`."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from cvsjepa.backbones import Backbone, build_backbone, list_presets
from cvsjepa.backbones.dinov2 import Dinov2FramesBackbone
from cvsjepa.backbones.flops import per_frame_vit_flops
from cvsjepa.backbones.videomae import VideoMAEBackbone
from cvsjepa.backbones.vjepa2 import preset_flops
from cvsjepa.cli import main
from cvsjepa.config import BackboneConfig
from cvsjepa.errors import CheckpointError, ConfigError

# tiny clips (VideoMAE-tiny is fixed at 4 frames); fewer frames, fewer JPEGs to decode in the CLI runs
FRAMES = {"vjepa2": 4, "videomae": 4, "dinov2": 4, "dinov3": 4, "vjepa21": 4}
TRAIN_FRAMES = {"vjepa2": 2, "videomae": 4, "dinov2": 2, "vjepa21": 2, "dinov3": 2}



def tiny(name: str, **kw) -> Backbone:
    return build_backbone(BackboneConfig(name=name, preset="tiny", **kw))


def clip(bb: Backbone, t: int | None = None, b: int = 2, seed: int = 0) -> torch.Tensor:
    t = t or FRAMES[bb.family]
    return torch.randn(b, t, 3, bb.crop_size, bb.crop_size, generator=torch.Generator().manual_seed(seed))


# ------------------------------------------------------------------ the contract, per family
@pytest.mark.parametrize("name", ["videomae", "dinov2", "dinov3", "vjepa21"])
def test_tiny_contract(name):
    bb = tiny(name).freeze()
    x = clip(bb)
    tokens = bb.extract(x)
    n = bb.num_tokens(x.shape[1])
    assert tokens.shape == (2, n, bb.embed_dim) and torch.isfinite(tokens).all()
    assert tokens.dtype == torch.float32 and not tokens.requires_grad and not tokens.is_inference()
    assert torch.allclose(bb(x), tokens, atol=1e-5)
    assert bb.is_random and bb.name.startswith(f"{name}-tiny (random")
    assert tiny(name).weights_fingerprint() == bb.weights_fingerprint()  # seeded: one fixed model
    d = bb.describe()
    assert d["family"] == name and d["preset"] == "tiny" and d["params"] == bb.num_params() > 0
    json.dumps(d)
    assert len(bb.encoder_blocks()) == bb.num_layers
    for path in bb.attention_modules.values():
        assert isinstance(bb.encoder_blocks()[0].get_submodule(path), torch.nn.Linear), path


def test_videomae_geometry_and_fixed_length():
    bb = tiny("videomae").freeze()
    assert isinstance(bb, VideoMAEBackbone)
    assert (bb.crop_size, bb.patch_size, bb.tubelet_size, bb.num_frames) == (64, 16, 2, 4)
    assert bb.token_grid(4) == (2, 4, 4) and bb.num_tokens(4) == 32
    with pytest.raises(ValueError) as e:  # fixed sin-cos positions: no extrapolation
        bb.extract(clip(bb, t=8))
    assert isinstance(e.value, ConfigError) and "data.frames=4" in str(e.value)
    with pytest.raises(ValueError, match="64x64"):
        bb(torch.zeros(1, 4, 3, 32, 32))


def test_dinov2_runs_each_frame_on_its_own():
    bb = tiny("dinov2").freeze()
    assert isinstance(bb, Dinov2FramesBackbone)
    assert (bb.crop_size, bb.patch_size, bb.tubelet_size) == (56, 14, 1) and bb.token_grid(4) == (4, 4, 4)
    x = clip(bb, t=3)  # any number of frames: tubelet 1
    tokens = bb.extract(x)
    assert tokens.shape == (2, 48, 32)
    with torch.no_grad():
        frame2 = bb.model(pixel_values=x[:, 2]).last_hidden_state  # [B, 1 + 16, D]
    assert torch.allclose(tokens[:, 32:48], frame2[:, 1:], atol=1e-5)  # CLS dropped, frame-major stacking
    x2 = x.clone()
    x2[:, 0] += 1.0  # frames do not see each other
    assert torch.allclose(bb.extract(x2)[:, 16:], tokens[:, 16:], atol=1e-6)


@pytest.mark.parametrize("name", ["videomae", "dinov2", "dinov3", "vjepa21"])
def test_multilevel_per_family(name):
    bb = tiny(name).freeze()
    ml = tiny(name, layers=[0, 1]).freeze()
    x = clip(bb)
    n = bb.num_tokens(x.shape[1])
    tokens = ml.extract(x)
    assert ml.token_layout(x.shape[1]) == (2, *bb.token_grid(x.shape[1])) and tokens.shape == (2, 2 * n, bb.embed_dim)
    assert torch.allclose(tokens[:, n:], bb.extract(x), atol=1e-5)  # the last level is the default output
    assert not torch.allclose(tokens[:, :n], tokens[:, n:], atol=1e-3)
    assert ml.weights_fingerprint() != bb.weights_fingerprint()
    with pytest.raises(ConfigError, match="backbone.layers"):
        tiny(name, layers=[5])


# ------------------------------------------------------------------ local HF directories
@pytest.fixture(scope="module")
def hf_dirs(tmp_path_factory):
    dirs = {}
    for name in ("videomae", "dinov2", "dinov3", "vjepa21"):
        d = tmp_path_factory.mktemp(name) / f"{name}-tiny"
        tiny(name).model.save_pretrained(d)
        dirs[name] = d
    return dirs


@pytest.mark.parametrize("name", ["videomae", "dinov2", "dinov3", "vjepa21"])
def test_hf_dir_round_trip(hf_dirs, name):
    ref = tiny(name).freeze()
    loaded = build_backbone(BackboneConfig(name=name, path=str(hf_dirs[name]))).freeze()  # default preset "vitl"
    x = clip(ref)
    assert torch.equal(loaded.extract(x), ref.extract(x))
    assert loaded.weights_fingerprint() == ref.weights_fingerprint()
    assert loaded.preset == "tiny" and not loaded.is_random and str(hf_dirs[name]) in loaded.name


@pytest.mark.parametrize("name", ["videomae", "dinov2", "dinov3"])
def test_hf_dir_refusals(tmp_path, hf_dirs, name):
    d = tmp_path / "partial"
    d.mkdir()
    (d / "config.json").write_text((hf_dirs[name] / "config.json").read_text())
    sd = load_file(hf_dirs[name] / "model.safetensors")
    save_file({k: v for k, v in sd.items() if "layer.1." not in k}, d / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match=r"missing.*layer\.1\."):
        build_backbone(BackboneConfig(name=name, path=str(d)))
    other = "dinov2" if name == "videomae" else "videomae"
    with pytest.raises(CheckpointError, match=f"model_type='{other}'"):
        build_backbone(BackboneConfig(name=name, path=str(hf_dirs[other])))
    with pytest.raises(CheckpointError, match="Hugging Face directories only"):
        build_backbone(BackboneConfig(name=name, path=str(tmp_path / "w.pt")))


def test_dinov2_with_registers_drops_them(tmp_path):
    from transformers import Dinov2WithRegistersConfig, Dinov2WithRegistersModel

    cfg = Dinov2WithRegistersConfig(image_size=56, patch_size=14, hidden_size=32, num_hidden_layers=2,
                                    num_attention_heads=2, mlp_ratio=2, num_register_tokens=4)
    torch.manual_seed(0)
    Dinov2WithRegistersModel(cfg).save_pretrained(tmp_path / "reg")
    bb = build_backbone(BackboneConfig(name="dinov2", path=str(tmp_path / "reg"))).freeze()
    x = clip(bb, t=2)
    tokens = bb.extract(x)
    assert bb.num_prefix_tokens == 5 and tokens.shape == (2, 2 * 16, 32)
    with torch.no_grad():
        ref = bb.model(pixel_values=x[:, 1]).last_hidden_state[:, 5:]
    assert torch.allclose(tokens[:, 16:], ref, atol=1e-5)


@pytest.mark.parametrize("name", ["videomae", "dinov2", "dinov3"])
def test_real_presets_need_weights(name):
    preset = "base"
    with pytest.raises(ConfigError, match=f"backbone.preset={preset} needs"):
        build_backbone(BackboneConfig(name=name, preset=preset))
    with pytest.raises(ConfigError, match="is not a .* preset"):
        build_backbone(BackboneConfig(name=name, preset="vitl"))


# ------------------------------------------------------------------ presets, FLOPs
def test_flops_match_the_reference():
    # shared/reference/vjepa2.md: encoder forward, 2 x MACs
    for preset, frames, tflop in (("vitl", 16, 1.66), ("vitg", 16, 5.1), ("vitl", 64, 11.6)):
        got = preset_flops(preset, frames) / 1e12
        assert abs(got - tflop) / tflop < 0.03, (preset, frames, got)
    # per-frame attention is T small sequences, not one long one
    one = per_frame_vit_flops(hidden=1024, layers=24, mlp_hidden=4096, num_frames=1, crop=224, patch=14)
    assert per_frame_vit_flops(hidden=1024, layers=24, mlp_hidden=4096, num_frames=16, crop=224, patch=14) == 16 * one


def test_list_presets_covers_every_family():
    rows = list_presets()
    by = {(r["family"], r["name"]): r for r in rows}
    for key in [("vjepa2", "vitl"), ("videomae", "base"), ("videomae", "large"), ("dinov2", "small"),
                ("dinov2", "base"), ("dinov2", "large"), ("videomae", "tiny"), ("dinov2", "tiny")]:
        assert key in by, key
    for (family, name), expected in {("videomae", "base"): 86.2e6, ("dinov2", "small"): 22.1e6,
                                     ("dinov2", "base"): 86.6e6, ("dinov2", "large"): 304.4e6}.items():
        assert abs(by[family, name]["params"] - expected) / expected < 0.01, (family, name)
    assert by["videomae", "base"]["tokens_per_clip"] == 8 * 14 * 14
    assert by["dinov2", "base"]["tokens_per_clip"] == 16 * 16 * 16
    assert by["dinov2", "tiny"]["params"] == tiny("dinov2").num_params()
    assert by["videomae", "tiny"]["params"] == tiny("videomae").num_params()
    assert all(r["flops_per_clip"] > 0 for r in rows)


def test_backbones_command(capsys):
    assert main(["backbones"]) == 0
    out = capsys.readouterr().out
    for needle in ("vjepa2", "videomae", "dinov2", "tflops_per_clip", "303.9M", "1.66", "vjepa21", "vitG",
                   "surgmotion-vitg", "dinov3", "huge-plus", "4.88"):
        assert needle in out, needle
    assert main(["backbones", "--frames", "64", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    vitl = next(r for r in rows if r["name"] == "vitl")
    assert vitl["clip_frames"] == 64 and abs(vitl["flops_per_clip"] / 1e12 - 11.6) < 0.3


# ------------------------------------------------------------------ through the CLI
def _args(name, root, out, layers=None):
    args = [f"backbone.name={name}", "backbone.preset=tiny", f"data.root={root}", f"data.frames={TRAIN_FRAMES[name]}",
            "data.limit_per_split=16", "head.num_heads=4", "head.mlp_hidden=16", "train.batch_size=8",
            "train.epochs=1", "train.patience=0", "train.min_steps=0", "data.test_split=", f"out={out}"]
    return args + ([f"backbone.layers={layers}"] if layers else [])


@pytest.mark.parametrize("name, layers", [("videomae", None), ("dinov2", None), ("vjepa2", "[0,1]")])
def test_train_one_epoch(synth_root, tmp_path, name, layers):
    run = tmp_path / "run"
    assert main(["train", *_args(name, synth_root, run, layers), "--no-progress"]) == 0
    summary = json.loads((run / "summary.json").read_text())
    assert summary["backbone"].startswith(f"{name}-tiny")
    saved = json.loads((run / "checkpoints" / "best" / "config.json").read_text())
    assert saved["backbone"]["family"] == name
    if layers:
        assert saved["backbone"]["layers"] == [0, 1] and saved["backbone"]["num_levels"] == 2


@pytest.mark.parametrize("name, layers", [("videomae", None), ("dinov2", None), ("vjepa2", "[0,1]"),
                                         ("vjepa21", "[0,1]")])
def test_extract_then_train_from_the_store(synth_root, tmp_path, name, layers):
    store = tmp_path / "store"
    assert main(["extract", *_args(name, synth_root, tmp_path / "x", layers), f"features.store={store}",
                 "--no-progress"]) == 0
    assert any(store.rglob("*")), "the feature store is empty"
    run = tmp_path / "run"
    assert main(["train", *_args(name, synth_root, run, layers), f"features.store={store}", "--no-progress"]) == 0
    assert (run / "summary.json").is_file()


# ------------------------------------------------------------------ FLOPs, counted independently
def _flop_model(family: str, name: str, depth: int):
    """(model, run) for ``family``/``name`` with ``depth`` blocks, on the meta device (shapes only)."""
    from transformers import (DINOv3ViTConfig, DINOv3ViTModel, Dinov2Config, Dinov2Model, VideoMAEConfig,
                              VideoMAEModel, VJEPA2Config, VJEPA2Model)

    from cvsjepa.backbones import dinov2, dinov3, videomae, vjepa2_presets, vjepa21_model, vjepa21_presets

    if family == "vjepa2":
        model = VJEPA2Model(VJEPA2Config(**{**vjepa2_presets.PRESETS[name], "num_hidden_layers": depth,
                                            "pred_num_hidden_layers": 1}))
        return model, lambda x: model(pixel_values_videos=x, skip_predictor=True)
    if family == "vjepa21":
        kw = {**vjepa21_presets.PRESETS[name], "num_hidden_layers": depth, "hierarchical_layers": [depth - 1]}
        model = vjepa21_model.VJEPA21Model(vjepa21_model.VJEPA21Config(**kw))
        return model, lambda x: model(pixel_values_videos=x)
    if family == "videomae":
        model = VideoMAEModel(VideoMAEConfig(**{**videomae.PRESETS[name], "num_hidden_layers": depth}))
        return model, lambda x: model(pixel_values=x)
    if family == "dinov2":
        model = Dinov2Model(Dinov2Config(**{**dinov2.PRESETS[name], "num_hidden_layers": depth}))
        return model, lambda x: model(pixel_values=x.flatten(0, 1))
    model = DINOv3ViTModel(DINOv3ViTConfig(**{**dinov3.PRESETS[name], "num_hidden_layers": depth}))
    return model, lambda x: model(pixel_values=x.flatten(0, 1))


def counted_flops(row: dict) -> int:
    """torch's FlopCounterMode over the real transformers forward (matmuls, convolutions, attention),
    at depth 1 and 2 on the meta device, extrapolated linearly to the preset's depth."""
    from torch.utils.flop_counter import FlopCounterMode

    counts = []
    for depth in (1, 2):
        with torch.device("meta"):
            model, run = _flop_model(row["family"], row["name"], depth)
            x = torch.empty(1, row["clip_frames"], 3, row["crop_size"], row["crop_size"])
        with FlopCounterMode(display=False) as fc, torch.no_grad():
            run(x)
        counts.append(fc.get_total_flops())
    return counts[0] + (row["layers"] - 1) * (counts[1] - counts[0])


@pytest.mark.parametrize("families", [
    ("vjepa2", "vjepa21", "dinov2", "dinov3"),
    pytest.param(("videomae",), marks=pytest.mark.slow),  # its sin-cos tables take seconds to build
], ids=["default", "videomae"])
def test_listed_flops_match_an_independent_count(families):
    rows = [r for r in list_presets(16) if r["name"] != "tiny" and r["family"] in families]
    assert {r["family"] for r in rows} == set(families)
    for r in rows:
        counted = counted_flops(r)
        assert abs(r["flops_per_clip"] - counted) / counted < 0.01, (r["family"], r["name"], r["flops_per_clip"],
                                                                      counted)
