"""Video encoders: ``build_backbone(cfg.backbone)`` -> a ``Backbone`` producing tokens ``[B, N, D]``.

Families (``backbone.name``), each a module imported lazily (they pull in transformers):
``vjepa2`` (``VJEPA2Backbone``; Meta ``.pt`` checkpoints via ``meta``), ``videomae``
(``VideoMAEBackbone``) and ``dinov2`` (``Dinov2FramesBackbone``, an image model per frame).
``flops`` computes forward cost from a shape; ``_hf`` holds the shared local-directory checks.
User guide: docs/backbones.md.
"""

from .base import Backbone
from .registry import FAMILIES, build_backbone, list_presets

__all__ = ["Backbone", "FAMILIES", "build_backbone", "list_presets"]
