"""V-JEPA 2 encoders through ``transformers.VJEPA2Model``, from local HF directories or Meta's ``.pt``.

Shapes (``PRESETS``) follow the released checkpoints (reference: shared/reference/vjepa2.md):

=========  ======  ======  =====  =========  =====  ===============  =====================
preset     hidden  layers  heads  mlp ratio  crop   encoder params   TFLOP / 16-frame clip
=========  ======  ======  =====  =========  =====  ===============  =====================
vitl       1024    24      16     4          256    303.9 M          1.66
vith       1280    32      16     4          256    631.6 M          3.27
vitg       1408    40      22     48/11      256    1012.2 M         5.09
vitg384    1408    40      22     48/11      384    1012.2 M         14.1
tiny       96      2       4      2          64     random, for tests and the demo
=========  ======  ======  =====  =========  =====  ===============  =====================

plus SurgMotion (V-JEPA 2 pre-trained further on surgical video: ``surgmotion-vitl``,
``surgmotion-vitg``), whose layout is V-JEPA 2's exactly; the table and the SurgMotion notes live
in ``vjepa2_presets.py``.

All use patch 16, tubelet 2 and ``frames_per_clip=64`` as the HF conversions do. frames_per_clip
only sizes the RoPE depth grid, and frame positions extrapolate (``frame = id // tokens_per_frame``),
so clips of any even length work; the *spatial* size must equal ``crop_size`` (checked).

Weights (``backbone.path``), nothing is downloaded:

* a local Hugging Face directory with ``config.json`` (``model_type: vjepa2``) and
  ``model.safetensors`` (or a sharded ``model.safetensors.index.json``), e.g. a snapshot of
  ``facebook/vjepa2-vitl-fpc64-256`` or the output of ``cvsjepa convert``. The directory's config
  wins over ``backbone.preset``; the actual shape is what ``describe()`` records.
* Meta's original ``vitl.pt / vith.pt / vitg.pt / vitg-384.pt`` (or SurgMotion's ``.pt``): converted
  on load by ``cvsjepa.backbones.meta`` (``torch.load(weights_only=True)``, fused qkv split, every key
  checked). ``cvsjepa convert`` does it once and writes a directory that loads faster.

Multilevel tokens (``backbone.layers``, e.g. ``[17, 19, 21, 23]`` for ViT-L): see ``base.py``.
"""

from __future__ import annotations

import logging
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from transformers import VJEPA2Config, VJEPA2Model

from ..config import BackboneConfig
from . import _hf, presets
from .base import Backbone
from .flops import video_vit_flops
from .meta import load_meta_checkpoint
from .meta_format import is_meta_checkpoint_path
from .vjepa2_presets import (
    FAMILY,
    HF_REPOS,
    PREDICTOR_NOTE,
    PRESETS,
    RELEASES,
    TOKEN_KEYS,
    match_preset,
    preset_config,
)

log = logging.getLogger(__name__)



@lru_cache(maxsize=None)
def _encoder_params(preset: str) -> int:
    # Count on the meta device: shapes only, no memory, so ViT-g costs nothing to count.
    with torch.device("meta"):
        model = VJEPA2Model(VJEPA2Config(**PRESETS[preset]))
    return sum(p.numel() for p in model.encoder.parameters())


def preset_flops(preset: str, num_frames: int = 16) -> int:
    """Encoder forward FLOPs (2 x MACs) for one clip of ``num_frames`` at the preset's crop."""
    kw = PRESETS[preset]
    return video_vit_flops(hidden=kw["hidden_size"], layers=kw["num_hidden_layers"],
                           mlp_hidden=int(kw["hidden_size"] * kw["mlp_ratio"]), num_frames=num_frames,
                           crop=kw["crop_size"], patch=kw["patch_size"], tubelet=kw["tubelet_size"])


def _weights(name: str) -> str:
    if name == "tiny":
        return "random (built in)"
    r = RELEASES[name]
    if r.hf_repo:
        return f"local HF dir (e.g. {r.hf_repo}) or Meta {r.files}"
    return f"{r.files}, or its cvsjepa convert dir"


def list_vjepa2_presets(num_frames: int = 16) -> list[dict[str, Any]]:
    """One row per preset: name, family, params (encoder only), embed dim, tokens and forward FLOPs
    per clip of ``num_frames`` frames."""
    return [presets.preset_row(
        name, FAMILY, kw, params=_encoder_params(name), params_scope="encoder only (predictor excluded)",
        crop=kw["crop_size"], tubelet=kw["tubelet_size"], clip_frames=num_frames,
        flops=preset_flops(name, num_frames), weights=_weights(name))
        for name, kw in PRESETS.items()]


