"""Temporal heads: a keyframe's history of per-second embeddings -> logits, causal by construction.

A clip model sees the 16 s of its clip and nothing before; CVS is built up over minutes and stays
true while a tool or smoke hides the anatomy for a few seconds. A temporal head reads, for the
keyframe at second ``t``, the embeddings of earlier seconds of the same video (one pooled clip
embedding per 1 fps second, ``features.seconds``), never a later one:

    history [B, L, E]   position l holds second t - offsets[l] (oldest first; the last is t itself)
    mask    [B, L]      False where t - offsets[l] is before the video's first second (zeros there)

**Sampling ("multi-scale", head.history_*).** ``offsets`` = every second of the last ``dense``
seconds, then every ``stride``-th second back to ``W - 1`` (:func:`history_offsets`; W = 64,
dense = 16, stride = 4 gives L = 28 positions covering 64 s).

**Causal by construction.** The input holds no second after ``t``: the offline gather
(:func:`gather_history`, what training and evaluation read) and the streaming buffer
(:class:`HistoryBuffer`, what ``predict`` runs) fill the same positions with the same values, so the
output at ``t`` is the same function of seconds ``<= t`` in both (tested to 1e-6), and a masked
position (before the video began) has no effect (every attention score and recurrent update skips it).

**Heads.** Both project each second (LayerNorm, Linear to ``head.temporal_dim``) and add a learned
embedding of its position (how long ago it was), and both start as a classifier of the current
second alone: the history enters through a gate ``tanh(g + W a_t)``, 0 at initialisation (as
Flamingo's gated cross-attention), so training opens it only as far as the history helps. The gate
depends on the current second (``a_t``, its projected input): the head can learn to open it when
the present shows nothing (smoke, a tool across the anatomy) and keep it shut when it does. A gate
of one learned constant could only trade the two off: on occluded synthetic data it opened in one
training seed of three, the input-dependent gate in most (docs/benchmarks.md, "Temporal heads").

* ``temporal_gated`` (:class:`GatedTemporalHead`): ``head.depth`` cross-attention blocks in which the
  current second queries its history (Perceiver-style); the last block's weights pool the history's
  embeddings, gated into the present; ``return_attention`` gives the weights over the positions.
* ``temporal_gru`` (:class:`GRUTemporalHead`): a GRU cell runs over the history oldest to newest,
  skipping masked positions; ``rep = x_t + tanh(g + W a_t) U h_L``. It has no attention: its
  explanation is the influence of each position (how much the logits move when that second is
  left out).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..errors import ConfigError
from .attentive import MLP

HISTORY_KEY, MASK_KEY = "history", "history_mask"  # the batch keys a temporal head reads


def history_offsets(seconds: int, dense: int, stride: int) -> tuple[int, ...]:
    """Seconds before ``t`` of each history position, oldest first, ending with 0 (``t`` itself):
    ``0 .. dense - 1``, then every ``stride``-th second after ``dense - 1`` while ``< seconds``."""
    if seconds < 1 or not 1 <= dense <= seconds or stride < 1:
        raise ConfigError(f"history sampling needs 1 <= head.history_dense ({dense}) <= head.history_seconds "
                          f"({seconds}) and head.history_stride >= 1 ({stride})")
    near = list(range(dense))
    far = list(range(dense - 1 + stride, seconds, stride))
    return tuple(sorted(near + far, reverse=True))


def gather_history(table: Tensor, rows: Tensor, starts: Tensor, offsets: tuple[int, ...],
                   missing: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """The offline history: ``table [R, E]`` (per-second embeddings, a video's seconds in consecutive
    rows), ``rows [B]`` (the row of each keyframe's second), ``starts [B]`` (the row of its video's
    first second), ``missing [R]`` bool (seconds whose clip failed to load) -> ``(history [B, L, E],
    mask [B, L])``, zeros where masked."""
    off = torch.as_tensor(offsets, dtype=torch.long, device=table.device)
    idx = rows.long()[:, None] - off[None, :]  # [B, L]
    mask = idx >= starts.long()[:, None]
    idx = idx.clamp(min=0)
    if missing is not None:
        mask = mask & ~missing[idx]
    history = torch.where(mask[..., None], table[idx], table.new_zeros(()))
    return history, mask


class HistoryBuffer:
    """The streaming history of one video: a ring buffer of the last ``max(offsets) + 1`` embeddings,
    so its memory is the same after 10 minutes as after 10 hours.

    ``push(x [E]) -> (history [L, E], mask [L])``: exactly what :func:`gather_history` gives for that
    second (same positions, zeros where masked)."""

    def __init__(self, offsets: tuple[int, ...], dim: int, dtype=torch.float32, device="cpu"):
        self.offsets = torch.as_tensor(offsets, dtype=torch.long)
        self.size = int(self.offsets.max()) + 1
        self.ring = torch.zeros(self.size, dim, dtype=dtype, device=device)
        self.seen = 0  # seconds pushed so far

    def push(self, x: Tensor) -> tuple[Tensor, Tensor]:
        self.ring[self.seen % self.size] = x
        self.seen += 1
        ago = self.offsets
        mask = ago < self.seen
        idx = (self.seen - 1 - ago) % self.size
        history = torch.where(mask[:, None].to(self.ring.device), self.ring[idx.to(self.ring.device)],
                              self.ring.new_zeros(()))
        return history, mask.to(self.ring.device)

    def state_tensors(self) -> list[Tensor]:
        """Every tensor the stream keeps between seconds (for the memory tests)."""
        return [self.ring, self.offsets]


class TemporalStream:
    """A temporal head run second by second: ``push(embeddings [S, E]) -> logits [S, C]`` for the next
    ``S`` seconds of one video, each from the history :class:`HistoryBuffer` holds at that second."""

    def __init__(self, head: nn.Module, dim: int, device="cpu"):
        self.head = head
        self.buffer = HistoryBuffer(head.offsets, dim, device=device)

    @torch.no_grad()
    def push(self, embeddings: Tensor) -> Tensor:
        steps = [self.buffer.push(e) for e in embeddings.float()]
        history = torch.stack([h for h, _ in steps])
        mask = torch.stack([m for _, m in steps])
        return self.head(history, mask)


class SecondsInput(nn.Module):
    """Per-second embeddings ``[B, L, E]`` -> ``[B, L, dim]``: LayerNorm, Linear, plus a learned
    embedding of each position's age (the offsets are fixed, so position l is always ``offsets[l]``
    seconds ago). What the heads compare seconds with; the mix itself stays in the embeddings' space."""

    def __init__(self, in_dim: int, dim: int, positions: int):
        super().__init__()
        self.norm = nn.LayerNorm(in_dim)
        self.proj = nn.Linear(in_dim, dim)
        self.age = nn.Parameter(torch.zeros(positions, dim))
        nn.init.trunc_normal_(self.proj.weight, std=0.02)
        nn.init.zeros_(self.proj.bias)
        nn.init.trunc_normal_(self.age, std=0.02)

    def forward(self, history: Tensor) -> Tensor:
        return self.proj(self.norm(history.to(self.proj.weight.dtype))) + self.age


