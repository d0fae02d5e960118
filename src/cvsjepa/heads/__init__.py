"""Heads: tokens ``[B, N, D]`` -> logits ``[B, 3]``; they never know where the tokens came from."""

from .attentive import AttentiveHead
from .positions import TokenLayout
from .registry import HEADS, build_head

__all__ = ["AttentiveHead", "HEADS", "TokenLayout", "build_head"]
