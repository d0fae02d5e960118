"""Meta's original V-JEPA 2 checkpoints: parity with an encoder written here from the paper's
description (not from transformers), conversion to a Hugging Face directory, and every refusal."""

from __future__ import annotations

import json
import math
import pickle

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from cvsjepa.backbones import build_backbone
from cvsjepa.backbones import vjepa2_presets
from cvsjepa.backbones.conversion import convert_checkpoint
from cvsjepa.backbones.meta import choose_preset
from cvsjepa.backbones.meta_format import strip_prefixes
from cvsjepa.cli import main
from cvsjepa.config import BackboneConfig
from cvsjepa.errors import CheckpointError, ConfigError

# The "tiny" preset has head_dim 24 = 3 x 8: every dimension is rotated. Real models (head_dim 64)
# rotate 3 x 20 and pass 4 through untouched, so a second shape with head_dim 16 (3 x 4 + 4) is
# registered for these tests only.
REMAINDER = dict(crop_size=32, patch_size=8, frames_per_clip=4, tubelet_size=2, hidden_size=64,
                 num_attention_heads=4, num_hidden_layers=3, mlp_ratio=4.0,
                 pred_hidden_size=16, pred_num_attention_heads=2, pred_num_hidden_layers=1)


@pytest.fixture(autouse=True)
def remainder_preset(monkeypatch):
    monkeypatch.setitem(vjepa2_presets.PRESETS, "remainder", REMAINDER)