class Readout(nn.Module):
    """A second's representation ``[B, E]`` (``E = Q D``) -> logits ``[B, C]``: each of the ``Q``
    chunks normalised (``norm``, LayerNorm(D)), then ``classifier`` as a clip head's ``classify``:
    ``single`` (Q = 1), ``per_class`` (chunk c -> logit c, shared MLP) or ``mean`` (chunks averaged).

    A new temporal head reads out with a fresh LayerNorm(E) and MLP; over a stage-1 run's embeddings
    (``features.second_pooler=run``) it adopts a copy of that head's own norm and classifier
    (:meth:`cvsjepa.heads.pooler.SecondPooler.readout`), so that with its gates shut it gives
    exactly the stage-1 clip model's logits and training starts from there."""

    def __init__(self, norm: nn.LayerNorm, classifier: nn.Module, queries: int = 1, mode: str = "single"):
        super().__init__()
        self.norm, self.classifier, self.queries, self.mode = norm, classifier, int(queries), mode

    def forward(self, rep: Tensor) -> Tensor:
        q = self.norm(rep.view(rep.shape[0], self.queries, -1))
        if self.mode == "per_class":
            return self.classifier(q).squeeze(-1)
        return self.classifier(q[:, 0] if self.mode == "single" else q.mean(dim=1))


class CurrentGate(nn.Module):
    """``now [B, dim]`` (the current second's projected input) -> ``[B, n]`` = ``tanh(g + W now)``: how
    far each of a head's ``n`` history paths comes in for this keyframe; 0 at initialisation (``g``
    and ``W`` zero), so a new head ignores its history."""

    def __init__(self, dim: int, n: int):
        super().__init__()
        self.const = nn.Parameter(torch.zeros(n))
        self.proj = nn.Linear(dim, n)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, now: Tensor) -> Tensor:
        return torch.tanh(self.const + self.proj(now))


