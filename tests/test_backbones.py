"""Backbones: the tiny V-JEPA 2 (shapes, determinism, input checks, frozen path), local HF
directories (round trip and every refusal), transformers behaviour we rely on, preset sizes."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from cvsjepa.backbones import Backbone, build_backbone, list_presets
from cvsjepa.backbones.vjepa2 import PRESETS, VJEPA2Backbone
from cvsjepa.config import BackboneConfig
from cvsjepa.errors import CheckpointError, ConfigError
from cvsjepa.heads import AttentiveHead

CROP = PRESETS["tiny"]["crop_size"]


def tiny(**kw) -> VJEPA2Backbone:
    return build_backbone(BackboneConfig(preset="tiny", **kw))


def clip(b: int = 2, t: int = 8, seed: int = 0, c: int = 3, h: int = CROP, w: int = CROP) -> torch.Tensor:
    return torch.randn(b, t, c, h, w, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def bb() -> VJEPA2Backbone:
    return tiny().freeze()


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory, bb):
    d = tmp_path_factory.mktemp("hf") / "vjepa2-tiny"
    bb.model.save_pretrained(d)
    return d


# ------------------------------------------------------------------ tiny backbone
def test_tiny_shapes_and_identity(bb):
    assert isinstance(bb, Backbone)
    assert bb.token_grid(8) == (4, 4, 4) and bb.num_tokens(8) == 64
    tokens = bb(clip())
    assert tokens.shape == (2, 64, bb.embed_dim) == (2, 64, 96)
    assert bb.is_random and "random" in bb.name and bb.name.startswith("vjepa2-tiny")
    d = bb.describe()
    for key in ("name", "family", "preset", "embed_dim", "crop_size", "patch_size", "tubelet_size", "params",
                "random_weights", "path"):
        assert key in d
    assert d["preset"] == "tiny" and d["random_weights"] is True and d["path"] == ""
    # params counts the encoder only, not the (unused) predictor
    assert d["params"] == sum(p.numel() for p in bb.model.encoder.parameters())
    assert d["params"] < sum(p.numel() for p in bb.model.parameters())
    json.dumps(d)


def test_tiny_is_deterministic_and_leaves_global_rng_alone():
    state = torch.random.get_rng_state()
    a, b = tiny(), tiny()
    assert torch.equal(torch.random.get_rng_state(), state)
    assert a.weights_fingerprint() == b.weights_fingerprint()
    assert len(a.weights_fingerprint()) == 16
    x = clip()
    assert torch.equal(a.extract(x), b.extract(x))


def test_fingerprint_tracks_weights():
    a = tiny()
    fp = a.weights_fingerprint()
    with torch.no_grad():
        a.model.encoder.layer[0].mlp.fc1.weight[0, 0] += 1.0
    assert a.weights_fingerprint() != fp
    b = tiny()
    with torch.no_grad():  # the predictor does not touch the tokens, so it is not part of the hash
        b.model.predictor.layernorm.weight += 1.0
    assert b.weights_fingerprint() == fp


@pytest.mark.parametrize("shape, needle", [
    ((1, 8, 3, 32, 32), "64x64"),             # RoPE grid would silently misplace tokens
    ((1, 8, 3, CROP, CROP + 16), "64x64"),    # non-square
    ((1, 8, 1, CROP, CROP), "channels"),
    ((1, 7, 3, CROP, CROP), "multiple of the tubelet"),
    ((1, 8, CROP, CROP, 3), "channels"),      # channels-last by mistake
    ((8, 3, CROP, CROP), "[B, T, C, H, W]"),
])
def test_bad_inputs_are_refused(bb, shape, needle):
    with pytest.raises(ValueError) as e:
        bb(torch.zeros(shape))
    assert needle in str(e.value)
    with pytest.raises(ValueError):
        bb.extract(torch.zeros(shape))


def test_uint8_video_is_refused(bb):
    with pytest.raises(ValueError, match="preprocess"):
        bb(torch.zeros(1, 8, 3, CROP, CROP, dtype=torch.uint8))


def test_more_frames_than_frames_per_clip(bb):
    assert PRESETS["tiny"]["frames_per_clip"] == 8
    tokens = bb.extract(clip(b=1, t=16))
    assert tokens.shape == (1, bb.num_tokens(16), 96) == (1, 128, 96)
    assert torch.isfinite(tokens).all()


def test_extract_feeds_a_trainable_head(bb):
    tokens = bb.extract(clip())
    assert tokens.dtype == torch.float32 and not tokens.is_inference() and not tokens.requires_grad
    assert torch.allclose(tokens, bb(clip()), atol=1e-5)
    head = AttentiveHead(bb.embed_dim, num_heads=4, mlp_hidden=16)
    loss = torch.nn.functional.binary_cross_entropy_with_logits(head(tokens), torch.ones(2, 3))
    loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in head.parameters() if p.ndim > 1)


def test_freeze_and_train_mode():
    b = tiny()
    assert sum(p.numel() for p in b.parameters() if p.requires_grad) > 0
    assert b.freeze() is b and b.frozen
    assert sum(p.numel() for p in b.parameters() if p.requires_grad) == 0
    b.train()  # a frozen encoder stays in eval mode (no dropout / drop-path noise in features)
    assert not b.training and not b.model.training


def test_forward_trains_when_not_frozen():
    b = tiny()
    b.train()
    b(clip(b=1)).pow(2).mean().backward()
    assert b.model.encoder.layer[0].attention.query.weight.grad is not None
    assert b.model.predictor.layernorm.weight.grad is None  # predictor skipped


def test_last_hidden_state_is_final_norm_of_last_layer(bb):
    # transformers 5.x: hidden_states[i] are raw layer outputs (no final norm); the official
    # multilevel features apply encoder.layernorm to each chosen layer themselves.
    with torch.no_grad():
        out = bb.model(pixel_values_videos=clip(), skip_predictor=True, output_hidden_states=True)
    assert len(out.hidden_states) == bb.model.config.num_hidden_layers + 1  # embeddings + each layer
    assert not torch.allclose(out.hidden_states[-1], out.last_hidden_state)
    assert torch.allclose(bb.model.encoder.layernorm(out.hidden_states[-1]), out.last_hidden_state, atol=1e-6)


# ------------------------------------------------------------------ local HF directories
def test_hf_dir_round_trip(bb, hf_dir):
    loaded = build_backbone(BackboneConfig(preset="tiny", path=str(hf_dir))).freeze()
    x = clip(seed=3)
    assert torch.equal(loaded.extract(x), bb.extract(x))
    assert loaded.weights_fingerprint() == bb.weights_fingerprint()
    assert not loaded.is_random and str(hf_dir) in loaded.name and "random" not in loaded.name
    assert loaded.describe()["path"] == str(hf_dir)


def test_hf_dir_shape_wins_over_preset(hf_dir):
    loaded = build_backbone(BackboneConfig(preset="vitl", path=str(hf_dir)))  # default preset, tiny dir
    d = loaded.describe()
    assert d["preset"] == "tiny" and d["preset_requested"] == "vitl" and d["embed_dim"] == 96
    assert loaded.name.startswith("vjepa2-tiny (")


def test_eager_attention_from_dir(hf_dir, bb):
    loaded = build_backbone(BackboneConfig(path=str(hf_dir), attn_implementation="eager"))
    assert loaded.describe()["attn_implementation"] == "eager"
    assert torch.allclose(loaded.extract(clip()), bb.extract(clip()), atol=1e-5)


def _err(cfg: BackboneConfig, exc=CheckpointError) -> str:
    with pytest.raises(exc) as e:
        build_backbone(cfg)
    return str(e.value)


def test_missing_and_malformed_dirs(tmp_path):
    msg = _err(BackboneConfig(path=str(tmp_path / "nope")))
    assert str(tmp_path / "nope") in msg and "does not exist" in msg and "config.json" in msg
    empty = tmp_path / "empty"
    empty.mkdir()
    msg = _err(BackboneConfig(path=str(empty)))
    assert "no config.json" in msg and str(empty) in msg
    (tmp_path / "afile").write_text("x")
    assert "not a directory" in _err(BackboneConfig(path=str(tmp_path / "afile")))
    other = tmp_path / "bert"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({"model_type": "bert"}))
    assert "model_type='bert'" in _err(BackboneConfig(path=str(other)))


def test_dir_without_safetensors(tmp_path, hf_dir):
    d = tmp_path / "noweights"
    d.mkdir()
    (d / "config.json").write_text((hf_dir / "config.json").read_text())
    (d / "pytorch_model.bin").write_bytes(b"not loaded")
    msg = _err(BackboneConfig(path=str(d)))
    assert "model.safetensors" in msg and "pytorch_model.bin" in msg


def test_meta_pt_is_not_unpickled(tmp_path):
    # A .pt path goes to the Meta-checkpoint loader (tests/test_meta_checkpoint.py), which only
    # ever reads with weights_only=True.
    pt = tmp_path / "vitl.pt"
    pt.write_bytes(b"garbage that torch.load would choke on")
    msg = _err(BackboneConfig(path=str(pt)))
    assert str(pt) in msg and "weights_only=True" in msg
    assert "does not exist" in _err(BackboneConfig(path=str(tmp_path / "vitg.pth")))


def test_missing_encoder_weights_are_fatal(tmp_path, hf_dir):
    d = tmp_path / "partial"
    d.mkdir()
    (d / "config.json").write_text((hf_dir / "config.json").read_text())
    sd = load_file(hf_dir / "model.safetensors")
    save_file({k: v for k, v in sd.items() if not k.startswith("encoder.layer.1.")}, d / "model.safetensors",
              metadata={"format": "pt"})
    msg = _err(BackboneConfig(path=str(d)))
    assert "missing" in msg and "encoder.layer.1." in msg and str(d) in msg


def test_shape_mismatch_between_config_and_weights(tmp_path, hf_dir):
    d = tmp_path / "mismatch"
    d.mkdir()
    cfg = json.loads((hf_dir / "config.json").read_text())
    cfg["mlp_ratio"] = 3.0
    (d / "config.json").write_text(json.dumps(cfg))
    (d / "model.safetensors").write_bytes((hf_dir / "model.safetensors").read_bytes())
    assert str(d) in _err(BackboneConfig(path=str(d)))


def test_presets_without_weights_and_bad_names(tmp_path):
    msg = _err(BackboneConfig(preset="vitl"), ConfigError)
    assert msg == ("backbone.preset=vitl needs V-JEPA 2 weights: pass backbone.path=/path/to/hf_dir "
                   "(or backbone.random_weights=true for a random-weight model of the same shape, e.g. for benchmarks)")
    assert "backbone.preset='vitx'" in _err(BackboneConfig(preset="vitx"), ConfigError)
    msg = _err(BackboneConfig(name="dino", preset="tiny"), ConfigError)
    assert "backbone.name='dino'" in msg and "dinov2" in msg and "videomae" in msg
    assert "random_weights" in _err(BackboneConfig(path=str(tmp_path), random_weights=True), ConfigError)


# ------------------------------------------------------------------ presets
def test_list_presets_sizes():
    rows = {r["name"]: r for r in list_presets() if r["family"] == "vjepa2"}
    assert set(rows) == {"tiny", "vitl", "vith", "vitg", "vitg384", "surgmotion-vitl", "surgmotion-vitg"}
    for surg, base in (("surgmotion-vitl", "vitl"), ("surgmotion-vitg", "vitg")):  # V-JEPA 2's layout exactly
        assert {k: v for k, v in rows[surg].items() if k not in ("name", "weights")} == \
            {k: v for k, v in rows[base].items() if k not in ("name", "weights")}
    for name, expected in (("vitl", 303.9e6), ("vith", 631.6e6), ("vitg", 1012.2e6), ("vitg384", 1012.2e6)):
        assert abs(rows[name]["params"] - expected) / expected < 0.01, (name, rows[name]["params"])
        assert rows[name]["family"] == "vjepa2"
    assert rows["vitl"]["tokens_per_16_frames"] == 2048 and rows["vitl"]["embed_dim"] == 1024
    assert rows["vitg"]["embed_dim"] == 1408 and rows["vitg384"]["tokens_per_16_frames"] == 8 * 24 * 24
    assert rows["tiny"]["params"] == tiny().describe()["params"]


# ------------------------------------------------------------------ multilevel tokens
def test_multilevel_tokens_are_level_major_final_normed_layers(bb):
    ml = tiny(layers=[1, 0]).freeze()
    assert ml.layers == (0, 1) and ml.num_levels == 2  # block order, as the official out_layers
    assert ml.token_grid(8) == (4, 4, 4) and ml.token_layout(8) == (2, 4, 4, 4) and ml.num_tokens(8) == 128
    x = clip()
    tokens = ml.extract(x)
    assert tokens.shape == (2, 128, 96)
    with torch.no_grad():
        out = bb.model(pixel_values_videos=x, skip_predictor=True, output_hidden_states=True)
    norm = bb.model.encoder.layernorm
    # hidden_states[0] is the embedding output, hidden_states[i + 1] block i's
    assert torch.allclose(tokens[:, :64], norm(out.hidden_states[1]), atol=1e-5)
    assert torch.allclose(tokens[:, 64:], out.last_hidden_state, atol=1e-5)
    assert torch.allclose(ml(x), tokens, atol=1e-5)  # forward (autograd path) agrees with extract
    level, t, h, w = np.unravel_index(64 + 21, ml.token_layout(8))
    assert (level, t, h, w) == (1, 1, 1, 1)


def test_multilevel_identity_and_description(bb):
    ml = tiny(layers=[0, 1]).freeze()
    assert ml.weights_fingerprint() != bb.weights_fingerprint()  # a feature store must not mix them
    assert tiny(layers=[-1]).freeze().weights_fingerprint() == bb.weights_fingerprint()  # [last] = default
    assert tiny(layers=[1]).freeze().weights_fingerprint() == bb.weights_fingerprint()
    d = ml.describe()
    assert d["layers"] == [0, 1] and d["num_levels"] == 2 and d["num_layers"] == 2
    assert bb.describe()["layers"] == [] and bb.describe()["num_levels"] == 1
    json.dumps(d)


def test_multilevel_trains_through_the_encoder():
    ml = tiny(layers=[0, 1])
    ml.train()
    ml(clip(b=1)).pow(2).mean().backward()
    assert ml.model.encoder.layer[0].attention.query.weight.grad is not None


@pytest.mark.parametrize("layers, needle", [([2], "layer 2 is out of range"), ([-3], "layer -3 is out of range"),
                                            ([0, -2], "names a layer twice")])
def test_bad_layers_are_refused(layers, needle):
    msg = _err(BackboneConfig(preset="tiny", layers=layers), ConfigError)
    assert "backbone.layers" in msg and needle in msg


def test_encoder_blocks_contract(bb):
    blocks = bb.encoder_blocks()
    assert len(blocks) == bb.num_layers == 2 and blocks is bb.model.encoder.layer
    for role, path in bb.attention_modules.items():
        assert isinstance(blocks[0].get_submodule(path), torch.nn.Linear), role
