"""Video encoders: ``build_backbone(cfg.backbone)`` -> a ``Backbone`` producing tokens ``[B, N, D]``.

``VJEPA2Backbone`` and ``PRESETS`` live in ``cvsjepa.backbones.vjepa2`` (imported lazily: it pulls
in transformers).
"""

from .base import Backbone
from .registry import FAMILIES, build_backbone, list_presets

__all__ = ["Backbone", "FAMILIES", "build_backbone", "list_presets"]
