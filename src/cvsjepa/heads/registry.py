"""Heads by name (``head.type`` in the config). A clip head maps tokens ``[B, N, D]`` to logits
``[B, num_classes]``; a temporal head (``temporal.py``) maps a keyframe's history ``[B, L, E]`` and
its mask ``[B, L]`` to logits. Each accepts ``return_attention`` (returning ``(logits, extras)``), and
declares the batch key it reads as ``input_key`` (:func:`head_input`; ``tokens`` when absent), so the
classifier, the sweep's bank and the loop stay generic.

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
from .temporal import MASK_KEY, GatedTemporalHead, GRUTemporalHead, history_offsets

TOKENS_KEY = "tokens"  # the batch key a clip head reads (from a feature store, or the backbone in the loop)


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


def offsets_of(cfg: HeadConfig) -> tuple[int, ...]:
    """The history positions a temporal head of ``cfg`` reads (seconds before t, oldest first)."""
    return history_offsets(cfg.history_seconds, cfg.history_dense, cfg.history_stride)


def _temporal_gated(cfg: HeadConfig, embed_dim: int, num_classes: int, layout: TokenLayout | None) -> nn.Module:
    return GatedTemporalHead(embed_dim, offsets_of(cfg), num_classes=num_classes, dim=cfg.temporal_dim,
                             num_heads=cfg.num_heads, depth=cfg.depth, mlp_hidden=cfg.mlp_hidden, dropout=cfg.dropout)


def _temporal_gru(cfg: HeadConfig, embed_dim: int, num_classes: int, layout: TokenLayout | None) -> nn.Module:
    return GRUTemporalHead(embed_dim, offsets_of(cfg), num_classes=num_classes, dim=cfg.temporal_dim,
                           mlp_hidden=cfg.mlp_hidden, dropout=cfg.dropout)


HEADS: dict[str, Callable[[HeadConfig, int, int, TokenLayout | None], nn.Module]] = {
    "attentive": _attentive,
    "linear": _linear,  # mean-pool probe: the floor any attentive head must beat
    # over per-second embeddings (embed_dim = their width E), causal: heads/temporal.py
    "temporal_gated": _temporal_gated,
    "temporal_gru": _temporal_gru,
}


def head_input(head: nn.Module) -> str:
    """The batch key ``head`` reads: ``tokens`` (clip heads) or ``history`` (temporal heads, which
    also read ``history_mask``)."""
    return getattr(head, "input_key", TOKENS_KEY)


def head_args(head: nn.Module, batch: dict) -> tuple:
    """The positional inputs ``head`` takes from a batch: ``(tokens,)`` or ``(history, history_mask)``."""
    key = head_input(head)
    return (batch[key],) if key == TOKENS_KEY else (batch[key], batch[MASK_KEY])


def build_head(cfg: HeadConfig, embed_dim: int, num_classes: int = 3, layout: TokenLayout | None = None) -> nn.Module:
    """The head ``cfg`` describes for tokens of width ``embed_dim`` laid out as ``layout``;
    ConfigError names a bad key."""
    builder = HEADS.get(cfg.type)
    if builder is None:
        raise ConfigError(f"head.type={cfg.type!r} is not one of {', '.join(HEADS)}")
    return builder(cfg, embed_dim, num_classes, layout)
