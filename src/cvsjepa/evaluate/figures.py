"""Evaluation figures (PNG) and the data behind them (plain lists, for ``eval_<split>.json``)."""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torchmetrics.functional.classification import binary_precision_recall_curve

from ..plots import pyplot, save_figure
from .calibration import ReliabilityBins


def pr_curve(scores: torch.Tensor, labels: torch.Tensor, decimals: int = 5) -> dict:
    """Precision/recall points of one binary problem (empty lists when there is no positive)."""
    labels = torch.as_tensor(labels).round().long()
    if labels.sum() == 0:
        return {"precision": [], "recall": [], "thresholds": []}
    precision, recall, thr = binary_precision_recall_curve(torch.as_tensor(scores).float(), labels)
    r = (lambda t: [round(float(x), decimals) for x in t])
    return {"precision": r(precision), "recall": r(recall), "thresholds": r(thr)}


def plot_pr_curves(path: Path, curves: dict[str, dict], title: str) -> Path:
    """One panel per entry of ``curves``: name -> {precision, recall, ap, prevalence}. The no-skill
    line is the prevalence (the precision of a constant score at every recall)."""
    plt = pyplot()
    fig, axes = plt.subplots(1, len(curves), figsize=(4.2 * len(curves), 4.0), squeeze=False)
    for ax, (name, c) in zip(axes[0], curves.items()):
        ap = c.get("ap", math.nan)
        if c["recall"]:
            ax.step(c["recall"], c["precision"], where="post", lw=1.8, label=f"AP = {_pct(ap)}")
        else:
            ax.text(0.5, 0.5, "no positive in this split:\nAP undefined", ha="center", va="center")
        prev = c.get("prevalence", math.nan)
        if not math.isnan(prev):
            ax.axhline(prev, color="grey", ls="--", lw=1, label=f"no skill = prevalence {_pct(prev)}")
        ax.set_xlim(0, 1.01), ax.set_ylim(0, 1.02)
        ax.set_xlabel("recall"), ax.set_ylabel("precision")
        ax.set_title(f"{name} (n+ = {c.get('n_pos', '?')})")
        ax.legend(loc="best", fontsize=8)
        ax.grid(alpha=0.3)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return save_figure(fig, path)


def plot_reliability(path: Path, bins: dict[str, ReliabilityBins], ece: dict[str, float], title: str,
                     after: dict[str, ReliabilityBins] | None = None, ece_after: dict[str, float] | None = None,
                     after_title: str = "calibrated") -> Path:
    """Top: observed positive fraction vs mean predicted probability per bin (diagonal = perfectly
    calibrated; marker area ~ bin count). Bottom: how many predictions fall in each bin. With
    ``after`` (the same bins of the calibrated probabilities) a second column shows them."""
    plt = pyplot()
    panels = [("raw probabilities" if after is not None else None, bins, ece)]
    if after is not None:
        panels.append((after_title, after, ece_after or {}))
    fig, axes = plt.subplots(2, len(panels), figsize=(6 * len(panels), 7), squeeze=False,
                             gridspec_kw={"height_ratios": [3, 1]}, sharex=True)
    for col, (name, b, e) in enumerate(panels):
        _reliability_panel(axes[0][col], axes[1][col], b, e, name)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return save_figure(fig, path)


def _reliability_panel(ax, axh, bins: dict[str, ReliabilityBins], ece: dict[str, float], name: str | None) -> None:
    ax.plot([0, 1], [0, 1], color="grey", ls="--", lw=1, label="perfect calibration")
    n_crit = len(bins)
    width = (1.0 / len(next(iter(bins.values())).count)) / (n_crit + 1)
    for k, (crit, b) in enumerate(bins.items()):
        pts = [(m, f, c) for m, f, c in zip(b.mean_prob, b.frac_pos, b.count) if c]
        color = None
        if pts:
            xs, ys, cs = zip(*pts)
            total = sum(cs)
            e = ece.get(crit, math.nan)
            line, = ax.plot(xs, ys, "-", lw=1.2, alpha=0.8, label=f"{crit}: ECE = {'n/a' if e != e else f'{e:.3f}'}")
            ax.scatter(xs, ys, s=[20 + 400 * c / total for c in cs], color=line.get_color(), alpha=0.7)
            color = line.get_color()
        axh.bar([lo + (k + 0.5) * width for lo in b.lo], b.count, width=width, color=color, label=crit)
    ax.set_xlim(0, 1), ax.set_ylim(-0.02, 1.02)
    ax.set_ylabel("fraction positive (observed)")
    ax.legend(loc="upper left", fontsize=8)
    ax.grid(alpha=0.3)
    if name:
        ax.set_title(name, fontsize=10)
    axh.set_xlabel("predicted probability (bin)")
    axh.set_ylabel("count")
    axh.set_yscale("symlog")
    axh.grid(alpha=0.3)


def _pct(x: float) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.1f}%"
