"""K heads over the same tokens in one pass: what `cvsjepa sweep` trains.

    tokens [B, N, D] -> logits of every chosen head, [B, num_classes] each

Attentive heads of depth 1 (cross-attention pooling straight on the tokens, the Experiment 2 and
linear-probe shapes) share everything that touches the tokens: the tokens are cast once, normalised
once (``x^``, LayerNorm without affine, see :mod:`.attentive`), and the attention scores of all heads
are **one** matrix product ``x^ [B N, D] @ [D, sum_k Q_k H_k]``, the pooling one batched product
``weights^T [B, sum Q H, N] @ x^ [B, N, D]``. Each head then finishes on its own pooled vectors
(value and output projections, final norm, classifier: ``O(B Q D^2)``, no token in it).

The per-head score vectors are computed from each head's **own** parameters every forward and
concatenated (``torch.cat`` is differentiable), so each head's gradient lands in its own
``nn.Parameter``s: the optimizer's per-head groups, clipping and early stopping work unchanged, and
an inactive head (not in ``members``) is not computed and gets no gradient.

Any other head (deeper attentive heads, whose self-attention blocks differ per head; heads with
learned positions, ``head.pos_embed``, whose tokens differ per head; the mean-pool probe) runs on
its own over the tokens cast once; temporal heads (``temporal.py``) run on their own over the
batch's history (:meth:`HeadBank.run` takes the batch and gives each head the inputs it reads).

Numerics: head k's logits equal its own ``head(tokens)`` up to float rounding (the shared product
sums in another blocking than a product of head k's columns alone; measured ~1e-7 relative).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .attentive import AttentiveHead, attention_weights
from .registry import TOKENS_KEY, head_args, head_input


def _pools_on_tokens(head: nn.Module) -> bool:
    # a head with positions of its own (head.pos_embed) normalises its own x + pos: not shared
    return isinstance(head, AttentiveHead) and not head.blocks and head.pos is None


class HeadBank(nn.Module):
    """``HeadBank(heads)``; ``bank(tokens, members)`` -> ``[logits [B, C] of head i for i in members]``
    (all heads when ``members`` is None). ``bank.heads`` is an ``nn.ModuleList`` (state-dict keys
    ``{i}.{name}``)."""

    def __init__(self, heads: list[nn.Module]):
        super().__init__()
        self.heads = nn.ModuleList(heads)

    def run(self, batch: dict, members: list[int] | None = None) -> list[Tensor]:
        """The chosen heads' logits on a batch: clip heads over ``batch["tokens"]`` (shared work, see
        :meth:`forward`); temporal heads, each on its own, over ``history`` and ``history_mask``."""
        chosen = list(range(len(self.heads))) if members is None else list(members)
        if chosen and head_input(self.heads[chosen[0]]) != TOKENS_KEY:
            return [self.heads[i](*head_args(self.heads[i], batch)) for i in chosen]
        return self(batch[TOKENS_KEY], chosen)

    def forward(self, tokens: Tensor, members: list[int] | None = None) -> list[Tensor]:
        chosen = [self.heads[i] for i in (range(len(self.heads)) if members is None else members)]
        if not chosen:
            return []
        dtype = next(chosen[0].parameters()).dtype
        x = tokens.to(dtype)  # once for all heads (the store keeps fp16)
        shared = [h for h in chosen if _pools_on_tokens(h)]
        pooled = dict(zip(map(id, shared), self._pool(shared, x))) if shared else {}
        return [h.classify(h.pool.attend(h.query[0], pooled[id(h)])) if id(h) in pooled else h(x)
                for h in chosen]

    @staticmethod
    def _pool(heads: list[AttentiveHead], x: Tensor) -> list[Tensor]:
        """Depth-1 attentive heads over ``x [B, N, D]``: each head's pooled ``[B, Q*H, D]``."""
        eps = {h.pool.norm_x.eps for h in heads}
        if len(eps) > 1:  # not in a sweep (one head config); keep the grouping honest anyway
            return [p for h in heads for p in HeadBank._pool([h], x)]
        xh = heads[0].pool.normalize(x)
        vectors = [h.pool.score_vectors(h.query[0]) for h in heads]
        u = torch.cat([u for u, _ in vectors])
        c = torch.cat([c for _, c in vectors])
        pooled = attention_weights(xh, u, c).transpose(1, 2) @ xh  # [B, sum Q H, D]
        return list(pooled.split([len(c) for _, c in vectors], dim=1))
