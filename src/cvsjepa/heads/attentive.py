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

The tokens carry no positional information of their own (V-JEPA 2 uses RoPE inside the encoder
only), so without ``positions`` and with depth 1 the logits do not depend on token order: the
pooling is a learned weighted average. ``positions`` (``head.pos_embed=learned``, see
``positions.py``) adds a learned position to every token first, so the head can learn where to look.

**How the cross-attention is computed.** The queries are learned parameters, the same for every
clip, so the key projection and ``norm_x``'s affine fold into one vector per (query, head): with
``x^ = LayerNorm(x)`` without its affine (``g``, ``b`` its scale and shift, ``W_k^h, b_k^h`` the
rows of head ``h``, ``s = head_dim ** -0.5``)

    score(q, h, n) = s * q_h . (W_k^h (g * x^_n + b) + b_k^h) = x^_n . u_qh + c_qh
    u_qh = s * g * (W_k^h^T q_h),   c_qh = s * ((W_k^h^T q_h) . b + q_h . b_k^h)
    out(q, h)      = sum_n a_qhn (W_v^h (g * x^_n + b) + b_v^h) = W_v^h (g * p_qh + b) + b_v^h,
    p_qh           = sum_n a_qhn x^_n                          (the softmax weights sum to 1)

which is the same function as projecting every token to keys and values, at
``O(B N D Q H)`` instead of ``O(B N D^2)`` (``D / (Q H)`` = 128x fewer FLOPs for the Experiment 2
head at D = 1024) and without the ``[B, N, D]`` key and value activations. It also lets K heads
over the same tokens share one normalisation and one matrix product (``heads/bank.py``).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import ConfigError
from .positions import AxisPositions, TokenLayout


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
    """Learned queries ``[Q, D]`` read from tokens ``[B, N, D]``: ``q + xattn(q, norm_x(x))`` (+ MLP),
    computed in the folded form of the module docstring (``xattn``'s Linears hold the weights)."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float):
        super().__init__()
        self.norm_x, self.xattn = nn.LayerNorm(dim), Attention(dim, num_heads)
        self.norm_q = nn.LayerNorm(dim) if mlp_ratio > 0 else None
        self.mlp = MLP(dim, int(dim * mlp_ratio), dim) if mlp_ratio > 0 else None

    def normalize(self, x: Tensor) -> Tensor:
        """``x^ = LayerNorm(x)`` without the affine (which :meth:`score_vectors` folds in)."""
        return F.layer_norm(x, x.shape[-1:], eps=self.norm_x.eps)

    def score_vectors(self, query: Tensor) -> tuple[Tensor, Tensor]:
        """``query [Q, D]`` -> ``(u [Q*H, D], c [Q*H])``, rows in (query, head) order: the attention
        score of token ``n`` is ``x^_n . u + c`` (scale included)."""
        a = self.xattn
        heads, hd = a.num_heads, a.head_dim
        qh = a.q(query).view(-1, heads, hd)  # [Q, H, hd]
        kq = torch.einsum("qhj,hjd->qhd", qh, a.k.weight.view(heads, hd, -1))  # W_k^h^T q_h: [Q, H, D]
        scale = hd ** -0.5
        u = kq * (self.norm_x.weight * scale)
        c = ((kq * self.norm_x.bias).sum(-1) + (qh * a.k.bias.view(heads, hd)).sum(-1)) * scale
        return u.reshape(-1, u.shape[-1]), c.reshape(-1)

    def attend(self, query: Tensor, pooled: Tensor) -> Tensor:
        """``query [Q, D]``, ``pooled [B, Q*H, D]`` (per query and head, the attention-weighted mean of
        ``x^``) -> the block's output queries ``[B, Q, D]``."""
        a = self.xattn
        b, heads, d = pooled.shape[0], a.num_heads, query.shape[-1]
        z = pooled.view(b, -1, heads, d) * self.norm_x.weight + self.norm_x.bias  # = sum_n a_n norm_x(x_n)
        v = torch.einsum("bqhd,hjd->bqhj", z, a.v.weight.view(heads, a.head_dim, d)) + a.v.bias.view(heads, -1)
        q = query + a.proj(v.reshape(b, -1, d))
        if self.mlp is not None:
            q = q + self.mlp(self.norm_q(q))
        return q

    def forward(self, query: Tensor, x: Tensor, return_attention: bool = False) -> tuple[Tensor, Tensor | None]:
        """``query [Q, D]``, tokens ``x [B, N, D]`` -> ``(queries [B, Q, D], weights [B, H, Q, N] or None)``."""
        xh = self.normalize(x)
        u, c = self.score_vectors(query)
        weights = attention_weights(xh, u, c)
        q = self.attend(query, weights.transpose(1, 2) @ xh)
        if not return_attention:
            return q, None
        b, n = x.shape[:2]
        return q, weights.view(b, n, -1, self.xattn.num_heads).permute(0, 3, 2, 1)


def attention_weights(xh: Tensor, u: Tensor, c: Tensor) -> Tensor:
    """Softmax over the tokens of ``x^ @ u.T + c``: ``xh [B, N, D]``, ``u [R, D]``, ``c [R]`` ->
    ``[B, N, R]`` (one column per (query, head) row of ``u``; each column sums to 1 over N)."""
    return torch.addmm(c, xh.flatten(0, 1), u.t()).view(*xh.shape[:2], -1).softmax(dim=1)


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
        positions: the token layout to learn positions over (``AxisPositions``); None = no positions.
    """

    def __init__(self, embed_dim: int, num_classes: int = 3, num_heads: int = 8, num_queries: int = 1,
                 depth: int = 1, pooler_mlp_ratio: float = 0.0, mlp_hidden: int = 512, dropout: float = 0.0,
                 positions: TokenLayout | None = None):
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
        self.pos = AxisPositions(positions, embed_dim) if positions is not None else None  # zeros at start

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
        q, attn = self._pooled(tokens, return_attention)
        logits = self.classify(q)
        return (logits, attn) if return_attention else logits

    def _pooled(self, tokens: Tensor, return_attention: bool = False) -> tuple[Tensor, Tensor | None]:
        if tokens.ndim != 3 or tokens.shape[-1] != self.embed_dim:
            raise ValueError(f"AttentiveHead expects tokens [B, N, {self.embed_dim}], got {tuple(tokens.shape)}")
        x = tokens.to(self.query.dtype)  # the feature store keeps fp16; compute in the head's dtype
        if self.pos is not None:
            x = self.pos(x)
        for blk in self.blocks:
            x = blk(x)
        return self.pool(self.query[0], x, return_attention)

    @property
    def representation_dim(self) -> int:
        """Width of :meth:`embed`: Q D (the pooled queries, concatenated)."""
        return self.embed_dim * self.num_queries

    def embed(self, tokens: Tensor) -> Tensor:
        """``tokens [B, N, D]`` -> the pooled queries before the final norm, concatenated ``[B, Q D]``:
        what :meth:`classify` reads (``classify(embed(x).view(B, Q, D)) == forward(x)``). The
        per-second pooler of a temporal run (``features.second_pooler=run``)."""
        return self._pooled(tokens)[0].flatten(1)

    def classify(self, q: Tensor) -> Tensor:
        """The pooled queries ``[B, Q, D]`` -> logits ``[B, num_classes]`` (final norm, then the MLP)."""
        q = self.norm(q)
        if self.query_mode == "per_class":
            return self.classifier(q).squeeze(-1)  # shared MLP: query c -> logit c
        if self.query_mode == "single":
            return self.classifier(q[:, 0])
        return self.classifier(q.mean(dim=1))


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
