"""DINOv2, an image model, applied to every frame: "is video pre-training worth it" in one config line.

Each frame of ``[B, T, 3, c, c]`` runs through ``transformers.Dinov2Model`` on its own; the CLS
(and, for ``dinov2_with_registers``, the register) tokens are dropped, the patch tokens kept, and
the frames stacked over time: tokens ``[B, T * h * w, D]`` with ``token_grid(T) = (T, h, w)``,
``h = w = c / 14`` (16 at the default crop 224), frame-major like the video backbones, and
``tubelet_size = 1``. No token sees another frame: time is left entirely to the head.

=========  ======  ======  =====  =====  ===============
preset     hidden  layers  heads  crop   example weights
=========  ======  ======  =====  =====  ===============
small      384     12      6      224    facebook/dinov2-small
base       768     12      12     224    facebook/dinov2-base
large      1024    24      16     224    facebook/dinov2-large
tiny       32      2       2      56     random, for tests (4 x 4 patches of 14)
=========  ======  ======  =====  =====  ===============

Positions: DINOv2 learns position embeddings for ``config.image_size`` (518 in the released
configs, a 37 x 37 grid) and interpolates them (bicubic) to the input size, so the crop is a
choice: the presets use 224 (DINOv2's linear-probe resolution); a loaded directory uses the crop
of the preset with its shape (224), whatever its ``image_size``. Preprocessing: ImageNet mean/std,
the same path as V-JEPA 2. The final LayerNorm is applied to the tokens (and to each multilevel level).
"""

from __future__ import annotations

import logging
from functools import lru_cache
from typing import Any

import torch
from torch import Tensor
from transformers import (
    Dinov2Config,
    Dinov2Model,
    Dinov2WithRegistersConfig,
    Dinov2WithRegistersModel,
)

from ..config import BackboneConfig
from ..errors import ConfigError
from . import _hf, presets
from .base import Backbone
from .flops import per_frame_vit_flops

log = logging.getLogger(__name__)

FAMILY = "dinov2"
DEFAULT_CROP = 224
_RELEASED = dict(image_size=518, patch_size=14, mlp_ratio=4, layerscale_value=1.0)
PRESETS: dict[str, dict[str, Any]] = {
    "tiny": dict(image_size=56, patch_size=14, mlp_ratio=2, hidden_size=32, num_hidden_layers=2, num_attention_heads=2),
    "small": dict(**_RELEASED, hidden_size=384, num_hidden_layers=12, num_attention_heads=6),
    "base": dict(**_RELEASED, hidden_size=768, num_hidden_layers=12, num_attention_heads=12),
    "large": dict(**_RELEASED, hidden_size=1024, num_hidden_layers=24, num_attention_heads=16),
}
CROPS = {"tiny": 56, "small": DEFAULT_CROP, "base": DEFAULT_CROP, "large": DEFAULT_CROP}
HF_REPOS = {"small": "facebook/dinov2-small", "base": "facebook/dinov2-base", "large": "facebook/dinov2-large"}
_MODELS = {"dinov2": (Dinov2Config, Dinov2Model), "dinov2_with_registers": (Dinov2WithRegistersConfig,
                                                                             Dinov2WithRegistersModel)}
_SHAPE_KEYS = ("hidden_size", "num_hidden_layers", "num_attention_heads", "mlp_ratio", "patch_size")
_TOKEN_KEYS = _SHAPE_KEYS + ("image_size", "layer_norm_eps", "hidden_act", "qkv_bias", "use_swiglu_ffn",
                             "num_channels", "model_type")


def preset_config(preset: str, attn_implementation: str = "sdpa") -> Dinov2Config:
    return presets.named_config(PRESETS, preset, Dinov2Config, FAMILY, attn_implementation)


def match_preset(config: Any) -> str:
    return presets.match_preset(PRESETS, config, Dinov2Config, _SHAPE_KEYS + ("use_swiglu_ffn",))


@lru_cache(maxsize=None)
def _params(preset: str) -> int:
    with torch.device("meta"):
        model = Dinov2Model(Dinov2Config(**PRESETS[preset]))
    return sum(p.numel() for n, p in model.named_parameters() if "mask_token" not in n)


def preset_flops(preset: str, num_frames: int = 16) -> int:
    """Forward FLOPs of one clip: ``num_frames`` separate images of 1 + (crop / 14)^2 tokens."""
    kw = PRESETS[preset]
    return per_frame_vit_flops(hidden=kw["hidden_size"], layers=kw["num_hidden_layers"],
                               mlp_hidden=int(kw["hidden_size"] * kw["mlp_ratio"]), num_frames=num_frames,
                               crop=CROPS[preset], patch=kw["patch_size"], extra_tokens=1)


def frame_preset_rows(family: str, table: dict, crops: dict, repos: dict, params, flops,
                      num_frames: int) -> list[dict[str, Any]]:
    """`cvsjepa backbones` rows of a per-frame image family (DINOv2, DINOv3): ``params(name)`` and
    ``flops(name, num_frames)`` count one clip of ``num_frames`` frames."""
    return [presets.preset_row(
        name, family, kw, params=params(name), params_scope="encoder (per frame)", crop=crops[name], tubelet=1,
        clip_frames=num_frames, flops=flops(name, num_frames),
        weights="random (built in)" if name == "tiny" else f"local HF dir, e.g. {repos[name]}")
        for name, kw in table.items()]


