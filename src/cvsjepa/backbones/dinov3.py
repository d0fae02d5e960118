"""DINOv3, an image model, applied to every frame through ``transformers.DINOv3ViTModel``.

Like ``dinov2`` (whose per-frame backbone this subclasses): each frame of ``[B, T, 3, c, c]`` runs on
its own, the CLS and the 4 register tokens are dropped, and the patch tokens are stacked over time:
``[B, T * h * w, D]``, ``token_grid(T) = (T, h, w)``, ``h = w = c / 16``, ``tubelet_size = 1``.
A recent surgical phase study found per-frame DINOv3 features ahead of V-JEPA 2; this family makes
that comparison one config line.

The presets are the sizes transformers ships conversions for (``convert_dinov3_vit_to_hf.py``;
weights ``facebook/dinov3-vit*16-pretrain-lvd1689m``), all patch 16, 4 registers, LayerScale,
RoPE (theta 100), no bias on the key projection:

==========  ======  ======  =====  ============  ===============  ============================
preset      hidden  layers  heads  MLP           crop             example weights
==========  ======  ======  =====  ============  ===============  ============================
small       384     12      6      GELU 1536     256              dinov3-vits16-pretrain-lvd1689m
small-plus  384     12      6      SwiGLU 1536   256              dinov3-vits16plus-...
base        768     12      12     GELU 3072     256              dinov3-vitb16-...
large       1024    24      16     GELU 4096     256              dinov3-vitl16-...
huge-plus   1280    32      20     SwiGLU 5120   256              dinov3-vith16plus-...
7b          4096    40      32     SwiGLU 8192   256              dinov3-vit7b16-... (no q/v bias)
tiny        32      2       2      GELU 64       64               random, for tests
==========  ======  ======  =====  ============  ===============  ============================

Crop 256: a 16 x 16 grid per frame, as V-JEPA 2's and DINOv2's at 224, and the resolution the
SurgMotion benchmark probes DINOv3 at. DINOv3 places RoPE by patch centres normalised to [-1, 1],
so any multiple of 16 is a valid crop; the backbone still checks that the input has its crop.

Positions in training: DINOv3's RoPE module jitters/rescales the coordinates whenever it is in
training mode (``pos_embed_rescale=2`` in the released configs), a pre-training augmentation.
cvsjepa keeps that module in eval mode also when it fine-tunes (LoRA, unfreezing), so the
positions a head is trained on are the ones it is evaluated on.
"""

from __future__ import annotations

import logging
from functools import lru_cache
from typing import Any

import torch
from torch import Tensor
from transformers import DINOv3ViTConfig, DINOv3ViTModel
from transformers.models.dinov3_vit.modeling_dinov3_vit import (
    DINOv3ViTRopePositionEmbedding,
)

from ..config import BackboneConfig
from . import _hf, presets
from .dinov2 import Dinov2FramesBackbone, frame_preset_rows
from .flops import per_frame_vit_flops

log = logging.getLogger(__name__)

FAMILY = "dinov3"
MODEL_TYPE = "dinov3_vit"
DEFAULT_CROP = 256
_RELEASED = dict(patch_size=16, num_register_tokens=4, layerscale_value=1.0)
_GATED = dict(use_gated_mlp=True, hidden_act="silu")
PRESETS: dict[str, dict[str, Any]] = {
    "tiny": dict(patch_size=16, num_register_tokens=2, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                 intermediate_size=64, image_size=64),
    "small": dict(**_RELEASED, hidden_size=384, num_hidden_layers=12, num_attention_heads=6, intermediate_size=1536),
    "small-plus": dict(**_RELEASED, **_GATED, hidden_size=384, num_hidden_layers=12, num_attention_heads=6,
                       intermediate_size=1536),
    "base": dict(**_RELEASED, hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072),
    "large": dict(**_RELEASED, hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096),
    "huge-plus": dict(**_RELEASED, **_GATED, hidden_size=1280, num_hidden_layers=32, num_attention_heads=20,
                      intermediate_size=5120),
    "7b": dict(**_RELEASED, **_GATED, hidden_size=4096, num_hidden_layers=40, num_attention_heads=32,
               intermediate_size=8192, query_bias=False, value_bias=False),
}
CROPS = {name: 64 if name == "tiny" else DEFAULT_CROP for name in PRESETS}
_HUB_SIZES = {"small": "vits16", "small-plus": "vits16plus", "base": "vitb16", "large": "vitl16",
              "huge-plus": "vith16plus", "7b": "vit7b16"}
