"""Entropy of the backbone's *internal* self-attention, per layer and head.

For every encoder layer l and head h, each query token's attention row p (softmax over the N
tokens of the clip) gets the normalised entropy ``H(p) / log N`` (1 = uniform, 0 = one token);
the table value is the mean over query rows and clips. The research log measured ~98 % for
V-JEPA 2 ViT-L (98.4 % frozen vs 97.9 % after LoRA): nearly uniform.

Attention maps need the eager attention path (SDPA never materialises them): the backbone is
switched to ``attn_implementation="eager"`` for the pass and switched back afterwards. A forward
hook on each layer's attention module turns its ``[B, heads, N, N]`` weights into ``[heads]``
sums right away, so only the layer being computed holds an N x N map (ViT-L, 16 frames at 256:
16 x 2048 x 2048 floats = 256 MiB per clip) and nothing accumulates across layers.
"""

from __future__ import annotations

import re
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from ..errors import ConfigError
from ..plots import pyplot, save_figure
from ..evaluate.inference import move_batch
from .attention import normalised_entropy

_LAYER = re.compile(r"(?:^|\.)encoder\.layer\.(\d+)\.attention$")


@contextmanager
def eager_attention(backbone):
    """Run a transformers-based backbone with eager attention inside the block (then restore)."""
    hf = getattr(backbone, "model", None)
    if hf is None or not hasattr(hf, "set_attn_implementation"):
        raise ConfigError(f"{backbone.name}: internal attention maps need a transformers model with eager attention")
    before = hf.config._attn_implementation
    hf.set_attn_implementation("eager")
    try:
        yield
    finally:
        hf.set_attn_implementation(before)


def attention_modules(backbone) -> dict[int, torch.nn.Module]:
    """Encoder block index -> its self-attention module (the predictor's blocks are left out).

    Uses the backbone contract (``encoder_blocks()`` and the block-relative ``attention_modules``
    paths) when the backbone has it, else the transformers naming ``encoder.layer.N.attention``.
    """
    blocks = getattr(backbone, "encoder_blocks", None)
    paths = getattr(backbone, "attention_modules", None)
    if blocks is not None and isinstance(paths, dict) and "." in paths.get("query", ""):
        parent = paths["query"].rsplit(".", 1)[0]
        try:
            return {i: block.get_submodule(parent) for i, block in enumerate(blocks())}
        except AttributeError:
            pass
    found = {}
    for name, module in backbone.named_modules():
        m = _LAYER.search(name)
        if m and "predictor" not in name:
            found[int(m.group(1))] = module
    if not found:
        raise ConfigError(f"{backbone.name}: no encoder.layer.N.attention modules found")
    return dict(sorted(found.items()))


@torch.no_grad()
def internal_entropy(model, loader, device: torch.device, desc: str = "internal attention",
                     progress: bool = True) -> dict:
    """Mean normalised entropy per (layer, head) of the backbone's self-attention over ``loader``'s
    clips (batches of video), plus the pooler's per-head entropy on the same clips.

    Returns ``{"layers_heads": [L, H] array, "pooler": float, "n_clips": int, "n_tokens": int}``.
    """
    backbone = model.backbone
    modules = attention_modules(backbone)
    sums: dict[int, torch.Tensor] = {}
    clips: dict[int, int] = {}  # backbone clips per layer (3 per keyframe with data.view=three_crops)
    n_tokens = [0]

    def make_hook(layer: int):
        def hook(_module, _inputs, output):
            attn = output[1] if isinstance(output, tuple) and len(output) > 1 else None
            if not isinstance(attn, torch.Tensor) or attn.ndim != 4:
                raise ConfigError(f"{backbone.name}: encoder block {layer}'s attention returned no weights "
                                  f"[B, heads, N, N] even with eager attention")
            n_tokens[0] = attn.shape[-1]
            ent = normalised_entropy(attn, dim=-1).mean(dim=-1).sum(dim=0)  # [heads], summed over clips
            sums[layer] = sums.get(layer, 0) + ent.double().cpu()
            clips[layer] = clips.get(layer, 0) + attn.shape[0]
        return hook

    handles = [m.register_forward_hook(make_hook(i)) for i, m in modules.items()]
    n, pooler_sum = 0, 0.0
    try:
        with eager_attention(backbone):
            for batch in tqdm(loader, desc=desc, leave=False, disable=not progress, unit="clip"):
                if batch is None:
                    continue
                batch = move_batch(batch, device)
                _, attn = model(batch, return_attention=True)
                pooler_sum += float(normalised_entropy(attn, dim=-1).mean(dim=(1, 2)).sum())
                n += attn.shape[0]
    finally:
        for h in handles:
            h.remove()
    if n == 0:
        raise ConfigError("no clip to measure internal attention on")
    ran = sorted(sums)  # multilevel backbones stop after their last chosen block
    table = np.stack([(sums[i] / clips[i]).numpy() for i in ran])
    return {"layers_heads": table, "pooler": pooler_sum / n, "n_clips": n, "n_tokens": n_tokens[0],
            "layers": ran}


def plot_entropy(path: Path, tables: dict[str, np.ndarray], title: str) -> Path:
    """Side-by-side layers x heads heatmaps (one per run), value = mean normalised entropy in %."""
    plt = pyplot()
    k = len(tables)
    first = next(iter(tables.values()))
    layers, heads = first.shape
    vmin = min(float(t.min()) for t in tables.values())
    fig, axes = plt.subplots(1, k, figsize=(max(4.0, 0.5 * heads + 2.5) * k + 1.0, max(3.4, 0.3 * layers + 2.2)),
                             squeeze=False, constrained_layout=True)
    im = None
    for ax, (name, t) in zip(axes[0], tables.items()):
        im = ax.imshow(100 * t, aspect="auto", cmap="viridis", vmin=100 * vmin, vmax=100.0, origin="upper")
        ax.set_xlabel("head"), ax.set_ylabel("layer")
        ax.set_xticks(range(t.shape[1])), ax.set_yticks(range(t.shape[0]))
        ax.set_title(f"{name}: mean {100 * t.mean():.2f}%", fontsize=9)
        if t.size <= 64:
            mid = 50 * (vmin + 1.0)
            for (i, j), v in np.ndenumerate(t):
                ax.text(j, i, f"{100 * v:.2f}", ha="center", va="center", fontsize=7,
                        color="k" if 100 * v > mid else "w")
    fig.colorbar(im, ax=list(axes[0]), fraction=0.04, pad=0.02).set_label("normalised entropy (%)")
    fig.suptitle(title, fontsize=9)
    return save_figure(fig, path)
