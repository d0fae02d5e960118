"""Pooler attention: where the head's learned queries look, mapped back to (time, height, width).

The attentive head returns cross-attention weights ``[B, heads, Q, N]`` (softmax over the N
tokens). Here they are averaged over heads and queries into one map ``a [B, N]`` (still sums to 1
per clip), then reshaped to the backbone's ``token_grid(T) = (T', H', W')`` (token order is
frame-major, then row, then column; see ``backbones/base.py``). Per clip:

    std(a), max(a)                     a uniform map has std 0 and max 1/N
    entropy(a) = -sum a log a / log N  1 = uniform, 0 = all weight on one token
    temporal profile = sum over (H', W') of a, per t'  (where in the clip the head looks)
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..data.dataset import batch_video_ids
from ..data.transforms import denormalise
from ..plots import pyplot, save_figure
from ..evaluate.inference import move_batch


def normalised_entropy(p: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Shannon entropy of distributions along ``dim`` divided by log N (N = size of ``dim``).

    1 for a uniform distribution, 0 for a one-hot one; ``0 log 0 = 0``. Needs N >= 2.
    """
    n = p.shape[dim]
    if n < 2:
        raise ValueError(f"normalised entropy needs at least 2 outcomes, got {n}")
    p = p.float()
    return -torch.special.xlogy(p, p).sum(dim) / math.log(n)


def mean_map(attn: torch.Tensor) -> torch.Tensor:
    """``[B, heads, Q, N]`` -> ``[B, N]``: the mean over heads and queries."""
    if attn.ndim != 4:
        raise ValueError(f"expected attention weights [B, heads, Q, N], got {tuple(attn.shape)}")
    return attn.float().mean(dim=(1, 2))


def token_layout(backbone, num_frames: int) -> tuple[int, int, int, int]:
    """``(levels, T', H', W')`` of the backbone's tokens (one level unless multilevel layers)."""
    layout = getattr(backbone, "token_layout", None)
    return tuple(layout(num_frames)) if layout is not None else (1, *backbone.token_grid(num_frames))


def to_grid(att: torch.Tensor, layout: tuple[int, ...]) -> torch.Tensor:
    """``[B, N]`` -> ``[B, T', H', W']``. ``layout`` is ``(T', H', W')``, ``(levels, T', H', W')``
    (tokens level-major) or ``(views, levels, T', H', W')`` (``data.view=three_crops``, view-major);
    the levels' weights at one (t', h', w') are summed, so the grid still sums to 1, and views are
    laid side by side along the width (``[B, T', H', views * W']``, as :func:`tile_views` lays the
    frames). Refuses a token count that does not match the layout."""
    if att.shape[-1] != math.prod(layout):
        raise ValueError(f"{att.shape[-1]} tokens do not fill the token layout {tuple(layout)} "
                         f"({math.prod(layout)} tokens)")
    if len(layout) == 3:
        return att.reshape(att.shape[0], *layout)
    if len(layout) == 4:
        return att.reshape(att.shape[0], *layout).sum(dim=1)
    g = att.reshape(att.shape[0], *layout).sum(dim=2)  # [B, V, T', H', W']
    return torch.cat(list(g.unbind(1)), dim=-1)


def tile_views(video: torch.Tensor) -> torch.Tensor:
    """A multi-view clip ``[V, T, 3, crop, crop]`` -> ``[T, 3, crop, V * crop]`` (views side by side);
    a single-view clip is returned as is."""
    return torch.cat(list(video.unbind(0)), dim=-1) if video.ndim == 5 else video


@dataclass
class AttentionTable:
    """Per clip of a split: ids, labels, probabilities and the pooler-attention statistics."""

    grid: tuple[int, ...]  # token layout: (T', H', W') or (levels, T', H', W')
    sample_ids: list[str] = field(default_factory=list)
    video_ids: list[int] = field(default_factory=list)
    labels: list[list[int]] = field(default_factory=list)
    probs: list[list[float]] = field(default_factory=list)
    std: list[float] = field(default_factory=list)
    max: list[float] = field(default_factory=list)
    entropy: list[float] = field(default_factory=list)
    head_entropy: list[float] = field(default_factory=list)  # per head, then averaged over heads and queries
    temporal: list[list[float]] = field(default_factory=list)  # attention mass per t'

    def add(self, batch: dict, probs: torch.Tensor, attn: torch.Tensor) -> None:
        a = mean_map(attn)
        self.sample_ids += list(batch["sample_id"])
        self.video_ids += batch_video_ids(batch["video_id"])
        self.labels += batch["label"].round().int().tolist()
        self.probs += probs.tolist()
        self.std += a.std(dim=1, unbiased=False).tolist()
        self.max += a.amax(dim=1).tolist()
        self.entropy += normalised_entropy(a).tolist()
        self.head_entropy += normalised_entropy(attn).mean(dim=(1, 2)).tolist()
        self.temporal += to_grid(a, self.grid).sum(dim=(2, 3)).tolist()

    def as_arrays(self) -> dict[str, np.ndarray]:
        return {"labels": np.asarray(self.labels, dtype=int).reshape(-1, 3),
                "probs": np.asarray(self.probs, dtype=float).reshape(-1, 3),
                "std": np.asarray(self.std), "max": np.asarray(self.max), "entropy": np.asarray(self.entropy),
                "temporal": np.asarray(self.temporal, dtype=float).reshape(len(self.std), -1)}


