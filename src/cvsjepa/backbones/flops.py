"""Forward cost of a ViT encoder, analytically from its shape.

FLOPs = 2 x multiply-accumulates of the matrix products; LayerNorm, softmax, GELU, RoPE and the
residual adds are left out (a fraction of a percent at these sizes). Per clip:

* patch embedding: ``N * D * (C * t * p * p)`` MACs (a Conv3d / Conv2d with kernel = stride);
* per layer and sequence of ``n`` tokens: QKV ``3 n D^2`` + output projection ``n D^2`` + MLP
  ``m n D H`` (H = MLP hidden width; m = 2 matrices, or 3 for a gated/SwiGLU MLP) + attention
  ``2 n^2 D`` (``Q K^T`` and ``A V``).

A per-frame image model runs ``T`` independent sequences of ``n = extra + h * w`` tokens (CLS and
register tokens included), so its attention term is ``T * 2 n^2 D``, not ``2 (T n)^2 D``.

Reference (shared/reference/vjepa2.md, encoder only): ViT-L 16 f x 256 px = 1.66 TFLOP,
64 f x 256 = 11.6, ViT-g 16 f x 256 = 5.1; ``tests/test_backbone_families.py`` checks these.
"""

from __future__ import annotations


def vit_flops(*, hidden: int, layers: int, mlp_hidden: int, tokens: int, sequences: int = 1,
              patch_macs_per_token: int, patch_tokens: int | None = None, mlp_matrices: int = 2) -> int:
    """Forward FLOPs (2 x MACs) of ``sequences`` independent sequences of ``tokens`` tokens each.

    ``patch_macs_per_token``: input values per patch (``C * t * p * p``); ``patch_tokens``: how many
    tokens come out of the patch embedding per sequence (default ``tokens``; fewer when CLS/register
    tokens are prepended). ``mlp_matrices``: 2 (fc1, fc2) or 3 (gate, up, down of a SwiGLU MLP).
    """
    n, d = tokens, hidden
    patch_tokens = tokens if patch_tokens is None else patch_tokens
    per_layer = 4 * n * d * d + mlp_matrices * n * d * mlp_hidden + 2 * n * n * d
    macs = sequences * (patch_tokens * d * patch_macs_per_token + layers * per_layer)
    return 2 * macs


def video_vit_flops(*, hidden: int, layers: int, mlp_hidden: int, num_frames: int, crop: int, patch: int,
                    tubelet: int, in_chans: int = 3) -> int:
    """A video ViT with a Conv3d tubelet embedding and joint space-time attention (V-JEPA 2, VideoMAE)."""
    n = (num_frames // tubelet) * (crop // patch) ** 2
    return vit_flops(hidden=hidden, layers=layers, mlp_hidden=mlp_hidden, tokens=n,
                     patch_macs_per_token=in_chans * tubelet * patch * patch)


def per_frame_vit_flops(*, hidden: int, layers: int, mlp_hidden: int, num_frames: int, crop: int, patch: int,
                        extra_tokens: int = 1, in_chans: int = 3, mlp_matrices: int = 2) -> int:
    """An image ViT run on each frame separately (DINOv2, DINOv3): ``num_frames`` sequences of
    ``extra_tokens + (crop / patch)^2`` tokens (CLS and register tokens are the extra ones)."""
    hw = (crop // patch) ** 2
    return vit_flops(hidden=hidden, layers=layers, mlp_hidden=mlp_hidden, tokens=extra_tokens + hw,
                     sequences=num_frames, patch_macs_per_token=in_chans * patch * patch, patch_tokens=hw,
                     mlp_matrices=mlp_matrices)
