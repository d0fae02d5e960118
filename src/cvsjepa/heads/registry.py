"""Heads by name (``head.type`` in the config). A head maps tokens ``[B, N, D]`` to logits
``[B, num_classes]`` and accepts ``return_attention`` (returning ``(logits, extras)`` when it can).

Adding a type is one entry in ``HEADS``: a function ``(HeadConfig, embed_dim, num_classes) -> nn.Module``.
"""

from __future__ import annotations

from typing import Callable

from torch import nn

from ..config import HeadConfig
from ..errors import ConfigError
from .attentive import AttentiveHead
from .linear import MeanPoolHead


def _attentive(cfg: HeadConfig, embed_dim: int, num_classes: int) -> nn.Module:
    return AttentiveHead(embed_dim, num_classes=num_classes, num_heads=cfg.num_heads, num_queries=cfg.num_queries,
                         depth=cfg.depth, pooler_mlp_ratio=cfg.pooler_mlp_ratio, mlp_hidden=cfg.mlp_hidden,
                         dropout=cfg.dropout)


def _linear(cfg: HeadConfig, embed_dim: int, num_classes: int) -> nn.Module:
    return MeanPoolHead(embed_dim, num_classes=num_classes, mlp_hidden=cfg.mlp_hidden, dropout=cfg.dropout)


HEADS: dict[str, Callable[[HeadConfig, int, int], nn.Module]] = {
    "attentive": _attentive,
    "linear": _linear,  # mean-pool probe: the floor any attentive head must beat
}


def build_head(cfg: HeadConfig, embed_dim: int, num_classes: int = 3) -> nn.Module:
    """The head ``cfg`` describes for tokens of width ``embed_dim``; ConfigError names a bad key."""
    builder = HEADS.get(cfg.type)
    if builder is None:
        raise ConfigError(f"head.type={cfg.type!r} is not one of {', '.join(HEADS)}")
    return builder(cfg, embed_dim, num_classes)
