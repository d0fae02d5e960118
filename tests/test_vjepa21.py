"""V-JEPA 2.1: parity with an encoder written here from the original structure (facebookresearch/vjepa2
``app/vjepa_2_1/models/``, not from cvsjepa or transformers), in Meta's file format; conversion to a
directory; the hierarchical multilevel features; the encoder key, predictor and refusals."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn
from transformers.models.vjepa2.modeling_vjepa2 import VJEPA2RopeAttention

from cvsjepa.backbones import build_backbone, vjepa21_presets
from cvsjepa.backbones.conversion import convert_checkpoint, detect_family
from cvsjepa.backbones.vjepa21 import list_vjepa21_presets
from cvsjepa.backbones.vjepa21_model import VJEPA21RopeAttention
from cvsjepa.cli import main
from cvsjepa.config import BackboneConfig
from cvsjepa.errors import CheckpointError, ConfigError


# head_dim 16: each RoPE axis gets 2 * ((16 // 3) // 2) = 4 dims and 4 pass through unrotated, as
# in the released models (head_dim 64: 3 x 20 + 4). 3 layers, norms after blocks 0 and 2 only.
REMAINDER = dict(crop_size=48, patch_size=16, tubelet_size=2, frames_per_clip=4, rope_interpolate=True,
                 rope_pretrained_grid=16, hidden_size=64, num_attention_heads=4, num_hidden_layers=3, mlp_ratio=4.0,
                 hierarchical_layers=[0, 2])
# ViT-L width (1024, 16 heads of 64), 2 layers, at the released 384 px: a 24 x 24 grid.
VITL2 = dict(vjepa21_presets.PRESETS["vitl"], num_hidden_layers=2, hierarchical_layers=[0, 1])
TINY = vjepa21_presets.PRESETS["tiny"]


@pytest.fixture(autouse=True)
def test_presets(monkeypatch):
    monkeypatch.setitem(vjepa21_presets.PRESETS, "remainder", REMAINDER)
    monkeypatch.setitem(vjepa21_presets.PRESETS, "vitl-2layers", VITL2)



# ------------------------------------------------------------------ the original structure
def rope_21(x: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    """2.1's rotation: frequency j = 1 / 10000^(j / (d/2)); sin/cos each repeated for its pair
    (``repeat_interleave``), the pair (a, b) turned into (a cos - b sin, b cos + a sin)."""
    d = x.shape[-1]
    freq = 1.0 / 10000 ** (torch.arange(d // 2, dtype=x.dtype) / (d / 2))
    ang = pos[:, None] * freq[None, :]
    sin, cos = ang.sin().repeat_interleave(2, -1), ang.cos().repeat_interleave(2, -1)
    y = x.reshape(*x.shape[:-1], d // 2, 2)
    turned = torch.stack([-y[..., 1], y[..., 0]], -1).reshape(x.shape)
    return x * cos + turned * sin


class Attention21(nn.Module):
    """Fused qkv (rows q, k, v; head-major); 3D RoPE over the actual token grid; with
    ``interpolate_rope`` the row/column positions become ``pos * (16 - 1) / (grid - 1)``."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)

    def forward(self, x, grid):
        t, h, w = grid
        b, n, dim = x.shape
        hd = dim // self.heads
        q, k, v = self.qkv(x).unflatten(-1, (3, self.heads, hd)).permute(2, 0, 3, 1, 4)
        ids = torch.arange(n)
        frame, row, col = ids // (h * w), (ids % (h * w)) // w, ids % w
        row, col = row * 15.0 / (h - 1), col * 15.0 / (w - 1)
        band = 2 * ((hd // 3) // 2)

        def rotate(z):
            parts = [rope_21(z[..., i * band:(i + 1) * band], p.float()) for i, p in enumerate((frame, row, col))]
            return torch.cat(parts + [z[..., 3 * band:]], -1)

        att = torch.softmax(rotate(q) @ rotate(k).transpose(-1, -2) / math.sqrt(hd), -1)
        return self.proj((att @ v).transpose(1, 2).reshape(b, n, dim))


class Block21(nn.Module):
    def __init__(self, dim, heads, hidden):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(dim, eps=1e-6), nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention21(dim, heads)
        self.mlp = nn.Sequential()
        self.mlp.fc1, self.mlp.act, self.mlp.fc2 = nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim)

    def forward(self, x, grid):
        x = x + self.attn(self.norm1(x), grid)
        return x + self.mlp(self.norm2(x))


class Encoder21(nn.Module):
    """The 2.1 encoder: video and image patch embeddings, modality embeddings added to every token,
    blocks, one norm per hierarchical layer; the output is the last norm of the last block."""

    def __init__(self, shape: dict, seed: int | None):
        super().__init__()
        dim, p, t = shape["hidden_size"], shape["patch_size"], shape["tubelet_size"]
        self.patch, self.tubelet, self.hier = p, t, list(shape["hierarchical_layers"])
        self.patch_embed = nn.Module()
        self.patch_embed.proj = nn.Conv3d(3, dim, (t, p, p), (t, p, p))
        self.patch_embed_img = nn.Module()
        self.patch_embed_img.proj = nn.Conv3d(3, dim, (1, p, p), (1, p, p))
        self.img_mod_embed = nn.Parameter(torch.zeros(1, 1, dim))
        self.video_mod_embed = nn.Parameter(torch.zeros(1, 1, dim))
        self.blocks = nn.ModuleList(Block21(dim, shape["num_attention_heads"], int(dim * shape["mlp_ratio"]))
                                    for _ in range(shape["num_hidden_layers"]))
        self.norms_block = nn.ModuleList(nn.LayerNorm(dim, eps=1e-6) for _ in self.hier)
        if seed is None:  # shapes only (meta device)
            return
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():  # large random weights (norms, modality embedding too) so any mix-up shows;
            for q in self.parameters():  # matrices at 2 / sqrt(fan_in) keep wide layers O(1)
                std = 2 / math.sqrt(q.shape[1]) if q.ndim == 2 and q.shape[1] > 128 else 0.15 if q.ndim >= 2 else 0.5
                q.copy_(torch.randn(q.shape, generator=g) * std)

    def forward(self, video_bcthw, out_layers=None):
        _, _, t, h, w = video_bcthw.shape
        grid = (t // self.tubelet, h // self.patch, w // self.patch)
        x = self.patch_embed.proj(video_bcthw).flatten(2).transpose(1, 2) + self.video_mod_embed
        outs = []
        for i, blk in enumerate(self.blocks):
            x = blk(x, grid)
            if out_layers is not None and i in out_layers:
                outs.append(self.norms_block[self.hier.index(i)](x))
        return torch.cat(outs, 1) if out_layers is not None else self.norms_block[-1](x)


def meta_file(path, enc, key="ema_encoder", prefix="module.backbone.", teacher=None, predictor_depth=12, edit=None):
    """Save ``enc`` as Meta releases 2.1 (encoder under ``key``, a predictor, maybe a teacher)."""
    sd = {prefix + k: v.clone() for k, v in enc.state_dict().items()}
    if edit:
        edit(sd)
    pred = {f"module.backbone.predictor_blocks.{i}.mlp.fc1.weight": torch.zeros(2, 2) for i in range(predictor_depth)}
    obj = {key: sd, "predictor": pred, "epoch": 10}
    if teacher is not None:
        obj["target_encoder"] = {prefix + k: v for k, v in teacher.state_dict().items()}
    torch.save(obj, path)
    return path


def clip(shape, t=8, b=2, seed=1):
    c = shape["crop_size"]
    return torch.randn(b, t, 3, c, c, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def originals():
    return {"tiny": Encoder21(TINY, seed=0).eval(), "remainder": Encoder21(REMAINDER, seed=0).eval(),
            "teacher": Encoder21({**TINY, "hidden_size": 48, "num_attention_heads": 2}, seed=5).eval()}


@pytest.fixture
def tiny_pt(tmp_path, originals):
    return meta_file(tmp_path / "vjepa2_1_vitt_dist_384.pt", originals["tiny"], teacher=originals["teacher"])


def _build(path, **kw):
    return build_backbone(BackboneConfig(name="vjepa21", path=str(path), **kw)).freeze()


# ------------------------------------------------------------------ parity
@pytest.mark.parametrize("preset", ["tiny", "remainder"])
def test_parity_with_the_original_structure(tmp_path, originals, preset):
    shape = TINY if preset == "tiny" else REMAINDER
    enc = originals[preset]
    bb = _build(meta_file(tmp_path / "e.pt", enc))
    assert bb.preset == preset and bb.crop_size // bb.patch_size != 16  # interpolation is exercised
    x = clip(shape, t=8)  # 8 frames > frames_per_clip=4 of "remainder": frame positions extrapolate
    with torch.no_grad():
        ref = enc(x.permute(0, 2, 1, 3, 4))
    got = bb.extract(x)
    diff = (got - ref).abs().max().item()
    print(f"2.1 parity {preset}: max abs diff {diff:.2e} (tokens of std {ref.std():.2f})")
    assert got.shape == ref.shape and diff < 1e-5


def test_parity_at_vitl_width(tmp_path):
    """1024 wide, 16 heads of 64 (3 x 20 rotated + 4), 2 layers, at 384 px (grid 24: positions x 15/23)."""
    enc = Encoder21(VITL2, seed=3).eval()
    bb = _build(meta_file(tmp_path / "vitl2.pt", enc))
    assert bb.preset == "vitl-2layers" and bb.embed_dim == 1024 and bb.token_grid(2) == (1, 24, 24)
    x = clip(VITL2, t=2, b=1)
    with torch.no_grad():
        ref = enc(x.permute(0, 2, 1, 3, 4))
    got = bb.extract(x)
    diff = (got - ref).abs().max().item()
    print(f"2.1 parity ViT-L width: max abs diff {diff:.2e} over {got.numel()} values")
    assert got.shape == (1, 576, 1024) and diff < 1e-5


def test_the_21_differences_matter(tmp_path, originals, monkeypatch):
    """Plain V-JEPA 2 RoPE (no interpolation, ``repeat`` pairing) or a dropped modality embedding
    would move the tokens far beyond the tolerance: the parity above is not vacuous."""
    enc = originals["tiny"]
    bb = _build(meta_file(tmp_path / "e.pt", enc))
    x = clip(TINY, t=4)
    ref = bb.extract(x)
    bb.model.config.rope_interpolate = False  # positions on the 6 x 6 grid as they are
    assert (bb.extract(x) - ref).abs().max() > 1e-2
    bb.model.config.rope_interpolate = True
    with monkeypatch.context() as m:  # V-JEPA 2's `repeat` frequency layout
        m.setattr(VJEPA21RopeAttention, "apply_rotary_embeddings", VJEPA2RopeAttention.apply_rotary_embeddings)
        assert (bb.extract(x) - ref).abs().max() > 1e-2
    assert torch.equal(bb.extract(x), ref)
    with torch.no_grad():
        bb.model.encoder.embeddings.patch_embeddings.proj.bias.sub_(enc.video_mod_embed.reshape(-1))
    assert (bb.extract(x) - ref).abs().max() > 1e-2


def test_hierarchical_multilevel_parity_and_refusal(tmp_path, originals):
    enc = originals["remainder"]
    pt = meta_file(tmp_path / "e.pt", enc)
    bb = _build(pt, layers=[2, 0])
    x = clip(REMAINDER, t=4)
    with torch.no_grad():
        ref = enc(x.permute(0, 2, 1, 3, 4), out_layers=[0, 2])
    got = bb.extract(x)
    assert bb.layers == (0, 2) and bb.token_layout(4) == (2, 2, 3, 3) and got.shape == (2, 36, 64)
    assert (got - ref).abs().max().item() < 1e-5  # each level through its own norm
    assert torch.allclose(got[:, 18:], _build(pt).extract(x), atol=1e-6)  # the last level is the default
    with pytest.raises(ConfigError, match=r"hierarchical layers \[0, 2\].*\[1\]"):
        _build(pt, layers=[1, 2])


# ------------------------------------------------------------------ conversion
def test_convert_detects_21_and_loads_back_identically(tmp_path, tiny_pt, capsys):
    out = tmp_path / "converted"
    assert detect_family(tiny_pt) == "vjepa21"
    assert main(["convert", str(tiny_pt), "--out", str(out)]) == 0
    assert "backbone.name=vjepa21" in capsys.readouterr().out
    assert json.loads((out / "config.json").read_text())["model_type"] == "cvsjepa_vjepa21"
    note = json.loads((out / "cvsjepa_conversion.json").read_text())
    assert note["family"] == "vjepa21" and note["checkpoint_key"] == "ema_encoder" and note["preset"] == "tiny"
    assert set(note["ignored_keys"]) == {"img_mod_embed", "patch_embed_img.proj.bias", "patch_embed_img.proj.weight"}
    assert "folded" in note["modality_embedding"] and "V-JEPA 2.1" in (out / "README.md").read_text()
    from_dir, from_pt = _build(out), _build(tiny_pt)
    x = clip(TINY, t=4)
    assert torch.equal(from_dir.extract(x), from_pt.extract(x))
    assert from_dir.weights_fingerprint() == from_pt.weights_fingerprint()
    assert from_dir.describe()["source"] == "hf_dir" and from_pt.describe()["source"] == "meta_checkpoint"
    with pytest.raises(CheckpointError, match="model_type='cvsjepa_vjepa21'.*backbone.name"):
        build_backbone(BackboneConfig(name="vjepa2", path=str(out)))


def test_ema_encoder_is_preferred_over_a_teacher(tmp_path, originals, tiny_pt):
    """A distillation file's ``target_encoder`` can be the (wider) teacher: ``ema_encoder`` is the student."""
    x = clip(TINY, t=4)
    with torch.no_grad():
        ref = originals["tiny"](x.permute(0, 2, 1, 3, 4))
    bb = _build(tiny_pt)
    assert bb.describe()["meta_checkpoint_key"] == "ema_encoder" and (bb.extract(x) - ref).abs().max() < 1e-5
    giant = meta_file(tmp_path / "vjepa2_1_vitg_384.pt", originals["tiny"], key="target_encoder", prefix="backbone.")
    assert _build(giant).describe()["meta_checkpoint_key"] == "target_encoder"


def test_predictor_is_reported_not_loaded(tmp_path, tiny_pt):
    """The ViT-L trap (config depth 24, checkpoint 12): the predictor is never loaded, and the
    report says how deep the file's one is; asking for it as the encoder is a clear error."""
    d = _build(tiny_pt).describe()
    assert d["meta_file_predictor_depth"] == 12 and d["meta_predictor"].startswith("not loaded")
    assert "12 blocks" in d["meta_predictor"] and not any("predictor" in k for k in _build(tiny_pt).state_dict())
    with pytest.raises(CheckpointError, match="--key predictor is not an encoder"):
        convert_checkpoint(tiny_pt, tmp_path / "o", key="predictor")


# ------------------------------------------------------------------ refusals
def _refused(path, name="vjepa21") -> str:
    with pytest.raises(CheckpointError) as e:
        build_backbone(BackboneConfig(name=name, path=str(path)))
    return str(e.value)


@pytest.mark.parametrize("edit, needles", [
    (lambda sd: sd.pop("module.backbone.blocks.1.attn.qkv.bias"),
     ["missing 1 encoder weights", "blocks.1.attn.qkv.bias"]),
    (lambda sd: sd.pop("module.backbone.norms_block.0.weight"), ["missing", "norms_block.0.weight"]),
    (lambda sd: sd.update({"module.backbone.cls_token": torch.zeros(1, 1, 96)}),
     ["not part of a V-JEPA 2.1", "cls_token"]),
    (lambda sd: sd.update({"module.backbone.blocks.0.attn.proj.weight": torch.zeros(96, 48)}),
     ["wrong shapes", "blocks.0.attn.proj.weight (96, 48)"]),
    (lambda sd: sd.update({"module.backbone.blocks.0.mlp.fc3.weight": torch.zeros(96, 96)}), ["SwiGLU", "fc3"]),
    (lambda sd: sd.pop("module.backbone.video_mod_embed"), ["video_mod_embed"]),
], ids=["missing", "missing-norm", "extra", "shape", "swiglu", "no-video-mod-embed"])
def test_partial_or_foreign_loads_are_refused(tmp_path, originals, edit, needles):
    msg = _refused(meta_file(tmp_path / "bad.pt", originals["tiny"], edit=edit))
    for needle in needles:
        assert needle in msg, (needle, msg)


def test_families_are_told_apart(tmp_path, originals):
    from test_meta_checkpoint import OriginalEncoder  # V-JEPA 2's original structure

    from cvsjepa.backbones.vjepa2_presets import PRESETS as V2

    v2 = tmp_path / "vitl.pt"
    torch.save({"target_encoder": OriginalEncoder(V2["tiny"], seed=0).state_dict()}, v2)
    assert detect_family(v2) == "vjepa2"
    assert "set backbone.name=vjepa2" in _refused(v2)
    v21 = meta_file(tmp_path / "v21.pt", originals["tiny"])
    assert "set backbone.name=vjepa21" in _refused(v21, name="vjepa2")  # found under ema_encoder
    v21 = meta_file(tmp_path / "v21t.pt", originals["tiny"], key="target_encoder")
    assert "set backbone.name=vjepa21" in _refused(v21, name="vjepa2")  # under a key V-JEPA 2 reads


# ------------------------------------------------------------------ presets and the released shape
def released_encoder_params(hidden, depth, heads, mlp_ratio, levels=4, patch=16, tubelet=2):
    """The released 2.1 encoder built here on the meta device: every parameter that produces video
    tokens (the image path ``patch_embed_img`` / ``img_mod_embed`` serves T = 1 only, and
    ``video_mod_embed`` folds into the patch-embedding bias)."""
    shape = dict(hidden_size=hidden, num_hidden_layers=depth, num_attention_heads=heads, mlp_ratio=mlp_ratio,
                 patch_size=patch, tubelet_size=tubelet, hierarchical_layers=list(range(depth))[-levels:])
    with torch.device("meta"):
        enc = Encoder21(shape, seed=None)
    image_path = {"patch_embed_img.proj.weight", "patch_embed_img.proj.bias", "img_mod_embed", "video_mod_embed"}
    return sum(q.numel() for n, q in enc.named_parameters() if n not in image_path)


RELEASED = {"vitb": (768, 12, 12, 4.0), "vitl": (1024, 24, 16, 4.0), "vitg": (1408, 40, 22, 48 / 11),
            "vitG": (1664, 48, 26, 64 / 13)}


def test_presets_have_the_released_shapes():
    rows = {r["name"]: r for r in list_vjepa21_presets(16)}
    assert {"vitb", "vitl", "vitg", "vitG", "tiny"} <= set(rows)
    for name, dims in RELEASED.items():
        r = rows[name]
        assert r["params"] == released_encoder_params(*dims), name
        assert r["crop_size"] == 384 and r["tokens_per_clip"] == 8 * 24 * 24 and r["embed_dim"] == dims[0]
    assert abs(rows["vitl"]["params"] / 1e6 - 303.9) < 0.1 and abs(rows["vitl"]["flops_per_clip"] / 1e12 - 4.88) < 0.05


def test_dry_run_counts_the_released_vitl_shape(capsys):
    """`cvsjepa train configs/exp2_vjepa21_vitl.yaml --dry-run` with no weights on disk: a random
    model of the preset's shape, whose backbone parameters are the released ViT-L's."""
    from cvsjepa.config import load_config
    from cvsjepa.train.build import dry_run

    cfg = load_config("configs/exp2_vjepa21_vitl.yaml", ["backbone.preset=vitl-2layers"])
    info = dry_run(cfg)
    assert info["backbone"].startswith("vjepa21-vitl-2layers (random weights)")
    assert info["total_params"] - info["trainable_breakdown"]["head"] == released_encoder_params(1024, 2, 16, 4.0, 2)


@pytest.mark.slow
def test_dry_run_cli_full_vitl(capsys):
    assert main(["train", "configs/exp2_vjepa21_vitl.yaml", "--dry-run"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["backbone"] == "vjepa21-vitl (random weights)"
    assert info["total_params"] - info["trainable_breakdown"]["head"] == released_encoder_params(1024, 24, 16, 4.0)