@torch.no_grad()
def keyframe_gates(head: nn.Module, history: Tensor) -> Tensor:
    """``[B, n]``: a temporal head's gates for each keyframe's history (0 = the history is shut out)."""
    return head.gate(head.inp(history.to(head.inp.proj.weight.dtype))[:, -1])


def _check(head: nn.Module, history: Tensor, mask: Tensor) -> None:
    n = len(head.offsets)
    if history.ndim != 3 or history.shape[1] != n or history.shape[2] != head.in_dim:
        raise ValueError(f"{type(head).__name__} expects history [B, {n}, {head.in_dim}], got {tuple(history.shape)}")
    if mask.shape != history.shape[:2]:
        raise ValueError(f"history_mask must be [B, {n}], got {tuple(mask.shape)}")


class CrossBlock(nn.Module):
    """``q [B, 1, dim]`` reads the history ``a [B, L, dim]``: ``q + xattn(norm(q), norm(a))``, then
    ``q + mlp(norm(q))``; masked positions get no weight. Returns ``(q, weights [B, H, 1, L])``."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 2.0):
        super().__init__()
        self.num_heads, self.head_dim = num_heads, dim // num_heads
        self.norm_q, self.norm_x = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.q, self.k, self.v, self.proj = (nn.Linear(dim, dim) for _ in range(4))
        self.norm_m = nn.LayerNorm(dim)
        self.mlp = MLP(dim, int(dim * mlp_ratio), dim)
        for lin in (self.q, self.k, self.v, self.proj):
            nn.init.trunc_normal_(lin.weight, std=0.02)
            nn.init.zeros_(lin.bias)

    def forward(self, q: Tensor, x: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        b, n, _ = x.shape
        h, hd = self.num_heads, self.head_dim
        xn = self.norm_x(x)
        qh = self.q(self.norm_q(q)).view(b, 1, h, hd).transpose(1, 2)  # [B, H, 1, hd]
        k = self.k(xn).view(b, n, h, hd).transpose(1, 2)  # [B, H, L, hd]
        v = self.v(xn).view(b, n, h, hd).transpose(1, 2)
        scores = (qh @ k.transpose(-2, -1)) * hd ** -0.5  # [B, H, 1, L]
        weights = scores.masked_fill(~mask[:, None, None, :], float("-inf")).softmax(dim=-1)
        q = q + self.proj((weights @ v).transpose(1, 2).reshape(b, 1, h * hd))
        return q + self.mlp(self.norm_m(q)), weights


class GatedTemporalHead(nn.Module):
    """``head.type=temporal_gated``: ``forward(history [B, L, E], mask [B, L]) -> logits [B, C]``.

    The current second queries its history through ``head.depth`` cross-attention blocks (in a
    projected space of ``head.temporal_dim``); the last block's weights, averaged over its heads,
    pool the history's embeddings themselves, ``z = sum_l w_l x_l``, and two gates (0 at first, each
    a constant plus a linear function of the current second's projected input ``a_t``) mix it, and a
    learned correction, into the current second's embedding:

        rep = x_t + tanh(g_z + w_z a_t) (z - x_t) + tanh(g_c + w_c a_t) W_c q     logits = readout(rep)

    With the first gate open the head reads out an attention-weighted past (e.g. the last second the anatomy
    showed) with the same readout as the present. ``return_attention`` gives ``w`` per head
    ``[B, num_heads, 1, L]`` (the last block's)."""

    input_key = HISTORY_KEY

    def __init__(self, in_dim: int, offsets: tuple[int, ...], num_classes: int = 3, dim: int = 256,
                 num_heads: int = 8, depth: int = 1, mlp_hidden: int = 512, dropout: float = 0.0):
        super().__init__()
        _validate(dim, num_heads, depth, mlp_hidden, dropout)
        self.in_dim, self.offsets = in_dim, tuple(int(o) for o in offsets)
        self.inp = SecondsInput(in_dim, dim, len(self.offsets))
        self.blocks = nn.ModuleList(CrossBlock(dim, num_heads) for _ in range(depth))
        self.correct = nn.Linear(dim, in_dim)
        nn.init.trunc_normal_(self.correct.weight, std=0.02)
        nn.init.zeros_(self.correct.bias)
        self.gate = CurrentGate(dim, 2)  # the pooled past, the correction
        self.readout = Readout(nn.LayerNorm(in_dim), MLP(in_dim, mlp_hidden, num_classes, dropout))

    def forward(self, history: Tensor, mask: Tensor, return_attention: bool = False):
        _check(self, history, mask)
        x = history.to(self.inp.proj.weight.dtype)
        a, mask = self.inp(x), mask.bool()
        q = a[:, -1:]  # the current second queries its history
        weights = None
        for blk in self.blocks:
            q, weights = blk(q, a, mask)
        z = (weights.mean(dim=1) @ x)[:, 0]  # [B, E]: the history's embeddings, attention-weighted
        now = x[:, -1]
        g = self.gate(a[:, -1])
        rep = now + g[:, :1] * (z - now) + g[:, 1:] * self.correct(q[:, 0])
        logits = self.readout(rep)
        return (logits, weights) if return_attention else logits


class GRUTemporalHead(nn.Module):
    """``head.type=temporal_gru``: a GRU cell over the history, oldest to newest (a masked position
    leaves the state as it was), then ``rep = x_t + tanh(g + w a_t) U h_L``, ``logits = readout(rep)``.
    ``return_attention`` gives each position's influence ``[B, 1, 1, L]`` (:meth:`influence`): a GRU
    has no attention weights."""

    input_key = HISTORY_KEY

    def __init__(self, in_dim: int, offsets: tuple[int, ...], num_classes: int = 3, dim: int = 256,
                 mlp_hidden: int = 512, dropout: float = 0.0):
        super().__init__()
        _validate(dim, 1, 1, mlp_hidden, dropout)
        self.in_dim, self.offsets = in_dim, tuple(int(o) for o in offsets)
        self.inp = SecondsInput(in_dim, dim, len(self.offsets))
        self.cell = nn.GRUCell(dim, dim)
        self.out = nn.Linear(dim, in_dim)
        nn.init.trunc_normal_(self.out.weight, std=0.02)
        nn.init.zeros_(self.out.bias)
        self.gate = CurrentGate(dim, 1)
        self.readout = Readout(nn.LayerNorm(in_dim), MLP(in_dim, mlp_hidden, num_classes, dropout))

    def forward(self, history: Tensor, mask: Tensor, return_attention: bool = False):
        _check(self, history, mask)
        x = history.to(self.inp.proj.weight.dtype)
        logits = self._logits(x, mask.bool())
        return (logits, self.influence(history, mask)) if return_attention else logits

    def _logits(self, x: Tensor, mask: Tensor) -> Tensor:
        a = self.inp(x)
        h = a.new_zeros(a.shape[0], a.shape[2])
        for step in range(a.shape[1]):
            h = torch.where(mask[:, step, None], self.cell(a[:, step], h), h)
        return self.readout(x[:, -1] + self.gate(a[:, -1]) * self.out(h))

    @torch.no_grad()
    def influence(self, history: Tensor, mask: Tensor) -> Tensor:
        """``[B, 1, 1, L]``: for each valid position, ``sum_c |logit_c - logit_c(position left out)|``,
        normalised to sum 1 over the positions (0 for masked ones)."""
        x, mask = history.to(self.inp.proj.weight.dtype), mask.bool()
        base = self._logits(x, mask)
        b, n = mask.shape
        drop = mask[:, None, :] & ~torch.eye(n, dtype=torch.bool, device=mask.device)[None]  # [B, L, L]
        out = self._logits(x.repeat_interleave(n, dim=0), drop.reshape(b * n, n)).view(b, n, -1)
        delta = (out - base[:, None]).abs().sum(-1) * mask  # [B, L]
        return (delta / delta.sum(-1, keepdim=True).clamp_min(1e-12)).view(b, 1, 1, n)


def _validate(dim: int, num_heads: int, depth: int, mlp_hidden: int, dropout: float) -> None:
    if num_heads < 1 or dim % num_heads:
        raise ConfigError(f"head.num_heads={num_heads} must divide head.temporal_dim={dim}")
    checks = [("head.depth", depth >= 1, depth, ">= 1"), ("head.mlp_hidden", mlp_hidden >= 0, mlp_hidden, ">= 0"),
              ("head.dropout", 0 <= dropout < 1, dropout, "in [0, 1)")]
    for key, ok, value, need in checks:
        if not ok:
            raise ConfigError(f"{key}={value} must be {need}")


def describe_offsets(offsets: tuple[int, ...]) -> str:
    """``"28 positions over 64 s (t .. t-63)"`` for logs."""
    return f"{len(offsets)} positions over {max(offsets) + 1} s (t .. t-{max(offsets)})" if offsets else "none"


__all__ = ["GatedTemporalHead", "GRUTemporalHead", "HistoryBuffer", "TemporalStream", "gather_history",
           "keyframe_gates", "history_offsets", "describe_offsets", "HISTORY_KEY", "MASK_KEY"]
