"""Heads: tokens ``[B, N, D]`` (or, temporal heads, a history of per-second embeddings ``[B, L, E]``)
-> logits ``[B, 3]``; they never know where their inputs came from."""

from .attentive import AttentiveHead
from .positions import TokenLayout
from .registry import HEADS, build_head, head_args, head_input, offsets_of

__all__ = ["AttentiveHead", "HEADS", "TokenLayout", "build_head", "head_args", "head_input", "offsets_of"]