class VJEPA2Backbone(Backbone):
    """A ``transformers.VJEPA2Model`` used as an encoder; the predictor is kept (so the model
    round-trips through ``save_pretrained``) but never run (``skip_predictor=True``).

    ``self.model`` is the underlying ``VJEPA2Model``; LoRA targets live under
    ``model.encoder.layer.{i}.attention.{query,key,value,proj}``. ``source`` says where the
    weights came from: ``"random"``, ``"hf_dir"`` or ``"meta_checkpoint"`` (then ``source_info``
    holds the checkpoint key used and the keys that were ignored).
    """

    def __init__(self, model: VJEPA2Model, *, path: str = "", is_random: bool, requested_preset: str = "",
                 layers: "list[int] | tuple[int, ...]" = (), source: str = "", source_info: dict | None = None,
                 preset: str = ""):
        super().__init__()
        cfg = model.config
        self.family = FAMILY
        self._set_identity(model, preset=preset or match_preset(cfg), requested_preset=requested_preset,
                           embed_dim=cfg.hidden_size, crop_size=cfg.crop_size, patch_size=cfg.patch_size,
                           tubelet_size=cfg.tubelet_size, num_layers=cfg.num_hidden_layers, layers=layers,
                           is_random=is_random, path=path, source=source, source_info=source_info)

    @property
    def config(self) -> VJEPA2Config:
        return self.model.config

    def _encode(self, video: Tensor) -> Tensor:
        if not self.layers:
            return self.model(pixel_values_videos=video, skip_predictor=True).last_hidden_state
        encoder = self.model.encoder
        x = encoder.embeddings(video)
        levels = self._run_levels(x, lambda block, h: block(h, None)[0], encoder.layernorm)
        return torch.cat(levels, dim=1)

    def fingerprint_tensors(self) -> dict[str, Tensor]:
        # Encoder only: the predictor never touches the tokens.
        return {f"encoder.{k}": v for k, v in self.model.encoder.state_dict().items()}

    def fingerprint_config(self) -> dict[str, Any]:
        return {k: getattr(self.config, k) for k in TOKEN_KEYS}

    def num_params(self) -> int:
        """Encoder parameters only (the predictor, unused here, is excluded)."""
        return sum(p.numel() for p in self.model.encoder.parameters())

    def describe(self) -> dict[str, Any]:
        d = super().describe()
        c = self.config
        d.update(params_scope="encoder only (predictor excluded)", num_heads=int(c.num_attention_heads),
                 mlp_ratio=float(c.mlp_ratio), frames_per_clip=int(c.frames_per_clip),
                 preset_requested=self.requested_preset, attn_implementation=str(c._attn_implementation),
                 source=self.source)
        if self.source == "meta_checkpoint":
            d.update(predictor=PREDICTOR_NOTE, **{f"meta_{k}": v for k, v in self.source_info.items()})
        return d


# ---------------------------------------------------------------------------- loading
def check_hf_dir(path: str) -> Path:
    """Validate a V-JEPA 2 weights directory before transformers sees it."""
    return _hf.check_hf_dir(path, (FAMILY,), HF_REPOS["vitl"])


def load_hf_model(path: str, attn_implementation: str = "sdpa") -> VJEPA2Model:
    """``VJEPA2Model`` from a local directory, float32, eval mode; refuses partial encoder loads
    (missing predictor weights are only logged: the predictor is never run)."""
    p = check_hf_dir(path)
    return _hf.load_pretrained(VJEPA2Model, p, attn_implementation=attn_implementation, family="V-JEPA 2",
                               required=("encoder.",))


def build_vjepa2(cfg: BackboneConfig, device: torch.device | str | None = None) -> VJEPA2Backbone:
    """Build from ``cfg``: a local HF dir or a Meta ``.pt`` when ``cfg.path`` is set, else a seeded
    random preset. ``cfg.layers`` picks multilevel tokens (ConfigError when out of range)."""
    if cfg.path:
        presets.check_one_source(cfg)
        if is_meta_checkpoint_path(cfg.path):
            model, info = load_meta_checkpoint(cfg.path, preset_hint=cfg.preset,
                                               attn_implementation=cfg.attn_implementation)
            backbone = VJEPA2Backbone(model, path=cfg.path, is_random=False, requested_preset=cfg.preset,
                                      layers=cfg.layers, source="meta_checkpoint", source_info=info,
                                      preset=info["preset"])
        else:
            model = load_hf_model(cfg.path, cfg.attn_implementation)
            noted = str(_hf.read_conversion_note(cfg.path).get("preset", ""))  # vitg vs surgmotion-vitg
            name = match_preset(model.config, prefer=(cfg.preset, noted))
            backbone = VJEPA2Backbone(model, path=cfg.path, is_random=False, requested_preset=cfg.preset,
                                      layers=cfg.layers, preset=name)
        if backbone.preset != cfg.preset:
            log.info("backbone.preset=%s, but %s holds a %s-shaped model: using the weights' shape",
                     cfg.preset, cfg.path, backbone.preset)
    else:
        config = preset_config(cfg.preset, cfg.attn_implementation)
        model = presets.random_model(cfg, lambda: VJEPA2Model(config), "V-JEPA 2", "/path/to/hf_dir")
        backbone = VJEPA2Backbone(model, is_random=True, requested_preset=cfg.preset, layers=cfg.layers)
    if device is not None:
        backbone.to(device)
    return backbone.eval()  # like from_pretrained: an encoder starts in eval mode; train() when tuning it
