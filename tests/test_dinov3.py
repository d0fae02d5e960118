"""DINOv3 per frame: parity with a ViT written here from the original structure (facebookresearch/dinov3
``dinov3/layers/``: fused qkv without key bias, CLS + storage tokens, axial RoPE over patch centres,
LayerScale), converted to the Hugging Face layout the way transformers' released conversions are;
registers dropped; positions fixed while fine-tuning."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from transformers import DINOv3ViTConfig, DINOv3ViTModel

from cvsjepa.backbones import build_backbone
from cvsjepa.backbones.dinov3 import Dinov3FramesBackbone
from cvsjepa.config import BackboneConfig


SHAPE = dict(hidden=64, heads=4, layers=2, mlp=128, registers=3, patch=16)


def rope_tables(h: int, w: int, head_dim: int, base: float = 100.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Axial RoPE over patch centres in [-1, 1] (each axis normalised by its own length): periods
    ``base^(2j / (d/2))`` for ``j < d/4``; angles of y then x, the whole written twice (half-split rotation)."""
    ys = (torch.arange(h) + 0.5) / h * 2 - 1
    xs = (torch.arange(w) + 0.5) / w * 2 - 1
    coords = torch.stack(torch.meshgrid(ys, xs, indexing="ij"), -1).reshape(-1, 2)  # [hw, 2]
    periods = base ** (2 * torch.arange(head_dim // 4) / (head_dim // 2))
    angles = (2 * math.pi * coords[:, :, None] / periods).reshape(len(coords), -1)  # [hw, d/2]
    angles = torch.cat([angles, angles], -1)
    return angles.sin(), angles.cos()


def half_turn(x):
    a, b = x.chunk(2, -1)
    return torch.cat([-b, a], -1)


class Block3(nn.Module):
    def __init__(self, d, heads, mlp):
        super().__init__()
        self.heads = heads
        self.norm1, self.norm2 = nn.LayerNorm(d, eps=1e-5), nn.LayerNorm(d, eps=1e-5)
        self.qkv, self.proj = nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.fc1, self.fc2 = nn.Linear(d, mlp), nn.Linear(mlp, d)
        self.ls1, self.ls2 = nn.Parameter(torch.ones(d)), nn.Parameter(torch.ones(d))

    def attn(self, x, sin, cos):
        b, n, d = x.shape
        bias = self.qkv.bias * torch.cat([torch.ones(d), torch.zeros(d), torch.ones(d)])  # the key bias is masked
        q, k, v = nn.functional.linear(x, self.qkv.weight, bias).reshape(b, n, 3, self.heads, -1).unbind(2)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))
        p = n - sin.shape[0]  # CLS + storage tokens are not rotated
        q = torch.cat([q[:, :, :p], q[:, :, p:] * cos + half_turn(q[:, :, p:]) * sin], 2)
        k = torch.cat([k[:, :, :p], k[:, :, p:] * cos + half_turn(k[:, :, p:]) * sin], 2)
        a = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]), -1)
        return self.proj((a @ v).transpose(1, 2).reshape(b, n, d))

    def forward(self, x, sin, cos):
        x = x + self.ls1 * self.attn(self.norm1(x), sin, cos)
        return x + self.ls2 * self.fc2(nn.functional.gelu(self.fc1(self.norm2(x))))


