"""V-JEPA 2.1 encoders (``backbone.name=vjepa21``): Meta's ``.pt`` or a ``cvsjepa convert`` directory.

The model is ``VJEPA21Model`` (``vjepa21_model.py``: transformers' V-JEPA 2 encoder with 2.1's RoPE
pairing and interpolation, modality embedding and hierarchical norms); presets in
``vjepa21_presets.py`` (ViT-B/L/g/G at 384 px), the ``.pt`` loader in ``meta21.py``.

Tokens: ``[B, (T/2) * 24 * 24, D]`` at 384 px (4608 for 16 frames), the output of the last block
after its hierarchical norm. Multilevel features (``backbone.layers``) must be 2.1's hierarchical
layers (ViT-L: ``[5, 11, 17, 23]``), each after its own norm, as the original's ``out_layers``;
another layer has no norm of its own and is refused.

Weights (``backbone.path``), nothing is downloaded:

* Meta's ``vjepa2_1_vit{b,l}_dist_vitG_384.pt`` / ``vjepa2_1_vit{g,G}_384.pt``: converted on load;
* a directory written by ``cvsjepa convert`` (``config.json`` with ``model_type: cvsjepa_vjepa21``
  and ``model.safetensors``): transformers has no 2.1 classes, so this is cvsjepa's own format.
"""

from __future__ import annotations

import logging
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..config import BackboneConfig
from ..errors import ConfigError
from . import _hf, presets
from .base import Backbone
from .flops import video_vit_flops
from .meta21 import load_meta21_checkpoint
from .meta_format import is_meta_checkpoint_path
from .vjepa21_model import MODEL_TYPE, VJEPA21Model
from .vjepa21_presets import (
    FAMILY,
    FILES,
    PRESETS,
    TOKEN_KEYS,
    match_preset,
    preset_config,
)

log = logging.getLogger(__name__)

PARAMS_SCOPE = "encoder, video path (image path and predictor excluded)"


@lru_cache(maxsize=None)
def _params(preset: str) -> int:
    with torch.device("meta"):  # shapes only: ViT-G costs nothing to count
        model = VJEPA21Model(preset_config(preset))
    return sum(p.numel() for p in model.parameters())


def preset_flops(preset: str, num_frames: int = 16) -> int:
    """Encoder forward FLOPs (2 x MACs) for one clip of ``num_frames`` at the preset's crop."""
    kw = PRESETS[preset]
    return video_vit_flops(hidden=kw["hidden_size"], layers=kw["num_hidden_layers"],
                           mlp_hidden=int(kw["hidden_size"] * kw["mlp_ratio"]), num_frames=num_frames,
                           crop=kw["crop_size"], patch=kw["patch_size"], tubelet=kw["tubelet_size"])


def list_vjepa21_presets(num_frames: int = 16) -> list[dict[str, Any]]:
    return [presets.preset_row(
        name, FAMILY, kw, params=_params(name), params_scope=PARAMS_SCOPE, crop=kw["crop_size"],
        tubelet=kw["tubelet_size"], clip_frames=num_frames, flops=preset_flops(name, num_frames),
        weights=f"Meta {FILES[name]}, or its cvsjepa convert dir" if name in FILES else "random (built in)")
        for name, kw in PRESETS.items()]


