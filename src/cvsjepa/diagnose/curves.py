"""Training curves of one or several runs on one plot: train and val mAP per epoch, and the gap.

The gap (train mAP - val mAP) is the log's overfitting signal: Exp2 went from -16 % at epoch 1 to
+24 % at epoch 4 while val mAP peaked at epoch 2.
"""

from __future__ import annotations

import math
from pathlib import Path

from ..plots import pyplot, save_figure
from ..rundir import RunDir


def load_curves(run_dirs: list[Path]) -> dict[str, list[dict]]:
    """Run label -> metrics.csv rows; labels are the directory names (made unique if needed)."""
    out: dict[str, list[dict]] = {}
    for path in run_dirs:
        run = RunDir.open(path)
        rows = run.read_metrics()
        label = run.name or str(run)
        while label in out:
            label = f"{label}'"
        out[label] = rows
    return out


def _num(x) -> float:
    return float(x) if isinstance(x, (int, float)) else math.nan


def curve_summary(curves: dict[str, list[dict]]) -> list[dict]:
    """Per run: epochs, best epoch by val mAP, the train/val mAP and gap there, and the final gap."""
    rows = []
    for label, rs in curves.items():
        vals = [_num(r.get("val_map")) for r in rs]
        ok = [i for i, v in enumerate(vals) if not math.isnan(v)]
        best = max(ok, key=lambda i: vals[i]) if ok else None
        gap = [_num(r.get("train_map")) - _num(r.get("val_map")) for r in rs]
        rows.append({"run": label, "epochs": len(rs),
                     "best_epoch": rs[best]["epoch"] if best is not None else None,
                     "best_val_map": vals[best] if best is not None else math.nan,
                     "train_map_at_best": _num(rs[best].get("train_map")) if best is not None else math.nan,
                     "gap_at_best": gap[best] if best is not None else math.nan,
                     "final_gap": gap[-1] if gap else math.nan})
    return rows


def plot_training_curves(path: Path, curves: dict[str, list[dict]], title: str = "") -> Path:
    """Left: train (dashed) and val (solid) mAP per epoch, one colour per run, best epoch marked.
    Right: train - val gap per epoch."""
    plt = pyplot()
    fig, (ax, axg) = plt.subplots(1, 2, figsize=(12, 4.2))
    for k, (label, rs) in enumerate(curves.items()):
        color = f"C{k % 10}"
        ep = [r["epoch"] for r in rs]
        tr, va = [_num(r.get("train_map")) for r in rs], [_num(r.get("val_map")) for r in rs]
        ax.plot(ep, tr, "--o", color=color, ms=3, alpha=0.8, label=f"{label} train")
        ax.plot(ep, va, "-o", color=color, ms=4, label=f"{label} val")
        finite = [(v, e) for v, e in zip(va, ep) if not math.isnan(v)]
        if finite:
            v, e = max(finite)
            ax.scatter([e], [v], s=90, facecolors="none", edgecolors=color, linewidths=1.5)
        axg.plot(ep, [t - v for t, v in zip(tr, va)], "-o", color=color, ms=4, label=label)
    ax.set_xlabel("epoch"), ax.set_ylabel("mAP"), ax.set_ylim(0, 1)
    ax.set_title("train (dashed) and val (solid) mAP; circle = best val", fontsize=9)
    ax.grid(alpha=0.3), ax.legend(fontsize=7, ncol=2 if len(curves) > 2 else 1)
    axg.axhline(0, color="grey", lw=1)
    axg.set_xlabel("epoch"), axg.set_ylabel("train mAP - val mAP")
    axg.set_title("generalisation gap (> 0 and growing = overfitting)", fontsize=9)
    axg.grid(alpha=0.3), axg.legend(fontsize=7)
    from matplotlib.ticker import MaxNLocator

    for a in (ax, axg):
        a.xaxis.set_major_locator(MaxNLocator(integer=True))
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return save_figure(fig, path)
