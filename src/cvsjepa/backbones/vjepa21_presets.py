"""The ``vjepa21`` family's preset table, shared by the backbone (``vjepa21.py``) and the loader
(``meta21.py``). Shapes from facebookresearch/vjepa2 ``src/hub/backbones.py`` (V-JEPA 2.1 section)
and ``app/vjepa_2_1/models/vision_transformer.py``:

======  ================================  ======  ======  =====  =========  =====  =================
preset  hub name / file                   hidden  layers  heads  mlp ratio  crop   hierarchical layers
======  ================================  ======  ======  =====  =========  =====  =================
vitb    vjepa2_1_vitb_dist_vitG_384.pt    768     12      12     4          384    2, 5, 8, 11
vitl    vjepa2_1_vitl_dist_vitG_384.pt    1024    24      16     4          384    5, 11, 17, 23
vitg    vjepa2_1_vitg_384.pt              1408    40      22     48/11      384    9, 19, 29, 39
vitG    vjepa2_1_vitG_384.pt              1664    48      26     64/13      384    11, 23, 37, 47
tiny    random, for tests                 96      2       4      2          96     0, 1
======  ================================  ======  ======  =====  =========  =====  =================

All: patch 16, tubelet 2, 64-frame pre-training, RoPE with ``interpolate_rope`` (positions rescaled
to the 16 x 16 pre-training grid), video modality embedding, GELU MLP, no registers, no CLS. The
distilled ViT-B/L keep their encoder under ``ema_encoder``, the giants under ``target_encoder``;
``ema_encoder`` is preferred because a distillation checkpoint's ``target_encoder`` may be the
teacher. The tiny preset's grid is 6 x 6, so its RoPE interpolation is exercised (scale 15/5).
"""

from __future__ import annotations

from typing import Any

from . import presets
from .vjepa21_model import HIERARCHICAL_LAYERS, VJEPA21Config

FAMILY = "vjepa21"
ENCODER_KEYS = ("ema_encoder", "target_encoder", "encoder")  # in order of preference
_RELEASED = dict(crop_size=384, patch_size=16, tubelet_size=2, frames_per_clip=64, rope_interpolate=True,
                 rope_pretrained_grid=16)


def _released(hidden: int, layers: int, heads: int, mlp_ratio: float) -> dict[str, Any]:
    return dict(**_RELEASED, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                mlp_ratio=mlp_ratio, hierarchical_layers=HIERARCHICAL_LAYERS[layers])


PRESETS: dict[str, dict[str, Any]] = {
    "tiny": dict(crop_size=96, patch_size=16, tubelet_size=2, frames_per_clip=8, rope_interpolate=True,
                 rope_pretrained_grid=16, hidden_size=96, num_attention_heads=4, num_hidden_layers=2, mlp_ratio=2.0,
                 hierarchical_layers=[0, 1]),
    "vitb": _released(768, 12, 12, 4.0),
    "vitl": _released(1024, 24, 16, 4.0),
    "vitg": _released(1408, 40, 22, 48 / 11),
    "vitG": _released(1664, 48, 26, 64 / 13),
}
FILES = {"vitb": "vjepa2_1_vitb_dist_vitG_384.pt", "vitl": "vjepa2_1_vitl_dist_vitG_384.pt",
         "vitg": "vjepa2_1_vitg_384.pt", "vitG": "vjepa2_1_vitG_384.pt"}
SHAPE_KEYS = ("hidden_size", "num_hidden_layers", "num_attention_heads", "mlp_ratio", "crop_size", "patch_size",
              "tubelet_size", "hierarchical_layers")
TOKEN_KEYS = SHAPE_KEYS + ("layer_norm_eps", "hidden_act", "qkv_bias", "in_chans", "rope_interpolate",
                           "rope_pretrained_grid")


def preset_config(preset: str, attn_implementation: str = "sdpa") -> VJEPA21Config:
    """The ``VJEPA21Config`` of a named preset; ConfigError naming ``backbone.preset`` if unknown."""
    return presets.named_config(PRESETS, preset, VJEPA21Config, FAMILY, attn_implementation)


def match_preset(config: VJEPA21Config) -> str:
    """Name of the preset with this encoder shape, or ``"custom"``."""
    return presets.match_preset(PRESETS, config, VJEPA21Config, SHAPE_KEYS)


def preset_shape(kw: dict[str, Any]) -> dict[str, Any]:
    """What the tensors of a preset show (``meta21.infer_shape`` reads the same fields)."""
    return {"hidden_size": kw["hidden_size"], "in_chans": kw.get("in_chans", 3), "tubelet_size": kw["tubelet_size"],
            "patch_size": kw["patch_size"], "num_hidden_layers": kw["num_hidden_layers"],
            "mlp_hidden": int(kw["hidden_size"] * kw["mlp_ratio"]), "num_norms": len(kw["hierarchical_layers"])}
