"""V-JEPA 2.1's encoder on top of ``transformers``' V-JEPA 2 modules, with its differences made exact.

V-JEPA 2.1 (facebookresearch/vjepa2 ``app/vjepa_2_1/models/``; arXiv 2603.14482) keeps V-JEPA 2's
encoder (tubelet Conv3d, pre-norm blocks, fused ``qkv`` with 3D RoPE, GELU MLP) and changes five
things. transformers 5.x has no 2.1 classes; this module reuses ``VJEPA2Encoder`` where it is
exact and replaces only what differs:

1. **RoPE pairing.** Both rotate the pairs ``(x[2i], x[2i+1])``. V-JEPA 2 lays the sin/cos of the
   ``d/2`` frequencies out as ``[f0 .. f_{d/2-1}, f0 .. f_{d/2-1}]`` (``repeat``, a quirk its
   weights depend on); 2.1 as ``[f0, f0, f1, f1, ...]`` (``repeat_interleave``), so pair ``i`` turns
   by frequency ``i``. -> ``rotate_interleaved`` in ``VJEPA21RopeAttention``.
2. **RoPE interpolation** (``interpolate_rope=True`` in every released config): row and column
   positions are rescaled to the pre-training grid, ``pos * (P - 1) / (grid - 1)`` with ``P = 16``
   for patch 16 (so positions span 0..15 whatever the crop: ``15/23`` per step at 384 px). Frame
   positions are not scaled. -> ``VJEPA21RopeAttention.get_position_ids``.
3. **Modality embedding.** ``video_mod_embed`` ``[1, 1, D]`` is added to every patch token of a video;
   a constant per channel after a linear map, it folds exactly into the patch-embedding bias
   (done by the loader, ``meta21.py``). The image path (``patch_embed_img``, ``img_mod_embed``) serves
   single images (T = 1) only; cvsjepa feeds clips, so it is not built.
4. **Hierarchical norms.** One LayerNorm per hierarchical layer (``norms_block``; ViT-B 2,5,8,11,
   L 5,11,17,23, g 9,19,29,39, G 11,23,37,47). The output is ``norms_block[-1]`` of the last block
   (-> ``encoder.layernorm``, so the plain forward is V-JEPA 2's); the other norms live in
   ``hierarchical_norms`` and give the multilevel features their own norm, as the original's
   ``out_layers`` does.
5. **No predictor here.** 2.1's predictor (distillation heads, teacher width) is not V-JEPA 2's and
   classification never runs it, so this model is encoder-only.

Registers (``n_registers``) and a CLS-first flag exist in the code but the released configs set
neither (and the encoder creates no register or CLS parameters: the flags only tell RoPE which
tokens to leave unrotated), and the released configs run a GELU MLP (the hub passes ``use_SiLU``
with a capital that the class never reads), so SwiGLU is not needed: a checkpoint with ``mlp.fc3``
is refused by the loader rather than approximated.
"""

from __future__ import annotations

import torch
from huggingface_hub.dataclasses import strict
from torch import Tensor, nn
from transformers import VJEPA2Config
from transformers.modeling_outputs import BaseModelOutput
from transformers.models.vjepa2.modeling_vjepa2 import (
    VJEPA2Encoder,
    VJEPA2PatchEmbeddings3D,
    VJEPA2PreTrainedModel,
    VJEPA2RopeAttention,
)

# The original's table (app/vjepa_2_1/models/vision_transformer.py): depth -> hierarchical layers.
HIERARCHICAL_LAYERS = {12: [2, 5, 8, 11], 24: [5, 11, 17, 23], 40: [9, 19, 29, 39], 48: [11, 23, 37, 47]}
MODEL_TYPE = "cvsjepa_vjepa21"  # cvsjepa's own format: plain transformers cannot read 2.1 correctly


@strict
class VJEPA21Config(VJEPA2Config):
    """``VJEPA2Config`` plus V-JEPA 2.1's encoder fields (the ``pred_*`` fields are unused)."""

    model_type = MODEL_TYPE

    rope_interpolate: bool = True  # rescale row/column positions to the pre-training grid
    rope_pretrained_grid: int = 16  # that grid: 256 px / patch 16 (the original uses 252 / 14 for patch 14)
    hierarchical_layers: list[int] | None = None  # None: the original's table for this depth

    def levels(self) -> list[int]:
        """The hierarchical layers (block indices, ascending); ValueError for a depth without a table."""
        layers = self.hierarchical_layers or HIERARCHICAL_LAYERS.get(int(self.num_hidden_layers))
        if not layers:
            raise ValueError(f"V-JEPA 2.1 defines hierarchical layers for depths {sorted(HIERARCHICAL_LAYERS)}; "
                             f"depth {self.num_hidden_layers} needs hierarchical_layers")
        return list(layers)