@torch.no_grad()
def collect_attention(model, loader, grid: tuple[int, ...], device: torch.device,
                      desc: str = "attention", progress: bool = True) -> AttentionTable:
    """One forward pass over ``loader`` with the head's attention weights returned."""
    model.eval()
    table = AttentionTable(grid)
    for batch in tqdm(loader, desc=desc, leave=False, disable=not progress, unit="batch"):
        if batch is None:
            continue
        batch = move_batch(batch, device)
        logits, attn = model(batch, return_attention=True)
        table.add({k: (v.cpu() if isinstance(v, torch.Tensor) else v) for k, v in batch.items()},
                  torch.sigmoid(logits.float()).cpu(), attn.cpu())
    return table


def temporal_slots(n: int, show: int = 4) -> list[int]:
    """Up to ``show`` evenly spaced indices of ``range(n)``, always including the last (the keyframe)."""
    if n <= show:
        return list(range(n))
    return sorted({round(i * (n - 1) / (show - 1)) for i in range(show)})


def plot_attention_clip(path: Path, video: torch.Tensor, att_grid: torch.Tensor, tubelet: int, title: str,
                        frame_numbers: list[int] | None = None, show: int = 4) -> Path:
    """Overlay a clip's pooler attention on its frames.

    ``video [T, 3, crop, crop]`` (normalised; a multi-view clip is tiled by :func:`tile_views`),
    ``att_grid [T', H', W']`` (sums to 1; views side by side, :func:`to_grid`). For each shown
    temporal slot t' the last frame of its tubelet is drawn with the H'xW' map upsampled
    (bilinear) to the crop, in units of the uniform weight 1/N (1 = uniform). The colour scale
    runs from the clip's lowest to its highest weight (shared by all panels) and the colour bar
    gives the values, so a nearly uniform map shows up as a narrow range, not as a flat colour.
    The last panel is the attention mass per temporal slot.
    """
    plt = pyplot()
    from matplotlib.ticker import FormatStrFormatter

    video = tile_views(video)
    t_slots, h, w = att_grid.shape
    n = att_grid.numel()
    rel = att_grid.float() * n  # x uniform
    up = F.interpolate(rel[:, None], size=tuple(video.shape[-2:]), mode="bilinear", align_corners=False)[:, 0]
    vmin, vmax = float(rel.min()), float(rel.max())
    if vmax - vmin < 1e-9:
        vmin, vmax = vmin - 0.5, vmax + 0.5
    slots = temporal_slots(t_slots, show)
    k = len(slots)
    aspect = video.shape[-1] / video.shape[-2]  # 3 for tiled three_crops
    fig = plt.figure(figsize=(2.8 * aspect * k + 4.6, 3.3))
    gs = fig.add_gridspec(1, k + 3, width_ratios=[aspect] * k + [0.06, 0.35, 1.2], wspace=0.08)
    im = None
    for j, t in enumerate(slots):
        ax = fig.add_subplot(gs[0, j])
        f = min(t * tubelet + tubelet - 1, video.shape[0] - 1)
        ax.imshow(denormalise(video[f]).permute(1, 2, 0).numpy())
        im = ax.imshow(up[t].numpy(), cmap="jet", alpha=0.45, vmin=vmin, vmax=vmax)
        label = f"frame {frame_numbers[f]}" if frame_numbers else f"clip frame {f}"
        ax.set_title(f"t'={t} ({label})", fontsize=8)
        ax.axis("off")
    cbar = fig.colorbar(im, cax=fig.add_subplot(gs[0, k]))
    cbar.set_label("attention (x uniform 1/N)", fontsize=7)
    cbar.ax.tick_params(labelsize=7)
    decimals = max(2, math.ceil(-math.log10(vmax - vmin)) + 1)  # enough to tell the ticks apart
    cbar.ax.yaxis.set_major_formatter(FormatStrFormatter(f"%.{decimals}f"))
    ax = fig.add_subplot(gs[0, k + 2])
    mass = att_grid.sum(dim=(1, 2)).numpy()
    ax.bar(range(t_slots), mass, color="tab:orange")
    ax.axhline(1 / t_slots, color="grey", ls="--", lw=1, label="uniform")
    ax.set_ylim(0, max(1.6 / t_slots, 1.1 * float(mass.max())))
    ax.set_xticks(range(t_slots))
    ax.set_xlabel("temporal slot t' (last = keyframe)", fontsize=8)
    ax.yaxis.tick_right(), ax.yaxis.set_label_position("right")
    ax.set_ylabel("attention mass", fontsize=8)
    ax.set_title("mass per time step", fontsize=8)
    ax.legend(fontsize=7, loc="upper left")
    fig.suptitle(title, fontsize=8.5)
    fig.subplots_adjust(left=0.02, right=0.95, bottom=0.17, top=0.80)
    return save_figure(fig, path)