class OriginalDinov3(nn.Module):
    def __init__(self, s, seed):
        super().__init__()
        d = s["hidden"]
        self.s = s
        self.patch_embed = nn.Conv2d(3, d, s["patch"], s["patch"])
        self.cls_token = nn.Parameter(torch.zeros(1, 1, d))
        self.storage_tokens = nn.Parameter(torch.zeros(1, s["registers"], d))
        self.mask_token = nn.Parameter(torch.zeros(1, d))
        self.blocks = nn.ModuleList(Block3(d, s["heads"], s["mlp"]) for _ in range(s["layers"]))
        self.norm = nn.LayerNorm(d, eps=1e-5)
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for q in self.parameters():
                q.copy_(torch.randn(q.shape, generator=g) * (0.5 if q.ndim <= 1 else 0.15))

    def forward(self, images):  # [B, 3, H, W] -> normed patch tokens [B, hw, D]
        x = self.patch_embed(images)
        h, w = x.shape[-2:]
        x = x.flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(len(x), -1, -1), self.storage_tokens.expand(len(x), -1, -1), x], 1)
        sin, cos = rope_tables(h, w, self.s["hidden"] // self.s["heads"])
        for blk in self.blocks:
            x = blk(x, sin, cos)
        return self.norm(x)[:, 1 + self.s["registers"]:]

    def hf_state_dict(self) -> dict[str, torch.Tensor]:
        """The released conversion's renaming: qkv split into q/k/v_proj (no key bias), ls -> layer_scale."""
        sd, d = {}, self.s["hidden"]
        sd["embeddings.cls_token"], sd["embeddings.register_tokens"] = self.cls_token, self.storage_tokens
        sd["embeddings.mask_token"] = self.mask_token[:, None]
        sd["embeddings.patch_embeddings.weight"], sd["embeddings.patch_embeddings.bias"] = (
            self.patch_embed.weight, self.patch_embed.bias)
        for i, b in enumerate(self.blocks):
            pre = f"model.layer.{i}."
            for j, part in enumerate(("q_proj", "k_proj", "v_proj")):
                sd[pre + f"attention.{part}.weight"] = b.qkv.weight[j * d:(j + 1) * d]
                if part != "k_proj":
                    sd[pre + f"attention.{part}.bias"] = b.qkv.bias[j * d:(j + 1) * d]
            for ours, theirs in (("norm1", "norm1"), ("norm2", "norm2"), ("proj", "attention.o_proj"),
                                 ("fc1", "mlp.up_proj"), ("fc2", "mlp.down_proj")):
                for leaf in ("weight", "bias"):
                    sd[pre + f"{theirs}.{leaf}"] = getattr(getattr(b, ours), leaf)
            sd[pre + "layer_scale1.lambda1"], sd[pre + "layer_scale2.lambda1"] = b.ls1, b.ls2
        sd["norm.weight"], sd["norm.bias"] = self.norm.weight, self.norm.bias
        return {k: v.detach().clone() for k, v in sd.items()}


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    ref = OriginalDinov3(SHAPE, seed=0).eval()
    cfg = DINOv3ViTConfig(hidden_size=SHAPE["hidden"], num_attention_heads=SHAPE["heads"],
                          num_hidden_layers=SHAPE["layers"], intermediate_size=SHAPE["mlp"],
                          num_register_tokens=SHAPE["registers"], patch_size=SHAPE["patch"])
    model = DINOv3ViTModel(cfg)
    model.load_state_dict(ref.hf_state_dict(), strict=True)
    d = tmp_path_factory.mktemp("dinov3") / "dinov3-small-test"
    model.save_pretrained(d)
    return ref, d


def test_parity_with_the_original_structure_per_frame(converted):
    ref, d = converted
    bb = build_backbone(BackboneConfig(name="dinov3", path=str(d))).freeze()
    assert isinstance(bb, Dinov3FramesBackbone) and bb.num_prefix_tokens == 1 + SHAPE["registers"]
    assert bb.crop_size == 256 and bb.token_grid(3) == (3, 16, 16)  # a custom shape gets the default crop
    x = torch.randn(2, 3, 3, 256, 256, generator=torch.Generator().manual_seed(1))
    got = bb.extract(x)
    with torch.no_grad():
        want = torch.cat([ref(x[:, t]) for t in range(3)], 1)  # frame-major: frame 0's 256 patches first
    print(f"DINOv3 parity: max abs diff {(got - want).abs().max():.2e}")
    assert got.shape == (2, 3 * 256, 64) and (got - want).abs().max() < 1e-5


def test_positions_do_not_jitter_when_fine_tuning():
    """DINOv3's RoPE rescales coordinates at random in training mode (pre-training only): off here."""
    bb = build_backbone(BackboneConfig(name="dinov3", preset="tiny"))
    assert bb.model.config.pos_embed_rescale == 2.0
    x = torch.randn(1, 2, 3, 64, 64)
    bb.train()
    assert bb.training and not bb.model.rope_embeddings.training
    torch.manual_seed(0)
    a = bb(x)
    torch.manual_seed(1)
    assert torch.equal(a, bb(x)) and torch.equal(a, bb.eval()(x))