def list_dinov2_presets(num_frames: int = 16) -> list[dict[str, Any]]:
    return frame_preset_rows(FAMILY, PRESETS, CROPS, HF_REPOS, _params, preset_flops, num_frames)


class Dinov2FramesBackbone(Backbone):
    """``Dinov2Model`` (or ``Dinov2WithRegistersModel``) on each frame; patch tokens stacked over time.

    Per-frame image families (``dinov3``) subclass it: they set ``family`` and ``token_keys`` and
    override ``_match`` (preset name of a config) and ``_frame_levels`` (one frame batch -> levels).
    """

    family = FAMILY
    token_keys = _TOKEN_KEYS
    attention_modules = {"query": "attention.q_proj", "key": "attention.k_proj", "value": "attention.v_proj",
                         "output": "attention.o_proj"}

    def __init__(self, model: Any, *, crop_size: int, path: str = "", is_random: bool, requested_preset: str = "",
                 layers: "list[int] | tuple[int, ...]" = ()):
        super().__init__()
        cfg = model.config
        self._set_identity(model, preset=self._match(cfg), requested_preset=requested_preset,
                           embed_dim=cfg.hidden_size, crop_size=crop_size, patch_size=cfg.patch_size, tubelet_size=1,
                           num_layers=cfg.num_hidden_layers, layers=layers, is_random=is_random, path=path)
        self.num_prefix_tokens = 1 + int(getattr(cfg, "num_register_tokens", 0) or 0)  # CLS (+ registers)
        if self.crop_size % self.patch_size:
            raise ConfigError(f"{self.family}: crop {self.crop_size} is not a multiple of the patch size "
                              f"{self.patch_size}")

    @staticmethod
    def _match(config: Any) -> str:
        return match_preset(config)

    @property
    def config(self) -> Any:
        return self.model.config

    def _frame_levels(self, frames: Tensor) -> list[Tensor]:
        """``frames [B*T, 3, c, c]`` -> per level ``[B*T, prefix + h*w, D]`` (final-normed)."""
        if not self.layers:
            return [self.model(pixel_values=frames).last_hidden_state]
        x = self.model.embeddings(frames)
        return self._run_levels(x, lambda block, h: block(h, None), self.model.layernorm)

    def _encode(self, video: Tensor) -> Tensor:
        b, t = video.shape[:2]
        levels = self._frame_levels(video.reshape(b * t, *video.shape[2:]))
        # [B*T, prefix + h*w, D] -> drop CLS/registers -> [B, T*h*w, D] per level, levels along tokens
        return torch.cat([lv[:, self.num_prefix_tokens:].reshape(b, -1, lv.shape[-1]) for lv in levels], dim=1)

    def fingerprint_config(self) -> dict[str, Any]:
        return {"crop_size": self.crop_size, **{k: getattr(self.config, k, None) for k in self.token_keys}}

    def num_params(self) -> int:
        """Parameters that produce the tokens (``mask_token`` is used only in pre-training)."""
        return sum(p.numel() for n, p in self.model.named_parameters() if "mask_token" not in n)

    def describe(self) -> dict[str, Any]:
        d = super().describe()
        d.update(num_heads=int(self.config.num_attention_heads), per_frame=True, model_type=self.config.model_type,
                 prefix_tokens_dropped=self.num_prefix_tokens, preset_requested=self.requested_preset,
                 attn_implementation=str(self.config._attn_implementation),
                 source="random" if self.is_random else "hf_dir")
        return d


def build_dinov2(cfg: BackboneConfig, device: torch.device | str | None = None) -> Dinov2FramesBackbone:
    """A local HF directory (``model_type`` dinov2 or dinov2_with_registers) when ``cfg.path`` is
    set, else a seeded random preset (``tiny``, or any preset with ``random_weights=true``)."""
    if cfg.path:
        presets.check_one_source(cfg)
        p = _hf.check_hf_dir(cfg.path, tuple(_MODELS), HF_REPOS["base"])
        model_cls = _MODELS[_hf.read_model_type(p)][1]
        model = _hf.load_pretrained(model_cls, p, attn_implementation=cfg.attn_implementation, family="DINOv2",
                                    optional_missing=("embeddings.mask_token",))
        crop = CROPS.get(match_preset(model.config), DEFAULT_CROP)
        backbone = Dinov2FramesBackbone(model, crop_size=crop, path=cfg.path, is_random=False,
                                        requested_preset=cfg.preset, layers=cfg.layers)
    else:
        config = preset_config(cfg.preset, cfg.attn_implementation)
        model = presets.random_model(cfg, lambda: Dinov2Model(config), "DINOv2",
                                     f"/path/to/hf_dir (e.g. a snapshot of {HF_REPOS.get(cfg.preset)})")
        backbone = Dinov2FramesBackbone(model, crop_size=CROPS[cfg.preset], is_random=True,
                                        requested_preset=cfg.preset, layers=cfg.layers)
    if device is not None:
        backbone.to(device)
    return backbone.eval()
