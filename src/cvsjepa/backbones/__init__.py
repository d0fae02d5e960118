"""Video encoders: ``build_backbone(cfg.backbone)`` -> a ``Backbone`` producing tokens ``[B, N, D]``.

Families (``backbone.name``; ``registry.FAMILIES`` is their one list), each a module imported
lazily (they pull in transformers): ``vjepa2`` (``VJEPA2Backbone``, V-JEPA 2 and SurgMotion; Meta
``.pt`` via ``meta``), ``vjepa21`` (``VJEPA21Backbone`` on ``vjepa21_model.VJEPA21Model``; ``.pt`` via
``meta21``), ``videomae`` (``VideoMAEBackbone``), ``dinov2`` and ``dinov3`` (image models per frame).
``meta_format`` reads Meta-format files for every V-JEPA family, ``conversion`` is ``cvsjepa
convert``, ``flops`` computes forward cost from a shape, ``_hf`` holds the shared local-directory checks.
User guide: docs/backbones.md."""

from .base import Backbone
from .registry import FAMILIES, build_backbone, list_presets

__all__ = ["Backbone", "FAMILIES", "build_backbone", "list_presets"]
