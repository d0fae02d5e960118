"""Backbone families by name (``backbone.name`` in the config).

Each family is a module with a builder ``(BackboneConfig, device) -> Backbone`` and a preset
lister ``() -> list[dict]``. Modules are imported on first use, so ``import cvsjepa.backbones``
stays cheap (transformers alone takes seconds to import). Adding a family is one entry, e.g.::

    "videomae": _Family("cvsjepa.backbones.videomae", "build_videomae", "list_videomae_presets"),
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

    def presets(self) -> list[dict[str, Any]]:
        return self._get(self.lister)()


FAMILIES: dict[str, _Family] = {
    "vjepa2": _Family("cvsjepa.backbones.vjepa2", "build_vjepa2", "list_vjepa2_presets"),
}


def build_backbone(cfg: BackboneConfig, device: torch.device | str | None = None) -> Backbone:
    """The backbone ``cfg`` describes, on ``device`` (CPU when None), in eval mode, not yet frozen.

    Raises ConfigError for an unknown ``backbone.name`` / ``backbone.preset`` or a preset without
    weights, CheckpointError for a weights path that is missing, malformed or incomplete.
    """
    family = FAMILIES.get(cfg.name)
    if family is None:
        raise ConfigError(f"backbone.name={cfg.name!r} is not one of {', '.join(FAMILIES)}")
    return family.build(cfg, device)


def list_presets() -> list[dict[str, Any]]:
    """Every family's presets: name, family, params (encoder only), embed_dim, crop_size,
    tokens_per_16_frames, and where the weights come from. Counted without allocating weights."""
    return [row for family in FAMILIES.values() for row in family.presets()]
