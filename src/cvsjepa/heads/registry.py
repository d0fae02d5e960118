"""Heads by name (``head.type`` in the config). A head maps tokens ``[B, N, D]`` to logits
``[B, num_classes]`` and accepts ``return_attention`` (returning ``(logits, extras)`` when it can).

Adding a type is one entry in ``HEADS``: a function ``(HeadConfig, embed_dim, num_classes, layout) -> nn.Module``;
``layout`` (a :class:`TokenLayout`, from the backbone or the feature store) tells a head where each token
sits, for ``head.pos_embed``.
"""

from __future__ import annotations

from typing import Callable

from torch import nn

from ..config import HeadConfig
from ..errors import ConfigError
from .attentive import AttentiveHead
from .linear import MeanPoolHead
from .positions import TokenLayout


def _attentive(cfg: HeadConfig, embed_dim: int, num_classes: int, layout: TokenLayout | None) -> nn.Module:
    positions = None
    if cfg.pos_embed == "learned":
        if layout is None:
            raise ConfigError("head.pos_embed=learned needs the token layout (the backbone's grid); build the head "
                              "with build_head(..., layout=...)")
        positions = layout
    return AttentiveHead(embed_dim, num_classes=num_classes, num_heads=cfg.num_heads, num_queries=cfg.num_queries,
                         depth=cfg.depth, pooler_mlp_ratio=cfg.pooler_mlp_ratio, mlp_hidden=cfg.mlp_hidden,
                         dropout=cfg.dropout, positions=positions)


def _linear(cfg: HeadConfig, embed_dim: int, num_classes: int, layout: TokenLayout | None) -> nn.Module:
    # mean pooling is order-invariant: a position added to every token would only shift the mean by a
    # constant, so head.pos_embed does not apply here
    return MeanPoolHead(embed_dim, num_classes=num_classes, mlp_hidden=cfg.mlp_hidden, dropout=cfg.dropout)


HEADS: dict[str, Callable[[HeadConfig, int, int, TokenLayout | None], nn.Module]] = {
    "attentive": _attentive,
    "linear": _linear,  # mean-pool probe: the floor any attentive head must beat
}


def build_head(cfg: HeadConfig, embed_dim: int, num_classes: int = 3, layout: TokenLayout | None = None) -> nn.Module:
    """The head ``cfg`` describes for tokens of width ``embed_dim`` laid out as ``layout``;
    ConfigError names a bad key."""
    builder = HEADS.get(cfg.type)
    if builder is None:
        raise ConfigError(f"head.type={cfg.type!r} is not one of {', '.join(HEADS)}")
    return builder(cfg, embed_dim, num_classes, layout)