HF_REPOS = {k: f"facebook/dinov3-{v}-pretrain-lvd1689m" for k, v in _HUB_SIZES.items()}
_SHAPE_KEYS = ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "patch_size",
               "use_gated_mlp", "num_register_tokens")
_TOKEN_KEYS = _SHAPE_KEYS + ("layer_norm_eps", "hidden_act", "query_bias", "key_bias", "value_bias", "proj_bias",
                             "mlp_bias", "rope_theta", "num_channels", "model_type")


def preset_config(preset: str, attn_implementation: str = "sdpa") -> DINOv3ViTConfig:
    return presets.named_config(PRESETS, preset, DINOv3ViTConfig, FAMILY, attn_implementation)


def match_preset(config: Any) -> str:
    return presets.match_preset(PRESETS, config, DINOv3ViTConfig, _SHAPE_KEYS)


@lru_cache(maxsize=None)
def _params(preset: str) -> int:
    with torch.device("meta"):
        model = DINOv3ViTModel(DINOv3ViTConfig(**PRESETS[preset]))
    return sum(p.numel() for n, p in model.named_parameters() if "mask_token" not in n)


def preset_flops(preset: str, num_frames: int = 16) -> int:
    """Forward FLOPs of one clip: ``num_frames`` images of 1 + registers + (crop / 16)^2 tokens."""
    kw = {**DINOv3ViTConfig().to_dict(), **PRESETS[preset]}
    return per_frame_vit_flops(hidden=kw["hidden_size"], layers=kw["num_hidden_layers"],
                               mlp_hidden=kw["intermediate_size"], num_frames=num_frames, crop=CROPS[preset],
                               patch=kw["patch_size"], extra_tokens=1 + kw["num_register_tokens"],
                               mlp_matrices=3 if kw["use_gated_mlp"] else 2)


def list_dinov3_presets(num_frames: int = 16) -> list[dict[str, Any]]:
    return frame_preset_rows(FAMILY, PRESETS, CROPS, HF_REPOS, _params, preset_flops, num_frames)


class Dinov3FramesBackbone(Dinov2FramesBackbone):
    """``DINOv3ViTModel`` on each frame; blocks at ``model.model.layer``, final norm ``model.norm``."""

    family = FAMILY
    token_keys = _TOKEN_KEYS
    blocks_path = "model.layer"

    @staticmethod
    def _match(config: Any) -> str:
        return match_preset(config)

    def _frame_levels(self, frames: Tensor) -> list[Tensor]:
        if not self.layers:
            return [self.model(pixel_values=frames).last_hidden_state]
        frames = frames.to(self.model.embeddings.patch_embeddings.weight.dtype)
        x = self.model.embeddings(frames)
        pos = self.model.rope_embeddings(frames)
        return self._run_levels(x, lambda block, h: block(h, position_embeddings=pos), self.model.norm)

    def train(self, mode: bool = True) -> "Dinov3FramesBackbone":
        super().train(mode)
        for m in self.modules():  # the RoPE coordinate augmentation is for pre-training only
            if isinstance(m, DINOv3ViTRopePositionEmbedding):
                m.eval()
        return self

    def describe(self) -> dict[str, Any]:
        d = super().describe()
        d.update(rope_augmentation="off (kept in eval mode: training and inference see the same positions)")
        return d


def build_dinov3(cfg: BackboneConfig, device: torch.device | str | None = None) -> Dinov3FramesBackbone:
    """A local HF directory (``model_type`` dinov3_vit) when ``cfg.path`` is set, else a seeded
    random preset (``tiny``, or any preset with ``random_weights=true``)."""
    if cfg.path:
        presets.check_one_source(cfg)
        p = _hf.check_hf_dir(cfg.path, (MODEL_TYPE,), HF_REPOS["large"])
        model = _hf.load_pretrained(DINOv3ViTModel, p, attn_implementation=cfg.attn_implementation, family="DINOv3",
                                    optional_missing=("embeddings.mask_token",))
        backbone = Dinov3FramesBackbone(model, crop_size=CROPS.get(match_preset(model.config), DEFAULT_CROP),
                                        path=cfg.path, is_random=False, requested_preset=cfg.preset, layers=cfg.layers)
    else:
        config = preset_config(cfg.preset, cfg.attn_implementation)
        model = presets.random_model(cfg, lambda: DINOv3ViTModel(config), "DINOv3",
                                     f"/path/to/hf_dir (e.g. a snapshot of {HF_REPOS.get(cfg.preset)})")
        backbone = Dinov3FramesBackbone(model, crop_size=CROPS[cfg.preset], is_random=True,
                                        requested_preset=cfg.preset, layers=cfg.layers)
    if device is not None:
        backbone.to(device)
    return backbone.eval()