# ------------------------------------------------------------------ the original structure
def rope(x: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    """Rotate ``x [B, heads, N, d]`` by the positions ``pos [N]``, V-JEPA 2's way.

    Frequencies ``1 / 10000^(j / (d/2))`` for ``j < d/2``; pairs ``(x[2i], x[2i+1])`` are rotated,
    but the sin/cos vectors are the d/2 frequencies written TWICE in a row (``[f0..f_{d/2-1},
    f0..f_{d/2-1}]``) rather than each frequency repeated for its pair: the released weights were
    trained with that quirk, so it is kept.
    """
    d = x.shape[-1]
    j = torch.arange(d // 2, dtype=x.dtype)
    angles = pos.to(x.dtype)[:, None] / (10000.0 ** (j / (d / 2)))[None, :]  # [N, d/2]
    sin = torch.cat([angles.sin(), angles.sin()], dim=-1)
    cos = torch.cat([angles.cos(), angles.cos()], dim=-1)
    pairs = x.reshape(*x.shape[:-1], d // 2, 2)
    turned = torch.stack([-pairs[..., 1], pairs[..., 0]], dim=-1).reshape(x.shape)  # (a, b) -> (-b, a)
    return x * cos + turned * sin


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int, grid: int):
        super().__init__()
        self.heads, self.grid = heads, grid
        self.qkv = nn.Linear(dim, 3 * dim)  # fused: rows [q; k; v], each head-major
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, dim = x.shape
        hd = dim // self.heads
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, hd).permute(2, 0, 3, 1, 4)
        ids = torch.arange(n)
        per_frame = self.grid * self.grid
        pos = (ids // per_frame, (ids % per_frame) // self.grid, ids % self.grid)  # depth, height, width
        band = 2 * ((hd // 3) // 2)  # even number of dims per axis; the rest is not rotated

        def rotate(t):
            parts = [rope(t[..., i * band:(i + 1) * band], p) for i, p in enumerate(pos)]
            return torch.cat(parts + [t[..., 3 * band:]], dim=-1)

        q, k = rotate(q), rotate(k)
        attn = torch.softmax((q @ k.transpose(-1, -2)) * hd ** -0.5, dim=-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(b, n, dim))


class MLP(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(dim, hidden), nn.Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(F.gelu(self.fc1(x)))


class Block(nn.Module):
    def __init__(self, dim: int, heads: int, mlp_hidden: int, grid: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, heads, grid)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = MLP(dim, mlp_hidden)

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class PatchEmbed(nn.Module):
    def __init__(self, dim: int, patch: int, tubelet: int):
        super().__init__()
        self.proj = nn.Conv3d(3, dim, kernel_size=(tubelet, patch, patch), stride=(tubelet, patch, patch))

    def forward(self, x):  # [B, C, T, H, W] -> [B, N, D], frame-major
        return self.proj(x).flatten(2).transpose(1, 2)


class OriginalEncoder(nn.Module):
    """V-JEPA 2's encoder as the paper describes it: tubelet Conv3d, pre-norm blocks with 3D-RoPE
    attention on a fused qkv, GELU MLP, final norm; ``out_layers`` gives the multilevel output."""

    def __init__(self, shape: dict, seed: int):
        super().__init__()
        dim, grid = shape["hidden_size"], shape["crop_size"] // shape["patch_size"]
        self.patch_embed = PatchEmbed(dim, shape["patch_size"], shape["tubelet_size"])
        self.blocks = nn.ModuleList(
            Block(dim, shape["num_attention_heads"], int(dim * shape["mlp_ratio"]), grid)
            for _ in range(shape["num_hidden_layers"]))
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():  # large random weights (norms too) so that any mix-up shows
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * (0.5 if p.ndim == 1 else 0.15))

    def forward(self, video_bcthw, out_layers=None):
        x = self.patch_embed(video_bcthw)
        outs = []
        for i, blk in enumerate(self.blocks):
            x = blk(x)
            if out_layers is not None and i in out_layers:
                outs.append(self.norm(x))
        return torch.cat(outs, dim=1) if out_layers is not None else self.norm(x)


def meta_file(path, enc: OriginalEncoder, prefix="module.backbone.", key="target_encoder", other=None,
              edit=None):
    """Save ``enc`` the way Meta releases it (plus a decoy ``encoder`` and a predictor)."""
    sd = {prefix + k: v.clone() for k, v in enc.state_dict().items()}
    if edit:
        edit(sd)
    obj = {key: sd, "predictor": {"module.backbone.predictor_embed.weight": torch.zeros(4, 4)}, "epoch": 3}
    if other is not None:
        obj["encoder"] = {prefix + k: v for k, v in other.state_dict().items()}
    torch.save(obj, path)
    return path


def clip(shape: dict, t: int = 8, seed: int = 1) -> torch.Tensor:
    c = shape["crop_size"]
    return torch.randn(2, t, 3, c, c, generator=torch.Generator().manual_seed(seed))


TINY = vjepa2_presets.PRESETS["tiny"]


@pytest.fixture(scope="module")
def originals():
    return {"tiny": OriginalEncoder(TINY, seed=0).eval(), "remainder": OriginalEncoder(REMAINDER, seed=0).eval(),
            "decoy": OriginalEncoder(TINY, seed=99).eval()}


@pytest.fixture
def tiny_pt(tmp_path, originals):
    return meta_file(tmp_path / "vitl-like.pt", originals["tiny"], other=originals["decoy"])


# ------------------------------------------------------------------ parity
@pytest.mark.parametrize("preset", ["tiny", "remainder"])
def test_parity_with_the_original_structure(tmp_path, originals, preset):
    shape = TINY if preset == "tiny" else REMAINDER
    enc = originals[preset]
    pt = meta_file(tmp_path / "enc.pt", enc)
    bb = build_backbone(BackboneConfig(preset="vitl", path=str(pt))).freeze()
    assert bb.preset == preset and bb.describe()["source"] == "meta_checkpoint"
    x = clip(shape, t=8)  # 8 frames > frames_per_clip=4 of "remainder": frame positions extrapolate
    with torch.no_grad():
        ref = enc(x.permute(0, 2, 1, 3, 4))
    got = bb.extract(x)
    diff = (got - ref).abs().max().item()
    print(f"parity {preset}: max abs diff {diff:.2e} (tokens of std {ref.std():.2f})")
    assert got.shape == ref.shape and diff < 1e-5


def test_multilevel_parity(tmp_path, originals):
    enc = originals["remainder"]
    pt = meta_file(tmp_path / "enc.pt", enc)
    bb = build_backbone(BackboneConfig(path=str(pt), layers=[2, 0])).freeze()
    x = clip(REMAINDER)
    with torch.no_grad():
        ref = enc(x.permute(0, 2, 1, 3, 4), out_layers=[0, 2])
    got = bb.extract(x)
    assert bb.layers == (0, 2) and bb.token_layout(8) == (2, 4, 4, 4) and got.shape == (2, 128, 64)
    assert (got - ref).abs().max().item() < 1e-5


# ------------------------------------------------------------------ conversion
def test_converted_directory_gives_the_same_tokens(tmp_path, tiny_pt, capsys):
    out = tmp_path / "converted"
    assert main(["convert", str(tiny_pt), "--out", str(out)]) == 0
    assert "use backbone.path=" in capsys.readouterr().out
    for name in ("config.json", "model.safetensors", "README.md", "cvsjepa_conversion.json"):
        assert (out / name).is_file(), name
    assert not list(tmp_path.glob(".tmp-*"))  # the temporary directory was renamed, not left behind
    note = json.loads((out / "cvsjepa_conversion.json").read_text())
    assert note["checkpoint_key"] == "target_encoder" and "predictor" in note and "random" in note["predictor"]
    from_dir = build_backbone(BackboneConfig(path=str(out))).freeze()
    from_pt = build_backbone(BackboneConfig(path=str(tiny_pt))).freeze()
    x = clip(TINY)
    assert torch.equal(from_dir.extract(x), from_pt.extract(x))
    assert from_dir.weights_fingerprint() == from_pt.weights_fingerprint()
    assert from_dir.describe()["source"] == "hf_dir"
    assert "random" in from_pt.describe()["predictor"]


def test_convert_refuses_to_clobber_and_overwrites_on_request(tmp_path, tiny_pt, capsys):
    out = tmp_path / "out"
    out.mkdir()
    assert main(["convert", str(tiny_pt), "--out", str(out)]) == 2
    assert "already exists" in capsys.readouterr().err
    assert main(["convert", str(tiny_pt), "--out", str(out), "--overwrite"]) == 0
    assert (out / "model.safetensors").is_file()


def test_target_encoder_is_preferred_and_key_selects(tmp_path, originals, tiny_pt):
    x = clip(TINY)
    with torch.no_grad():
        target, decoy = originals["tiny"](x.permute(0, 2, 1, 3, 4)), originals["decoy"](x.permute(0, 2, 1, 3, 4))
    auto = build_backbone(BackboneConfig(path=str(tiny_pt))).freeze()
    assert (auto.extract(x) - target).abs().max() < 1e-5
    assert auto.describe()["meta_checkpoint_key"] == "target_encoder"
    convert_checkpoint(tiny_pt, tmp_path / "enc", key="encoder")
    other = build_backbone(BackboneConfig(path=str(tmp_path / "enc"))).freeze()
    assert (other.extract(x) - decoy).abs().max() < 1e-5


@pytest.mark.parametrize("prefix", ["", "module.", "backbone.", "module.backbone."])
def test_prefixes_and_encoder_key(tmp_path, originals, prefix):
    pt = meta_file(tmp_path / "enc.pt", originals["tiny"], prefix=prefix, key="encoder")
    bb = build_backbone(BackboneConfig(path=str(pt))).freeze()
    assert bb.describe()["meta_checkpoint_key"] == "encoder"
    assert strip_prefixes("backbone.module.blocks.0.attn.qkv.weight") == "blocks.0.attn.qkv.weight"


def test_flat_state_dict_and_ignored_pos_embed(tmp_path, originals):
    sd = dict(originals["tiny"].state_dict())
    sd["pos_embed"] = torch.zeros(1, 64, 96)
    torch.save(sd, tmp_path / "flat.pt")
    bb = build_backbone(BackboneConfig(path=str(tmp_path / "flat.pt")))
    d = bb.describe()
    assert d["meta_checkpoint_key"] == "(flat state dict)" and d["meta_ignored_keys"] == ["pos_embed"]


# ------------------------------------------------------------------ refusals
def _refused(path, exc=CheckpointError) -> str:
    with pytest.raises(exc) as e:
        build_backbone(BackboneConfig(path=str(path)))
    return str(e.value)


def test_missing_key_is_named(tmp_path, originals):
    pt = meta_file(tmp_path / "m.pt", originals["tiny"],
                   edit=lambda sd: sd.pop("module.backbone.blocks.1.mlp.fc2.bias"))
    msg = _refused(pt)
    assert "missing 1 encoder weights" in msg and "blocks.1.mlp.fc2.bias" in msg and str(pt) in msg
    pt = meta_file(tmp_path / "q.pt", originals["tiny"],
                   edit=lambda sd: sd.pop("module.backbone.blocks.0.attn.qkv.bias"))
    assert "blocks.0.attn.qkv.bias" in _refused(pt)


def test_extra_key_is_named(tmp_path, originals):
    def add(sd):
        sd["module.backbone.blocks.0.attn.q_norm.weight"] = torch.ones(24)
        sd["module.backbone.cls_token"] = torch.zeros(1, 1, 96)
    msg = _refused(meta_file(tmp_path / "x.pt", originals["tiny"], edit=add))
    assert "blocks.0.attn.q_norm.weight" in msg and "cls_token" in msg and "not part of a V-JEPA 2 encoder" in msg


def test_wrong_shape_is_named(tmp_path, originals):
    def shrink(sd):
        sd["module.backbone.blocks.1.attn.proj.weight"] = torch.zeros(96, 48)
    msg = _refused(meta_file(tmp_path / "s.pt", originals["tiny"], edit=shrink))
    assert "wrong shapes" in msg and "blocks.1.attn.proj.weight (96, 48)" in msg and "(96, 96)" in msg


def test_unknown_shape_and_mismatching_preset(tmp_path):
    odd = OriginalEncoder({**TINY, "hidden_size": 48, "num_attention_heads": 2}, seed=0)
    pt = meta_file(tmp_path / "odd.pt", odd)
    assert "matches no V-JEPA 2 preset" in _refused(pt)
    with pytest.raises(CheckpointError, match="does not have the shape of preset vitl"):
        convert_checkpoint(meta_file(tmp_path / "t.pt", OriginalEncoder(TINY, 0)), tmp_path / "o", preset="vitl")


def test_no_encoder_in_the_file(tmp_path):
    torch.save({"predictor": {"w": torch.zeros(1)}, "epoch": 1}, tmp_path / "p.pt")
    msg = _refused(tmp_path / "p.pt")
    assert "target_encoder" in msg and "predictor" in msg
    assert "does not exist" in _refused(tmp_path / "nope.pt")


class Payload:
    """Unpickling this would create ``marker``: the code execution weights_only=True prevents."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_pickle_with_code_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "pwned"
    evil = tmp_path / "vitl.pt"
    torch.save({"target_encoder": {"blocks.0.norm1.weight": torch.ones(2)}, "x": Payload(marker)}, evil)
    msg = _refused(evil)
    assert "weights_only=True" in msg and str(evil) in msg
    assert not marker.exists()
    junk = tmp_path / "junk.pt"
    junk.write_bytes(pickle.dumps({"a": 1})[:5] + b"garbage")
    assert "refusing to load" in _refused(junk)


def test_cli_errors_are_one_line(tmp_path, capsys):
    assert main(["convert", str(tmp_path / "missing.pt"), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("cvsjepa: error:") and "\n" not in err


def test_layers_out_of_range_for_a_loaded_checkpoint(tiny_pt):
    with pytest.raises(ConfigError, match="backbone.layers"):
        build_backbone(BackboneConfig(path=str(tiny_pt), layers=[2]))


def test_vitg_256_and_384_are_told_apart():
    shape = dict(hidden_size=1408, in_chans=3, tubelet_size=2, patch_size=16, num_hidden_layers=40, mlp_hidden=6144)
    assert choose_preset(shape, filename="/w/vitg.pt") == "vitg"
    assert choose_preset(shape, filename="/w/vitg-384.pt") == "vitg384"
    assert choose_preset(shape, hint="vitg384", filename="/w/giant.pt") == "vitg384"
    assert choose_preset(shape, "vitg384", filename="/w/vitg.pt") == "vitg384"
    vitl = dict(shape, hidden_size=1024, num_hidden_layers=24, mlp_hidden=4096)
    assert choose_preset(vitl, filename="vitl.pt") == "vitl"


# ------------------------------------------------------------------ SurgMotion
# SurgMotion (CAIR-HKISI/SurgMotion, src/models/) is V-JEPA 2's code base: its "xformer" ViT-g is
# `vit_giant_xformers`, i.e. the same fused-qkv RoPE attention with 22 heads of 64 dims and MLP ratio
# 48/11, so OriginalEncoder above is its structure too. These shapes keep that head geometry
# (64 = 3 x 20 rotated + 4 passed through) at test size; the SurgMotion twin differs only in name.
XFORMER = dict(crop_size=64, patch_size=16, frames_per_clip=8, tubelet_size=2, hidden_size=128,
               num_attention_heads=2, num_hidden_layers=2, mlp_ratio=48 / 11, pred_hidden_size=16,
               pred_num_attention_heads=2, pred_num_hidden_layers=1)
SURG_L2 = dict(vjepa2_presets.PRESETS["surgmotion-vitl"], num_hidden_layers=2, pred_num_hidden_layers=1)


@pytest.fixture
def surgmotion_presets(monkeypatch):
    for name, kw in (("xformer-tiny", XFORMER), ("surgmotion-xformer-tiny", XFORMER), ("surgmotion-l2", SURG_L2)):
        monkeypatch.setitem(vjepa2_presets.PRESETS, name, kw)
    for name in ("surgmotion-xformer-tiny", "surgmotion-l2"):
        monkeypatch.setitem(vjepa2_presets.RELEASES, name, vjepa2_presets.RELEASES["surgmotion-vitg"])


def surgmotion_file(path, enc, decoy):
    """SurgMotion's layout: the authors' probing reads `encoder`; a different `target_encoder` too."""
    torch.save({"encoder": {f"module.backbone.{k}": v for k, v in enc.state_dict().items()},
                "target_encoder": {f"module.backbone.{k}": v for k, v in decoy.state_dict().items()},
                "predictor": {"module.backbone.predictor_blocks.0.norm1.weight": torch.ones(4)}}, path)
    return path


def test_surgmotion_parity_key_and_conversion(tmp_path, surgmotion_presets, capsys):
    enc, decoy = OriginalEncoder(XFORMER, seed=1).eval(), OriginalEncoder(XFORMER, seed=2).eval()
    pt = surgmotion_file(tmp_path / "SurgMotion-tiny-xformer.pt", enc, decoy)
    bb = build_backbone(BackboneConfig(path=str(pt))).freeze()  # base.yaml's preset=vitl: the file name decides
    d = bb.describe()
    assert bb.preset == "surgmotion-xformer-tiny" and d["meta_checkpoint_key"] == "encoder"
    x = clip(XFORMER)
    with torch.no_grad():
        ref, ref_decoy = enc(x.permute(0, 2, 1, 3, 4)), decoy(x.permute(0, 2, 1, 3, 4))
    got = bb.extract(x)
    print(f"SurgMotion xformer parity: max abs diff {(got - ref).abs().max():.2e}")
    assert (got - ref).abs().max() < 1e-5 and (got - ref_decoy).abs().max() > 1e-2
    # the same tensors under a V-JEPA 2 file name: that preset, and V-JEPA 2's EMA key
    plain = build_backbone(BackboneConfig(path=str(surgmotion_file(tmp_path / "vitg-like.pt", enc, decoy))))
    assert plain.preset == "xformer-tiny" and plain.describe()["meta_checkpoint_key"] == "target_encoder"
    out = tmp_path / "surgmotion-dir"
    assert main(["convert", str(pt), "--out", str(out)]) == 0
    assert "vjepa2 surgmotion-xformer-tiny, encoder from encoder" in capsys.readouterr().out
    from_dir = build_backbone(BackboneConfig(path=str(out))).freeze()
    assert from_dir.preset == "surgmotion-xformer-tiny"  # the conversion note keeps the name
    assert torch.equal(from_dir.extract(x), got) and from_dir.weights_fingerprint() == bb.weights_fingerprint()


def test_surgmotion_parity_at_vitl_width(tmp_path, surgmotion_presets):
    """SurgMotion-L's shape (1024 wide, 16 heads, 256 px), 2 layers."""
    enc = OriginalEncoder(SURG_L2, seed=4).eval()
    with torch.no_grad():  # keep 1024-wide products O(1): matrices at 2 / sqrt(fan_in)
        for q in enc.parameters():
            if q.ndim == 2:
                q.mul_(2 / math.sqrt(q.shape[1]) / 0.15)
    pt = surgmotion_file(tmp_path / "SurgMotion-vitl.pt", enc, enc)
    bb = build_backbone(BackboneConfig(path=str(pt), preset="surgmotion-l2")).freeze()
    x = clip(SURG_L2, t=2)[:1]
    with torch.no_grad():
        ref = enc(x.permute(0, 2, 1, 3, 4))
    got = bb.extract(x)
    print(f"SurgMotion ViT-L width parity: max abs diff {(got - ref).abs().max():.2e}")
    assert got.shape == (1, 256, 1024) and (got - ref).abs().max() < 1e-5


def test_surgmotion_is_told_apart_by_name_or_preset():
    vitg = dict(hidden_size=1408, in_chans=3, tubelet_size=2, patch_size=16, num_hidden_layers=40, mlp_hidden=6144)
    assert choose_preset(vitg, filename="/w/SurgMotion-vitg-xformer.pt") == "surgmotion-vitg"
    assert choose_preset(vitg, hint="surgmotion-vitg", filename="/w/giant.pt") == "surgmotion-vitg"
    assert choose_preset(vitg, filename="/w/vitg.pt") == "vitg"
    vitl = dict(vitg, hidden_size=1024, num_hidden_layers=24, mlp_hidden=4096)
    assert choose_preset(vitl, filename="/w/SurgMotion-vitl.pt") == "surgmotion-vitl"
    assert choose_preset(vitl, filename="/w/vitl.pt") == "vitl"