def rotate_interleaved(x: Tensor, pos: Tensor) -> Tensor:
    """2.1's rotary embedding of ``x [..., N, d]`` at positions ``pos [..., N]`` (float).

    Pair ``(x[2i], x[2i+1])`` turns by ``pos * 10000^(-i / (d/2))``:
    ``out[2i] = x[2i] cos - x[2i+1] sin``, ``out[2i+1] = x[2i+1] cos + x[2i] sin``.
    """
    d = x.shape[-1]
    omega = 1.0 / 10000 ** (torch.arange(d // 2, dtype=x.dtype, device=x.device) / (d / 2.0))
    angles = pos.unsqueeze(-1) * omega  # [..., N, d/2]
    sin, cos = angles.sin().repeat_interleave(2, dim=-1), angles.cos().repeat_interleave(2, dim=-1)
    a, b = x.unflatten(-1, (-1, 2)).unbind(-1)
    turned = torch.stack((-b, a), dim=-1).flatten(-2)
    return x * cos + turned * sin


class VJEPA21RopeAttention(VJEPA2RopeAttention):
    """V-JEPA 2's attention (same ``query/key/value/proj`` Linears, same d/h/w bands of
    ``2 * ((head_dim // 3) // 2)`` dims, the rest unrotated) with 2.1's positions and pairing."""

    def get_position_ids(self, x: Tensor, masks: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
        frame, row, col = super().get_position_ids(x, masks)
        frame, row, col = 1.0 * frame, 1.0 * row, 1.0 * col
        if self.config.rope_interpolate and self.grid_size > 1:
            # the original's order of operations (times P - 1, then divided by grid - 1)
            scale_to = self.config.rope_pretrained_grid - 1
            row = row * scale_to / (self.grid_size - 1)
            col = col * scale_to / (self.grid_size - 1)
        return frame, row, col

    def apply_rotary_embeddings(self, qk: Tensor, pos_ids: tuple[Tensor, Tensor, Tensor]) -> Tensor:
        band = self.d_dim  # == h_dim == w_dim
        parts = [rotate_interleaved(qk[..., i * band:(i + 1) * band], pos) for i, pos in enumerate(pos_ids)]
        return torch.cat(parts + [qk[..., 3 * band:]], dim=-1)


class VJEPA21Model(VJEPA2PreTrainedModel):
    """Encoder-only V-JEPA 2.1: ``VJEPA2Encoder`` with ``VJEPA21RopeAttention`` in every block,
    ``encoder.layernorm`` = the last hierarchical norm, ``hierarchical_norms`` = the others.

    ``forward(pixel_values_videos [B, T, C, H, W])`` -> ``last_hidden_state [B, N, D]``.
    """

    config_class = VJEPA21Config
    config: VJEPA21Config

    def __init__(self, config: VJEPA21Config):
        super().__init__(config)
        self.encoder = VJEPA2Encoder(config)
        for layer in self.encoder.layer:
            layer.attention = VJEPA21RopeAttention(config, config.hidden_size, config.num_attention_heads)
        levels = config.levels()
        self.hierarchical_norms = nn.ModuleList(
            nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps) for _ in levels[:-1])
        self.post_init()

    def get_input_embeddings(self) -> VJEPA2PatchEmbeddings3D:
        return self.encoder.embeddings.patch_embeddings

    def level_norm(self, layer: int) -> nn.LayerNorm:
        """The norm of hierarchical layer ``layer`` (a block index); KeyError for another layer."""
        levels = self.config.levels()
        if layer not in levels:
            raise KeyError(layer)
        j = levels.index(layer)
        return self.encoder.layernorm if j == len(levels) - 1 else self.hierarchical_norms[j]

    def forward(self, pixel_values_videos: Tensor, **kwargs) -> BaseModelOutput:
        tokens = self.encoder(pixel_values_videos=pixel_values_videos).last_hidden_state
        return BaseModelOutput(last_hidden_state=tokens)
