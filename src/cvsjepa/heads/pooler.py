"""The per-second pooler of a temporal run: a clip's tokens -> one embedding per second.

    tokens [B, N, D] (the backbone's, for the causal clip ending at each second) -> [B, E]

* ``mean``: the mean of the tokens (E = D);
* ``run``: a trained stage-1 clip head (attentive or linear) up to its classifier: its pooled,
  normalised query (:meth:`AttentiveHead.embed`; E = D, or 3 D with criterion queries), frozen.

The same module runs at extraction (``cvsjepa extract`` with ``features.seconds=true`` fills the
store with its outputs) and at prediction (``predict`` embeds each new second with it before the
temporal head), so a temporal run's checkpoint holds the stage-1 head's weights next to its own
(``pooler.*``) and needs no other file; :meth:`describe` is what the checkpoint records to rebuild
it, including the stage-1 run it came from and that checkpoint's content hash.
"""

from __future__ import annotations

import copy
import hashlib

import torch
from torch import Tensor, nn

from ..config import HeadConfig
from .positions import TokenLayout
from .registry import build_head
from .temporal import Readout

POOLER_KEY = "pooler"  # config.json of a temporal run's checkpoint: SecondPooler.describe()


class SecondPooler(nn.Module):
    """``SecondPooler("mean", D)`` or ``SecondPooler("run", D, head, head_config, layout, stage1)``;
    ``forward(tokens [B, N, D]) -> [B, out_dim]`` float32. The stage-1 head never trains here."""

    def __init__(self, kind: str, embed_dim: int, head: nn.Module | None = None, head_config: dict | None = None,
                 layout: TokenLayout | None = None, stage1: dict | None = None):
        super().__init__()
        if kind not in ("mean", "run") or (kind == "run") != (head is not None):
            raise ValueError(f"SecondPooler('mean') takes no head, SecondPooler('run') needs one (got {kind!r})")
        self.kind, self.embed_dim = kind, int(embed_dim)
        self.head = head
        self.head_config, self.layout, self.stage1 = head_config, layout, dict(stage1 or {})
        if head is not None:
            head.requires_grad_(False).eval()

    @property
    def out_dim(self) -> int:
        return self.embed_dim if self.head is None else int(self.head.representation_dim)

    def train(self, mode: bool = True) -> "SecondPooler":
        super().train(mode)
        if self.head is not None:
            self.head.eval()  # frozen: no dropout, whatever the temporal head does
        return self

    def forward(self, tokens: Tensor) -> Tensor:
        if self.head is None:
            return tokens.float().mean(dim=1)
        return self.head.embed(tokens).float()

    def readout(self) -> Readout | None:
        """A copy of the stage-1 head's own norm and classifier, reading this pooler's embeddings
        (``readout(pooler(tokens)) == stage-1 logits``); None for the mean."""
        if self.head is None:
            return None
        mode, queries = getattr(self.head, "query_mode", "single"), getattr(self.head, "num_queries", 1)
        readout = Readout(copy.deepcopy(self.head.norm), copy.deepcopy(self.head.classifier), queries, mode)
        return readout.requires_grad_(True)

    def describe(self) -> dict:
        """What a checkpoint records to rebuild this pooler (:func:`pooler_from_description`)."""
        out = {"kind": self.kind, "embed_dim": self.embed_dim, "out_dim": self.out_dim}
        if self.head is not None:
            out.update(head=dict(self.head_config or {}), layout=list(self.layout.shape) if self.layout else None,
                       stage1=self.stage1, weights_digest=weights_digest(self.head))
        return out


def build_temporal_head(cfg: HeadConfig, pooler: SecondPooler, num_classes: int = 3) -> nn.Module:
    """The temporal head ``cfg`` describes over ``pooler``'s embeddings; over a stage-1 run's, it reads
    out with a copy of that head's norm and classifier (so it starts as the stage-1 clip model)."""
    head = build_head(cfg, pooler.out_dim, num_classes)
    readout = pooler.readout()
    if readout is not None:
        head.readout = readout
    return head


def pooler_from_description(desc: dict) -> SecondPooler:
    """An empty pooler of the shape ``describe()`` recorded; the checkpoint's ``pooler.*`` tensors
    fill it (and :func:`weights_digest` then checks they are the stage-1 head's)."""
    if desc["kind"] == "mean":
        return SecondPooler("mean", desc["embed_dim"])
    layout = TokenLayout(*desc["layout"]) if desc.get("layout") else None
    head = build_head(HeadConfig(**desc["head"]), int(desc["embed_dim"]), layout=layout)
    return SecondPooler("run", desc["embed_dim"], head, desc["head"], layout, desc.get("stage1"))


def weights_digest(module: nn.Module) -> str:
    """sha256 over the module's state dict (names, dtypes, shapes, bytes), in name order: identifies
    the stage-1 head's weights wherever they are stored."""
    h = hashlib.sha256()
    for name, t in sorted(module.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()
