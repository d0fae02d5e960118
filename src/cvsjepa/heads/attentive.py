"""Attentive probe: learned query token(s) attend over the encoder tokens, then an MLP to logits.

This is V-JEPA 2's frozen-evaluation ``AttentivePooler`` with the research log's classifier on top
(Experiment 2: 8 heads, one query, MLP with 512 hidden units):

    tokens [B, N, D]
      -> (depth - 1) pre-norm self-attention blocks over the tokens   (official probe: depth 4)
      -> cross-attention block: q = q + xattn(q, norm(x))             (q: [B, Q, D] learned queries)
                                q = q + mlp(norm(q))                  (only if pooler_mlp_ratio > 0; official: 4)
      -> classifier on norm(q):
           Q == 1            MLP(D) -> num_classes logits
           Q == num_classes  "criterion queries": query c -> a shared MLP -> logit c
           any other Q       queries averaged, then MLP -> num_classes (keeps params independent of Q)
MLP = Linear(D, mlp_hidden) -> GELU -> Dropout -> Linear(mlp_hidden, out); mlp_hidden == 0 -> one Linear.

The tokens carry no positional information here (V-JEPA 2 uses RoPE inside the encoder only), so
with depth 1 the logits do not depend on token order; the pooling is a learned weighted average.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import ConfigError


class Attention(nn.Module):
    """Multi-head attention with separate q/k/v projections; self-attention when ``kv is x``."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor, kv: Tensor, return_attention: bool = False) -> tuple[Tensor, Tensor | None]:
        """``x [B, Q, D]`` attends to ``kv [B, N, D]`` -> ``([B, Q, D], weights [B, H, Q, N] or None)``."""
        b, nq, d = x.shape
        q = self.q(x).view(b, nq, self.num_heads, self.head_dim).transpose(1, 2)  # [B, H, Q, hd]
        k = self.k(kv).view(b, -1, self.num_heads, self.head_dim).transpose(1, 2)  # [B, H, N, hd]
        v = self.v(kv).view(b, -1, self.num_heads, self.head_dim).transpose(1, 2)
        if return_attention:
            # Explicit path, only when asked: the weights used are exactly the ones returned.
            attn = (q @ k.transpose(-2, -1) * self.head_dim ** -0.5).softmax(dim=-1)
            out = attn.to(v.dtype) @ v
        else:
            # Fused kernel; never materialises [B, H, Q, N] (N = 2048+ for self-attention blocks).
            attn, out = None, F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(b, nq, d)), attn


class MLP(nn.Module):
    """Linear -> GELU -> Dropout -> Linear; ``hidden == 0`` -> a single Linear."""

    def __init__(self, dim: int, hidden: int, out: int, dropout: float = 0.0):
        super().__init__()
        if hidden > 0:
            self.fc1, self.act, self.drop = nn.Linear(dim, hidden), nn.GELU(), nn.Dropout(dropout)
            self.fc2 = nn.Linear(hidden, out)
        else:
            self.fc1 = self.act = self.drop = None
            self.fc2 = nn.Linear(dim, out)

    def forward(self, x: Tensor) -> Tensor:
        if self.fc1 is not None:
            x = self.drop(self.act(self.fc1(x)))
        return self.fc2(x)


class SelfAttentionBlock(nn.Module):
    """Ordinary pre-norm transformer block over the tokens: ``[B, N, D] -> [B, N, D]``."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float):
        super().__init__()
        self.norm1, self.attn = nn.LayerNorm(dim), Attention(dim, num_heads)
        self.norm2, self.mlp = nn.LayerNorm(dim), MLP(dim, int(dim * mlp_ratio), dim)

    def forward(self, x: Tensor) -> Tensor:
        h = self.norm1(x)
        x = x + self.attn(h, h)[0]
        return x + self.mlp(self.norm2(x))


class CrossAttentionBlock(nn.Module):
    """Queries ``[B, Q, D]`` read from tokens ``[B, N, D]``: ``q + xattn(q, norm(x))`` (+ MLP)."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float):
        super().__init__()
        self.norm_x, self.xattn = nn.LayerNorm(dim), Attention(dim, num_heads)
        self.norm_q = nn.LayerNorm(dim) if mlp_ratio > 0 else None
        self.mlp = MLP(dim, int(dim * mlp_ratio), dim) if mlp_ratio > 0 else None

    def forward(self, q: Tensor, x: Tensor, return_attention: bool = False) -> tuple[Tensor, Tensor | None]:
        out, attn = self.xattn(q, self.norm_x(x), return_attention)
        q = q + out
        if self.mlp is not None:
            q = q + self.mlp(self.norm_q(q))
        return q, attn


