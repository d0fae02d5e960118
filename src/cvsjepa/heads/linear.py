"""The floor: mean-pool the tokens, LayerNorm, then a Linear (or a small MLP) to logits."""

from __future__ import annotations

import torch
from torch import nn


class MeanPoolHead(nn.Module):
    """tokens [B, N, D] -> mean over N -> LayerNorm -> Linear (mlp_hidden=0) or MLP -> logits [B, C].

    With ``return_attention`` it returns the uniform weights it implicitly uses, [B, 1, 1, N], so
    diagnostics can treat every head alike.
    """

    def __init__(self, embed_dim: int, num_classes: int = 3, mlp_hidden: int = 0, dropout: float = 0.0):
        super().__init__()
        self.norm = nn.LayerNorm(embed_dim)
        if mlp_hidden:
            self.classifier = nn.Sequential(nn.Linear(embed_dim, mlp_hidden), nn.GELU(), nn.Dropout(dropout),
                                            nn.Linear(mlp_hidden, num_classes))
        else:
            self.classifier = nn.Sequential(nn.Dropout(dropout), nn.Linear(embed_dim, num_classes))

    @property
    def representation_dim(self) -> int:
        return self.norm.normalized_shape[0]

    def embed(self, tokens: torch.Tensor) -> torch.Tensor:
        """``[B, N, D]`` -> ``[B, D]``: the mean the final norm reads (a per-second pooler)."""
        return tokens.to(self.norm.weight.dtype).mean(dim=1)

    def forward(self, tokens: torch.Tensor, return_attention: bool = False):
        logits = self.classifier(self.norm(self.embed(tokens)))
        if not return_attention:
            return logits
        b, n = tokens.shape[:2]
        return logits, torch.full((b, 1, 1, n), 1.0 / n, device=tokens.device)
