"""Backbone families by name (``backbone.name`` in the config).

Each family is a module with a builder ``(BackboneConfig, device) -> Backbone`` and a preset
lister ``(num_frames) -> list[dict]``. Modules are imported on first use, so ``import cvsjepa.backbones``
stays cheap (transformers alone takes seconds to import). Adding a family is one entry, e.g.::

    "internvideo": _Family("cvsjepa.backbones.internvideo", "build_internvideo", "list_internvideo_presets"),
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Callable

import torch

from ..config import BackboneConfig
from ..errors import ConfigError
from .base import Backbone


@dataclass(frozen=True)
class _Family:
    module: str
    builder: str
    lister: str

    def _get(self, attr: str) -> Callable[..., Any]:
        return getattr(importlib.import_module(self.module), attr)

    def build(self, cfg: BackboneConfig, device: torch.device | str | None) -> Backbone:
        return self._get(self.builder)(cfg, device)

    def presets(self, num_frames: int = 16) -> list[dict[str, Any]]:
        return self._get(self.lister)(num_frames)


FAMILIES: dict[str, _Family] = {
    "vjepa2": _Family("cvsjepa.backbones.vjepa2", "build_vjepa2", "list_vjepa2_presets"),  # + SurgMotion presets
    "vjepa21": _Family("cvsjepa.backbones.vjepa21", "build_vjepa21", "list_vjepa21_presets"),
    "videomae": _Family("cvsjepa.backbones.videomae", "build_videomae", "list_videomae_presets"),
    "dinov2": _Family("cvsjepa.backbones.dinov2", "build_dinov2", "list_dinov2_presets"),
    "dinov3": _Family("cvsjepa.backbones.dinov3", "build_dinov3", "list_dinov3_presets"),
}


def build_backbone(cfg: BackboneConfig, device: torch.device | str | None = None) -> Backbone:
    """The backbone ``cfg`` describes, on ``device`` (CPU when None), in eval mode, not yet frozen.

    Raises ConfigError for an unknown ``backbone.name`` / ``backbone.preset``, a preset without
    weights, ``backbone.layers`` out of range or a preset that contradicts the weights at
    ``backbone.path`` (:func:`check_preset`); CheckpointError for a weights path that is missing,
    malformed, unsafe or incomplete.
    """
    family = FAMILIES.get(cfg.name)
    if family is None:
        raise ConfigError(f"backbone.name={cfg.name!r} is not one of {', '.join(FAMILIES)}")
    backbone = family.build(cfg, device)
    check_preset(cfg, backbone)
    return backbone


DEFAULT_PRESET = BackboneConfig().preset


def check_preset(cfg: BackboneConfig, backbone: Backbone) -> None:
    """With ``backbone.path`` set the weights decide the shape. A preset left at its default
    (``vitl``, as ``configs/base.yaml`` and the README's ``backbone.path=...`` leave it) defers to
    them; any other preset is a statement about the weights, and a contradiction is refused rather
    than recorded wrongly. Callers record ``backbone.preset`` as loaded (``train/build.py``)."""
    if cfg.path and cfg.preset not in (backbone.preset, DEFAULT_PRESET):
        raise ConfigError(f"backbone.preset={cfg.preset} contradicts backbone.path={cfg.path}, which holds a "
                          f"{backbone.preset}-shaped {cfg.name} model: drop backbone.preset (the weights' shape is "
                          f"used and recorded) or point backbone.path at {cfg.preset} weights")


def list_presets(num_frames: int = 16) -> list[dict[str, Any]]:
    """Every family's presets: name, family, params (encoder only), embed_dim, layers, heads,
    crop_size, clip_frames, tokens_per_clip, tokens_per_16_frames, flops_per_clip (encoder forward,
    2 x MACs, at ``clip_frames``: ``num_frames``, except VideoMAE which runs only at its own clip
    length) and where the weights come from. Counted without allocating weights."""
    return [row for family in FAMILIES.values() for row in family.presets(num_frames)]