class AttentiveHead(nn.Module):
    """Attention pooling + MLP: learned query token(s) cross-attend to the (LayerNorm-ed) tokens,
    then an MLP to logits. ``forward(tokens [B, N, D]) -> logits [B, num_classes]``.

    Args:
        embed_dim: token width D (the backbone's ``embed_dim``).
        num_classes: logits out (3 CVS criteria).
        num_heads: attention heads (D must divide by it).
        num_queries: 1, num_classes (one query per criterion, shared MLP -> 1 logit each), or any
            other count (queries averaged before the MLP).
        depth: depth - 1 self-attention blocks run first (MLP ratio = pooler_mlp_ratio, or 4 when that is 0).
        pooler_mlp_ratio: MLP inside the cross-attention block; 0 = none (the Experiment 2 head).
        mlp_hidden: classifier hidden width; 0 = a single Linear (linear probe on the pooled query).
        dropout: in the classifier MLP, after GELU.
    """

    def __init__(self, embed_dim: int, num_classes: int = 3, num_heads: int = 8, num_queries: int = 1,
                 depth: int = 1, pooler_mlp_ratio: float = 0.0, mlp_hidden: int = 512, dropout: float = 0.0):
        super().__init__()
        _validate(embed_dim, num_classes, num_heads, num_queries, depth, pooler_mlp_ratio, mlp_hidden, dropout)
        self.embed_dim, self.num_classes, self.num_heads = embed_dim, num_classes, num_heads
        self.num_queries, self.depth = num_queries, depth
        self.query_mode = "single" if num_queries == 1 else "per_class" if num_queries == num_classes else "mean"
        block_ratio = pooler_mlp_ratio if pooler_mlp_ratio > 0 else 4.0
        self.query = nn.Parameter(torch.zeros(1, num_queries, embed_dim))
        self.blocks = nn.ModuleList(SelfAttentionBlock(embed_dim, num_heads, block_ratio) for _ in range(depth - 1))
        self.pool = CrossAttentionBlock(embed_dim, num_heads, pooler_mlp_ratio)
        self.norm = nn.LayerNorm(embed_dim)
        out = 1 if self.query_mode == "per_class" else num_classes
        self.classifier = MLP(embed_dim, mlp_hidden, out, dropout)
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        nn.init.trunc_normal_(self.query, std=0.02)
        # As the official AttentivePooler: residual output projections of block i (1-based) are
        # scaled by 1/sqrt(2 i) so the residual stream's variance does not grow with depth; the
        # cross block's MLP uses the last self-attention block's index (1 when there is none).
        with torch.no_grad():
            for i, blk in enumerate(self.blocks, 1):
                blk.attn.proj.weight.div_(math.sqrt(2.0 * i))
                blk.mlp.fc2.weight.div_(math.sqrt(2.0 * i))
            if self.pool.mlp is not None:
                self.pool.mlp.fc2.weight.div_(math.sqrt(2.0 * max(len(self.blocks), 1)))

    def forward(self, tokens: Tensor, return_attention: bool = False) -> Tensor | tuple[Tensor, Tensor]:
        """``tokens [B, N, D]`` -> ``logits [B, num_classes]``; with ``return_attention`` also the
        cross-attention weights ``[B, num_heads, num_queries, N]`` (softmax over N)."""
        if tokens.ndim != 3 or tokens.shape[-1] != self.embed_dim:
            raise ValueError(f"AttentiveHead expects tokens [B, N, {self.embed_dim}], got {tuple(tokens.shape)}")
        x = tokens.to(self.query.dtype)  # the feature store keeps fp16; compute in the head's dtype
        for blk in self.blocks:
            x = blk(x)
        q, attn = self.pool(self.query.expand(x.shape[0], -1, -1), x, return_attention)
        q = self.norm(q)  # [B, Q, D]
        if self.query_mode == "per_class":
            logits = self.classifier(q).squeeze(-1)  # shared MLP: query c -> logit c
        elif self.query_mode == "single":
            logits = self.classifier(q[:, 0])
        else:
            logits = self.classifier(q.mean(dim=1))
        return (logits, attn) if return_attention else logits


def _validate(embed_dim: int, num_classes: int, num_heads: int, num_queries: int, depth: int,
              pooler_mlp_ratio: float, mlp_hidden: int, dropout: float) -> None:
    if num_heads < 1 or embed_dim % num_heads:
        raise ConfigError(f"head.num_heads={num_heads} must divide the backbone's embed_dim={embed_dim} "
                          f"(e.g. 8 or 16 for 1024)")
    checks = [("head.num_queries", num_queries >= 1, num_queries, ">= 1"),
              ("head.depth", depth >= 1, depth, ">= 1 (1 = cross-attention pooling only)"),
              ("head.pooler_mlp_ratio", pooler_mlp_ratio >= 0, pooler_mlp_ratio, ">= 0"),
              ("head.mlp_hidden", mlp_hidden >= 0, mlp_hidden, ">= 0 (0 = a single Linear)"),
              ("head.dropout", 0 <= dropout < 1, dropout, "in [0, 1)")]
    for key, ok, value, need in checks:
        if not ok:
            raise ConfigError(f"{key}={value} must be {need}")
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
