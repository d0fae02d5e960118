"""VideoMAE encoders through ``transformers.VideoMAEModel``, from local Hugging Face directories.

The research log's named alternative to V-JEPA 2: a video ViT pre-trained by masked pixel
reconstruction, with the same tubelet tokens (Conv3d, tubelet 2, patch 16), so a clip of T frames
at crop c gives ``(T/2) * (c/16)^2`` tokens ``[B, N, D]`` in the same frame-major order.

=========  ======  ======  =====  ============  =====  ======  ==============
preset     hidden  layers  heads  intermediate  crop   frames  example weights
=========  ======  ======  =====  ============  =====  ======  ==============
base       768     12      12     3072          224    16      MCG-NJU/videomae-base
large      1024    24      16     4096          224    16      MCG-NJU/videomae-large
huge       1280    32      16     5120          224    16      MCG-NJU/videomae-huge-finetuned-kinetics
tiny       32      2       2      64            64     4       random, for tests
=========  ======  ======  =====  ============  =====  ======  ==============

Differences from V-JEPA 2 that the user sees:

* **Fixed positions.** VideoMAE adds fixed sin-cos position embeddings for exactly
  ``config.num_frames`` frames at ``config.image_size``; it cannot extrapolate. A clip of another
  length or size is refused (``data.frames`` must equal the model's ``num_frames``), never run with
  misplaced tokens.
* **Final norm.** Pre-training checkpoints (``use_mean_pooling: false``) end with a LayerNorm, which
  the tokens get. Fine-tuned classification checkpoints (``use_mean_pooling: true``) keep their
  norm in the classifier (``fc_norm``, applied after mean pooling), so ``VideoMAEModel`` returns the
  raw last layer and so do we (multilevel levels are then un-normalised too; ``describe()`` says
  ``final_norm: false``).
* **Preprocessing**: ImageNet mean/std, like V-JEPA 2, so the one preprocessing path serves both.

A directory of ``VideoMAEForPreTraining`` or ``VideoMAEForVideoClassification`` weights loads
too (transformers strips the ``videomae.`` prefix; the decoder / classifier are ignored and logged).
"""

from __future__ import annotations

import logging
from functools import lru_cache
from typing import Any

import torch
from torch import Tensor
from transformers import VideoMAEConfig, VideoMAEModel

from ..config import BackboneConfig
from ..errors import ConfigError
from . import _hf, presets
from .base import Backbone
from .flops import video_vit_flops

log = logging.getLogger(__name__)

FAMILY = "videomae"
_GEOMETRY = dict(image_size=224, patch_size=16, tubelet_size=2, num_frames=16, use_mean_pooling=False)
PRESETS: dict[str, dict[str, Any]] = {
    "tiny": dict(image_size=64, patch_size=16, tubelet_size=2, num_frames=4, use_mean_pooling=False,
                 hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                 decoder_hidden_size=16, decoder_num_hidden_layers=1, decoder_num_attention_heads=2,
                 decoder_intermediate_size=32),
    "base": dict(**_GEOMETRY, hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072),
    "large": dict(**_GEOMETRY, hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096),
    "huge": dict(**_GEOMETRY, hidden_size=1280, num_hidden_layers=32, num_attention_heads=16, intermediate_size=5120),
}
HF_REPOS = {"base": "MCG-NJU/videomae-base", "large": "MCG-NJU/videomae-large",
            "huge": "MCG-NJU/videomae-huge-finetuned-kinetics"}
_SHAPE_KEYS = ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "image_size",
               "patch_size", "tubelet_size", "num_frames")
_TOKEN_KEYS = _SHAPE_KEYS + ("layer_norm_eps", "hidden_act", "qv_bias", "use_mean_pooling", "num_channels")


def preset_config(preset: str, attn_implementation: str = "sdpa") -> VideoMAEConfig:
    return presets.named_config(PRESETS, preset, VideoMAEConfig, FAMILY, attn_implementation)


def match_preset(config: VideoMAEConfig) -> str:
    return presets.match_preset(PRESETS, config, VideoMAEConfig, _SHAPE_KEYS)


@lru_cache(maxsize=None)
def _params(preset: str) -> int:
    kw = PRESETS[preset]
    # The sin-cos table is not a parameter and costs seconds of Python to build at full size:
    # count on a one-patch geometry, whose parameters are the same.
    small = {**kw, "num_frames": kw["tubelet_size"], "image_size": kw["patch_size"]}
    with torch.device("meta"):
        model = VideoMAEModel(VideoMAEConfig(**small))
    return sum(p.numel() for p in model.parameters())


