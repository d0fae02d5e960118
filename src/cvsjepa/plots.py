"""matplotlib set-up and atomic figure writes for every PNG cvsjepa makes, and the training curve.

``pyplot()`` selects the non-interactive Agg backend (no display on training machines) before
importing pyplot; ``save_figure`` writes through :func:`cvsjepa.io.atomic_write`, so a crash never
leaves a half-written PNG under a name a reader trusts.
"""

from __future__ import annotations

from pathlib import Path

from .criteria import CRITERIA
from .io import atomic_write


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: Path, dpi: int = 110) -> Path:
    """Write a matplotlib figure as PNG atomically and close it."""
    plt = pyplot()
    path = Path(path)
    try:
        atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=dpi, format="png"))
    finally:
        plt.close(fig)
    return path


def plot_training_curve(path: Path, rows: list[dict], best_epoch: int | None, title: str,
                        names: tuple[str, ...] = CRITERIA) -> Path:
    """Left: train and val mAP and each criterion's val AP per epoch (stage 2 shaded, best epoch
    marked). Right: train and val loss. ``rows`` are metrics.csv rows."""
    plt = pyplot()
    epochs = [r["epoch"] for r in rows]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    ax1.plot(epochs, [r["train_map"] for r in rows], "o-", label="train mAP")
    ax1.plot(epochs, [r["val_map"] for r in rows], "o-", label="val mAP")
    for key, name in zip(CRITERIA, names):
        ax1.plot(epochs, [r[f"val_ap_{key}"] for r in rows], ":", alpha=0.7, label=f"val AP {name}")
    stage2 = [r["epoch"] for r in rows if r.get("stage") == 2]
    if stage2:
        for ax in (ax1, ax2):
            ax.axvspan(stage2[0] - 0.5, stage2[-1] + 0.5, color="orange", alpha=0.08, label="stage 2")
    if best_epoch is not None:
        ax1.axvline(best_epoch, color="grey", ls="--", lw=1, label=f"best (epoch {best_epoch})")
    ax1.set_xlabel("epoch"); ax1.set_ylabel("AP"); ax1.set_ylim(0, 1); ax1.legend(fontsize=8)
    ax1.set_title("mAP (train-val gap = overfitting)")
    ax2.plot(epochs, [r["train_loss"] for r in rows], "o-", label="train loss")
    ax2.plot(epochs, [r["val_loss"] for r in rows], "o-", label="val loss")
    ax2.set_xlabel("epoch"); ax2.set_ylabel("loss"); ax2.legend(fontsize=8); ax2.set_title("loss")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return save_figure(fig, path)
