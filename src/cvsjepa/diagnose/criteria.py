"""Label categories and the research log's per-criterion analyses.

Categories of a keyframe from its 0/1 labels (C1, C2, C3):

    full CVS      [1, 1, 1]
    C1-only       [1, 0, 0]   (likewise C2-only [0, 1, 0], C3-only [0, 0, 1])
    mixed         exactly two criteria positive
    all-negative  [0, 0, 0]

* criterion comparison: for each criterion c, the keyframes where only c is positive vs the
  full-CVS keyframes: mean probability of c and detection rate (prob_c >= threshold_c, val
  thresholds) in each group (the log: "C2 ... never detected correctly" when alone).
* wrong class: for the single-criterion keyframes, which criterion gets the highest probability
  (the log: all five C2-only samples ranked C1 above C2).
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from ..criteria import CRITERIA

CATEGORIES = ("full CVS", "C1-only", "C2-only", "C3-only", "mixed", "all-negative")


def category(label: Sequence[int]) -> str:
    """Category of one 0/1 label triple (C1, C2, C3)."""
    lab = [int(round(float(x))) for x in label]
    if len(lab) != 3 or any(x not in (0, 1) for x in lab):
        raise ValueError(f"expected three 0/1 labels, got {list(label)}")
    k = sum(lab)
    if k == 3:
        return "full CVS"
    if k == 0:
        return "all-negative"
    if k == 1:
        return f"{CRITERIA[lab.index(1)]}-only"
    return "mixed"


def categories(labels: np.ndarray) -> list[str]:
    return [category(row) for row in np.asarray(labels)]


def _mean(x) -> float:
    x = np.asarray(x, dtype=float)
    return float(x.mean()) if x.size else math.nan


def category_table(labels: np.ndarray, probs: np.ndarray, thresholds: Sequence[float],
                   stats: dict[str, np.ndarray]) -> list[dict]:
    """One row per category: n, mean of each per-clip statistic (``stats``: name -> [N]), mean
    probability per criterion, accuracy (fraction of the 3 criteria right at the thresholds,
    averaged over clips) and exact match (all 3 right)."""
    labels, probs = np.asarray(labels), np.asarray(probs)
    cats = np.asarray(categories(labels))
    correct = (probs >= np.asarray(thresholds)[None]) == (labels == 1)
    rows = []
    for cat in CATEGORIES:
        m = cats == cat
        row = {"category": cat, "n": int(m.sum())}
        row.update({f"mean_{k}": _mean(v[m]) for k, v in stats.items()})
        row.update({f"mean_prob_{c}": _mean(probs[m, i]) for i, c in enumerate(CRITERIA)})
        row["accuracy"] = _mean(correct[m].mean(axis=1)) if m.any() else math.nan
        row["exact_match"] = _mean(correct[m].all(axis=1)) if m.any() else math.nan
        rows.append(row)
    return rows


def criterion_comparison(labels: np.ndarray, probs: np.ndarray, thresholds: Sequence[float]) -> list[dict]:
    """Per criterion: alone (only it positive) vs within full CVS."""
    labels, probs = np.asarray(labels), np.asarray(probs)
    cats = np.asarray(categories(labels))
    rows = []
    for i, c in enumerate(CRITERIA):
        row = {"criterion": c}
        for group, m in (("alone", cats == f"{c}-only"), ("in_full_cvs", cats == "full CVS")):
            row[f"n_{group}"] = int(m.sum())
            row[f"mean_prob_{group}"] = _mean(probs[m, i])
            row[f"detection_rate_{group}"] = _mean(probs[m, i] >= thresholds[i])
        rows.append(row)
    return rows


def wrong_class(labels: np.ndarray, probs: np.ndarray) -> list[dict]:
    """For each single-criterion category: how often each criterion is ranked highest."""
    labels, probs = np.asarray(labels), np.asarray(probs)
    cats = np.asarray(categories(labels))
    rows = []
    for i, c in enumerate(CRITERIA):
        m = cats == f"{c}-only"
        top = probs[m].argmax(axis=1) if m.any() else np.zeros(0, dtype=int)
        row = {"category": f"{c}-only", "n": int(m.sum())}
        row.update({f"top_{o}": int((top == j).sum()) for j, o in enumerate(CRITERIA)})
        row["top_is_true_criterion"] = _mean(top == i) if m.any() else math.nan
        others = [j for j in range(3) if j != i]
        row["most_confused_with"] = (CRITERIA[max(others, key=lambda j: (top == j).sum())]
                                     if m.any() and (top != i).any() else "")
        rows.append(row)
    return rows


def pick_per_category(labels: np.ndarray, per_category: int, seed: int = 0) -> list[int]:
    """Row indices: up to ``per_category`` clips of each category (seeded), in category order."""
    rng = np.random.default_rng(seed)
    cats = np.asarray(categories(labels))
    picked = []
    for cat in CATEGORIES:
        idx = np.flatnonzero(cats == cat)
        if idx.size:
            picked += sorted(rng.choice(idx, size=min(per_category, idx.size), replace=False).tolist())
    return picked


def plot_categories(path, rows: list[dict], temporal: dict[str, list[float]], n_tokens: int, title: str):
    """2x2: mean attention std and max per category (in units of the uniform weight 1/N),
    accuracy and exact match at the val thresholds, and the mean attention mass per time step."""
    from ..plots import pyplot, save_figure

    plt = pyplot()
    rows = [r for r in rows if r["n"]]
    names = [f"{r['category']}\n(n={r['n']})" for r in rows]
    x = np.arange(len(rows))
    fig, axes = plt.subplots(2, 2, figsize=(12, 7.5))
    for ax, key, label in ((axes[0, 0], "mean_attention_std", "attention std (x 1/N)"),
                           (axes[0, 1], "mean_attention_max", "attention max (x 1/N)")):
        ax.bar(x, [r[key] * n_tokens for r in rows], color="tab:blue")
        if key.endswith("max"):
            ax.axhline(1.0, color="grey", ls="--", lw=1, label="uniform attention")
            ax.legend(fontsize=7)
        ax.set_xticks(x, names, fontsize=7)
        ax.set_ylabel(label)
        ax.set_title(f"mean {label.split(' (')[0]} per category", fontsize=9)
        ax.grid(alpha=0.3, axis="y")
    ax = axes[1, 0]
    ax.bar(x - 0.2, [r["accuracy"] for r in rows], width=0.4, label="criteria right (mean of 3)")
    ax.bar(x + 0.2, [r["exact_match"] for r in rows], width=0.4, label="all 3 right")
    ax.set_xticks(x, names, fontsize=7), ax.set_ylim(0, 1.05), ax.legend(fontsize=7)
    ax.set_title("accuracy at the val thresholds", fontsize=9), ax.grid(alpha=0.3, axis="y")
    ax = axes[1, 1]
    for cat, prof in temporal.items():
        ax.plot(range(len(prof)), [m * len(prof) for m in prof], "-o", ms=3, label=cat)
    if temporal:
        ax.axhline(1.0, color="grey", ls="--", lw=1, label="uniform")
        ax.set_xticks(range(len(next(iter(temporal.values())))))
    ax.ticklabel_format(axis="y", useOffset=False)
    ax.set_xlabel("temporal slot t' (last = keyframe)"), ax.set_ylabel("attention mass (x uniform 1/T')")
    ax.set_title("where in the clip the head looks, per category", fontsize=9)
    ax.legend(fontsize=7), ax.grid(alpha=0.3)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return save_figure(fig, path)