def preset_flops(preset: str, num_frames: int | None = None) -> int:
    """Forward FLOPs of one clip; VideoMAE only runs at its own ``num_frames``."""
    kw = PRESETS[preset]
    return video_vit_flops(hidden=kw["hidden_size"], layers=kw["num_hidden_layers"], mlp_hidden=kw["intermediate_size"],
                           num_frames=num_frames or kw["num_frames"], crop=kw["image_size"], patch=kw["patch_size"],
                           tubelet=kw["tubelet_size"])


def list_videomae_presets(num_frames: int = 16) -> list[dict[str, Any]]:
    """Rows for ``cvsjepa backbones``. VideoMAE's positions are fixed: a preset is listed at its own
    clip length (``clip_frames``), which is the only one it runs at."""
    return [presets.preset_row(
        name, FAMILY, kw, params=_params(name), params_scope="encoder", crop=kw["image_size"],
        tubelet=kw["tubelet_size"], clip_frames=kw["num_frames"], flops=preset_flops(name), fixed_frames=True,
        weights="random (built in)" if name == "tiny" else f"local HF dir, e.g. {HF_REPOS[name]}")
        for name, kw in PRESETS.items()]


class VideoMAEBackbone(Backbone):
    """``transformers.VideoMAEModel`` as an encoder: ``[B, T, 3, c, c]`` -> ``[B, N, D]`` with
    T fixed to ``config.num_frames`` and c to ``config.image_size``."""

    attention_modules = {"query": "attention.attention.query", "key": "attention.attention.key",
                         "value": "attention.attention.value", "output": "attention.output.dense"}

    def __init__(self, model: VideoMAEModel, *, path: str = "", is_random: bool, requested_preset: str = "",
                 layers: "list[int] | tuple[int, ...]" = ()):
        super().__init__()
        cfg = model.config
        self.family = FAMILY
        self._set_identity(model, preset=match_preset(cfg), requested_preset=requested_preset,
                           embed_dim=cfg.hidden_size, crop_size=cfg.image_size, patch_size=cfg.patch_size,
                           tubelet_size=cfg.tubelet_size, num_layers=cfg.num_hidden_layers, layers=layers,
                           is_random=is_random, path=path)
        self.num_frames = int(cfg.num_frames)

    @property
    def config(self) -> VideoMAEConfig:
        return self.model.config

    def check_input(self, video: Tensor) -> None:
        super().check_input(video)
        if video.shape[1] != self.num_frames:
            raise ClipLengthError(
                f"{self.name}: VideoMAE has fixed position embeddings for exactly {self.num_frames} frames and "
                f"cannot extrapolate; got T={video.shape[1]}. Set data.frames={self.num_frames}.")

    def _norm(self, x: Tensor) -> Tensor:
        return x if self.model.layernorm is None else self.model.layernorm(x)

    def _encode(self, video: Tensor) -> Tensor:
        if not self.layers:
            return self.model(pixel_values=video).last_hidden_state
        x = self.model.embeddings(video, None)
        return torch.cat(self._run_levels(x, lambda block, h: block(h), self._norm), dim=1)

    def fingerprint_config(self) -> dict[str, Any]:
        return {k: getattr(self.config, k) for k in _TOKEN_KEYS}

    def describe(self) -> dict[str, Any]:
        d = super().describe()
        d.update(num_heads=int(self.config.num_attention_heads), num_frames=self.num_frames,
                 final_norm=self.model.layernorm is not None, preset_requested=self.requested_preset,
                 attn_implementation=str(self.config._attn_implementation), source="random" if self.is_random
                 else "hf_dir")
        return d


class ClipLengthError(ValueError, ConfigError):
    """A clip length the backbone cannot run: a ValueError for library callers (like every other
    input check) and a ConfigError, so the CLI prints one line naming ``data.frames``."""


def build_videomae(cfg: BackboneConfig, device: torch.device | str | None = None) -> VideoMAEBackbone:
    """A local HF directory when ``cfg.path`` is set (its shape wins over ``cfg.preset``), else a
    seeded random preset (``tiny``, or any preset with ``random_weights=true``)."""
    if cfg.path:
        presets.check_one_source(cfg)
        p = _hf.check_hf_dir(cfg.path, (FAMILY,), HF_REPOS["base"])
        model = _hf.load_pretrained(VideoMAEModel, p, attn_implementation=cfg.attn_implementation, family="VideoMAE")
        backbone = VideoMAEBackbone(model, path=cfg.path, is_random=False, requested_preset=cfg.preset,
                                    layers=cfg.layers)
    else:
        config = preset_config(cfg.preset, cfg.attn_implementation)
        model = presets.random_model(cfg, lambda: VideoMAEModel(config), "VideoMAE",
                                     f"/path/to/hf_dir (e.g. a snapshot of {HF_REPOS.get(cfg.preset)})")
        backbone = VideoMAEBackbone(model, is_random=True, requested_preset=cfg.preset, layers=cfg.layers)
    if device is not None:
        backbone.to(device)
    return backbone.eval()