class VJEPA21Backbone(Backbone):
    """``VJEPA21Model`` as an encoder. LoRA targets: ``model.encoder.layer.{i}.attention.{query,key,
    value,proj}`` (the same Linears as V-JEPA 2). ``source``: ``random``, ``hf_dir`` or
    ``meta_checkpoint`` (then ``source_info`` says which key, what was ignored, the predictor)."""

    def __init__(self, model: VJEPA21Model, *, path: str = "", is_random: bool, requested_preset: str = "",
                 layers: "list[int] | tuple[int, ...]" = (), source: str = "", source_info: dict | None = None):
        super().__init__()
        cfg = model.config
        self.family = FAMILY
        self._set_identity(model, preset=match_preset(cfg), requested_preset=requested_preset,
                           embed_dim=cfg.hidden_size, crop_size=cfg.crop_size, patch_size=cfg.patch_size,
                           tubelet_size=cfg.tubelet_size, num_layers=cfg.num_hidden_layers, layers=layers,
                           is_random=is_random, path=path, source=source, source_info=source_info)
        self.hierarchical_layers = tuple(cfg.levels())
        off = [i for i in self.layers if i not in self.hierarchical_layers]
        if off:
            raise ConfigError(f"backbone.layers={list(layers)}: V-JEPA 2.1 has a norm only for its hierarchical layers "
                              f"{list(self.hierarchical_layers)}, and layer(s) {off} have none; pick from those "
                              f"(e.g. backbone.layers={list(self.hierarchical_layers)})")

    @property
    def config(self):
        return self.model.config

    def _encode(self, video: Tensor) -> Tensor:
        if not self.layers:
            return self.model(pixel_values_videos=video).last_hidden_state
        x = self.model.encoder.embeddings(video)
        levels = self._run_levels(x, lambda block, h: block(h, None)[0], norm_of=self.model.level_norm)
        return torch.cat(levels, dim=1)

    def fingerprint_config(self) -> dict[str, Any]:
        return {k: getattr(self.config, k) for k in TOKEN_KEYS}

    def describe(self) -> dict[str, Any]:
        d = super().describe()
        c = self.config
        grid = self.crop_size // self.patch_size
        rope = (f"2.1 pairing (repeat_interleave); row/column positions x {c.rope_pretrained_grid - 1}/{grid - 1}"
                if c.rope_interpolate else "2.1 pairing (repeat_interleave), positions not rescaled")
        d.update(params_scope=PARAMS_SCOPE, num_heads=int(c.num_attention_heads), mlp_ratio=float(c.mlp_ratio),
                 frames_per_clip=int(c.frames_per_clip), hierarchical_layers=list(self.hierarchical_layers), rope=rope,
                 preset_requested=self.requested_preset, attn_implementation=str(c._attn_implementation),
                 source=self.source)
        if self.source == "meta_checkpoint":
            d.update({f"meta_{k}": v for k, v in self.source_info.items()})
        return d


def check_hf_dir(path: str) -> Path:
    return _hf.check_hf_dir(path, (MODEL_TYPE,), "`cvsjepa convert`'s output for a V-JEPA 2.1 .pt")


def load_hf_model(path: str, attn_implementation: str = "sdpa") -> VJEPA21Model:
    """``VJEPA21Model`` from a ``cvsjepa convert`` directory, float32, eval; refuses partial loads."""
    return _hf.load_pretrained(VJEPA21Model, check_hf_dir(path), attn_implementation=attn_implementation,
                               family="V-JEPA 2.1")


def build_vjepa21(cfg: BackboneConfig, device: torch.device | str | None = None) -> VJEPA21Backbone:
    """A 2.1 ``.pt`` or converted directory when ``cfg.path`` is set, else a seeded random preset
    (``tiny``, or any preset with ``random_weights=true``)."""
    if cfg.path:
        presets.check_one_source(cfg)
        if is_meta_checkpoint_path(cfg.path):
            model, info = load_meta21_checkpoint(cfg.path, preset_hint=cfg.preset,
                                                 attn_implementation=cfg.attn_implementation)
            backbone = VJEPA21Backbone(model, path=cfg.path, is_random=False, requested_preset=cfg.preset,
                                       layers=cfg.layers, source="meta_checkpoint", source_info=info)
        else:
            backbone = VJEPA21Backbone(load_hf_model(cfg.path, cfg.attn_implementation), path=cfg.path,
                                       is_random=False, requested_preset=cfg.preset, layers=cfg.layers)
        if backbone.preset != cfg.preset:
            log.info("backbone.preset=%s, but %s holds a %s-shaped model: using the weights' shape",
                     cfg.preset, cfg.path, backbone.preset)
    else:
        config = preset_config(cfg.preset, cfg.attn_implementation)
        model = presets.random_model(cfg, lambda: VJEPA21Model(config), "V-JEPA 2.1",
                                     f"/path/to/{FILES.get(cfg.preset, 'checkpoint.pt')} (or its cvsjepa convert "
                                     f"directory)")
        backbone = VJEPA21Backbone(model, is_random=True, requested_preset=cfg.preset, layers=cfg.layers)
    if device is not None:
        backbone.to(device)
    return backbone.eval()
