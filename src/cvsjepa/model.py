"""The classifier: a backbone (or stored tokens) feeding a head.

``CVSClassifier.forward(batch)`` takes the loader's batch dict: ``batch["video"]``
[B, T, 3, crop, crop] runs the backbone; a multi-view clip [B, V, T, 3, crop, crop]
(``data.view=three_crops``) runs it on each view and concatenates the views' tokens along the token
axis (view-major), so the head pools over all of them; ``batch["tokens"]`` [B, N, D] (from a
feature store) skips it. The head never knows which path its tokens came from.

A temporal run (``head.type=temporal_*``) also holds its per-second ``pooler``
(:class:`~cvsjepa.heads.pooler.SecondPooler`): its head reads ``batch["history"]`` [B, L, E] and
``batch["history_mask"]`` [B, L] (per-second embeddings, from a feature store or a stream), and
:meth:`CVSClassifier.embed_seconds` turns clips into those embeddings (backbone, then pooler).
"""

from __future__ import annotations

import torch
from torch import nn

from .backbones import Backbone
from .heads.positions import TokenLayout
from .heads.registry import TOKENS_KEY, head_args, head_input


class CVSClassifier(nn.Module):
    def __init__(self, backbone: Backbone | None, head: nn.Module, base_fingerprint: str | None = None,
                 seg_head: nn.Module | None = None, pooler: nn.Module | None = None):
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.seg_head = seg_head  # multi-task segmentation decoder (exp8), or None
        self.pooler = pooler  # temporal runs: a clip's tokens -> its second's embedding (heads/pooler.py)
        # fingerprint of the backbone's weights as loaded, before any adaptation: a checkpoint
        # records it so that loading can check it rebuilds on the same base weights
        self.base_fingerprint = base_fingerprint

    @property
    def temporal(self) -> bool:
        """The head reads histories of per-second embeddings (a temporal run), not a clip's tokens."""
        return head_input(self.head) != TOKENS_KEY

    @torch.no_grad()
    def embed_seconds(self, video: torch.Tensor) -> torch.Tensor:
        """Clips ``[S, T, 3, crop, crop]`` (``three_crops``: ``[S, 3, T, ...]``) ending at ``S`` seconds
        -> their embeddings ``[S, E]`` float32: what the store holds for those seconds."""
        if self.pooler is None:
            raise ValueError("this classifier has no per-second pooler (not a temporal run)")
        return self.pooler(self.tokens({"video": video}))

    @property
    def backbone_frozen(self) -> bool:
        return self.backbone is None or not any(p.requires_grad for p in self.backbone.parameters())

    def tokens(self, batch: dict) -> torch.Tensor:
        """``[B, N, D]``; for multi-view clips ``[B, V * N, D]`` (view-major)."""
        if "tokens" in batch:
            return batch["tokens"].float()
        if self.backbone is None:
            raise ValueError("batch has no 'tokens' and the classifier has no backbone")
        video = batch["video"]
        views = video.shape[1] if video.ndim == 6 else 0
        if views:
            video = video.flatten(0, 1)  # [B V, T, 3, crop, crop]: one backbone pass for every view
        out = self.backbone.extract(video) if self.backbone_frozen else self.backbone(video)
        return out.reshape(-1, views * out.shape[1], out.shape[2]) if views else out

    def forward(self, batch: dict, return_attention: bool = False, multitask: bool = False):
        """CVS logits [B, 3] (with ``return_attention`` also the head's attention); with ``multitask``
        the pair (logits, segmentation logits or None), through forward() so DDP sees it."""
        if multitask:
            return self.forward_multitask(batch)
        if self.temporal:
            return self.head(*head_args(self.head, batch), return_attention=return_attention)
        return self.head(self.tokens(batch), return_attention=return_attention)

    def forward_multitask(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor | None]:
        """CVS logits [B, 3] and, with a segmentation decoder, mask logits [B, K, crop, crop];
        the backbone runs once for both."""
        if self.temporal:
            return self.head(*head_args(self.head, batch)), None
        tokens = self.tokens(batch)
        return self.head(tokens), (self.seg_head(tokens) if self.seg_head is not None else None)

    def trainable_state_dict(self, include_lora: bool = True) -> dict[str, torch.Tensor]:
        """What a checkpoint must hold: the head, plus any backbone weight that can change.
        LoRA weights can be left out when they are saved as a PEFT adapter instead."""
        keep = {n for n, p in self.named_parameters() if p.requires_grad and (include_lora or "lora_" not in n)}
        for part in ("head", "seg_head", "pooler"):  # the pooler (frozen) is part of a temporal run's model
            module = getattr(self, part)
            if module is not None:
                keep |= {f"{part}.{n}" for n, _ in module.named_parameters()}
                keep |= {f"{part}.{n}" for n, _ in module.named_buffers()}
        return {k: v for k, v in self.state_dict().items() if k in keep}


def count_params(module: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    total = sum(p.numel() for p in module.parameters())
    trainable = sum(p.numel() for p in module.parameters() if p.requires_grad)
    return trainable, total


def token_layout(cfg, backbone: Backbone) -> TokenLayout:
    """Where each token of a clip sits: views (``data.view``), levels (``backbone.layers``), the
    backbone's grid for ``data.frames`` (halved in rows and columns by ``features.pool=avg2x2``)."""
    from .data.transforms import view_count

    levels, t, h, w = backbone.token_layout(cfg.data.frames)
    if cfg.features.store and cfg.features.pool == "avg2x2":
        h, w = h // 2, w // 2
    return TokenLayout.of(view_count(cfg.data.view), levels, (t, h, w))


def build_seg_head(cfg, backbone: Backbone) -> nn.Module | None:
    """The segmentation decoder ``cfg.seg`` asks for, on the backbone's token grid; None when off."""
    if not cfg.seg.enabled:
        return None
    from .heads.segmentation import SEG_DECODERS

    return SEG_DECODERS[cfg.seg.decoder](backbone.embed_dim, len(cfg.seg.classes), backbone.token_grid(cfg.data.frames),
                                         backbone.crop_size, cfg.seg.decoder_dim, levels=backbone.num_levels)
