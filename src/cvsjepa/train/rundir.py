"""The run directory contract (read by evaluate, diagnose, predict, runs):

    config.yaml            fully resolved config
    metrics.csv            one row per epoch
    summary.json           best_epoch, best_val_map, val_ap, test_map, test_ap, params, backbone, seconds
    predictions_<split>.csv  one row per keyframe clip of the best checkpoint
    checkpoints/best/      model.safetensors + config.json
    checkpoints/last.*     everything needed to resume
    training_curve.png
"""

from __future__ import annotations

import csv
import io
import time
from pathlib import Path

from ..config import RunConfig, to_yaml
from ..errors import ConfigError
from ..io import atomic_write_text

METRIC_COLUMNS = ["epoch", "stage", "train_loss", "train_map", "val_loss", "val_map",
                  "val_ap_C1", "val_ap_C2", "val_ap_C3", "lr_head", "lr_backbone", "seconds"]


def open_run_dir_for_resume(cfg: RunConfig) -> Path:
    """The existing run directory of ``cfg.out``, after checking it was made with the same config."""
    from ..config import from_dict, to_dict
    import yaml

    out = Path(cfg.out)
    saved_path = out / "config.yaml"
    if not saved_path.is_file():
        raise ConfigError(f"cannot resume: {saved_path} does not exist (is {out} a run directory?)")
    if not (out / "checkpoints" / "last_state.pt").is_file():
        raise ConfigError(f"cannot resume: {out} has no complete epoch yet (checkpoints/last_state.pt is "
                          f"missing); start it again without resume=true after removing {out}")
    saved = to_dict(from_dict(yaml.safe_load(saved_path.read_text()), where=str(saved_path)))
    now = to_dict(cfg)
    saved["resume"] = now["resume"] = False
    diffs = _diff(saved, now)
    if diffs:
        raise ConfigError(f"cannot resume {out}: the config differs from the one it was started with "
                          f"({'; '.join(diffs[:5])}); resume with the saved config: cvsjepa train --resume {out}")
    return out


def _diff(a: dict, b: dict, prefix: str = "") -> list[str]:
    out = []
    for k in sorted(set(a) | set(b)):
        va, vb = a.get(k), b.get(k)
        if isinstance(va, dict) and isinstance(vb, dict):
            out += _diff(va, vb, f"{prefix}{k}.")
        elif va != vb:
            out.append(f"{prefix}{k}: {va!r} -> {vb!r}")
    return out


def create_run_dir(cfg: RunConfig) -> Path:
    out = Path(cfg.out) if cfg.out else Path("runs") / f"{cfg.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    if out.exists() and any(out.iterdir()):
        raise ConfigError(f"run directory {out} already exists and is not empty; finished work is never "
                          f"overwritten: choose another out=... or remove it")
    (out / "checkpoints").mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "config.yaml", to_yaml(cfg))
    return out


def write_metrics(run_dir: Path, rows: list[dict]) -> None:
    """Rewrite metrics.csv whole (atomically) so a crash never leaves half a row."""
    extra = sorted({k for r in rows for k in r} - set(METRIC_COLUMNS))  # e.g. val_miou, val_iou_<class>
    columns = METRIC_COLUMNS + extra
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: _fmt(row.get(k)) for k in columns})
    atomic_write_text(run_dir / "metrics.csv", buf.getvalue())


def read_metrics(run_dir: Path) -> list[dict]:
    with open(Path(run_dir) / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    return [{k: _parse(v) for k, v in r.items()} for r in rows]


def _fmt(v):
    if isinstance(v, float):
        return f"{v:.6g}"
    return "" if v is None else v


def _parse(v: str):
    if v == "":
        return None
    try:
        return int(v)
    except ValueError:
        try:
            return float(v)
        except ValueError:
            return v


def write_predictions(path: Path, ids: list[str], videos: list[int], frames: list[int],
                      labels, rater_means, probs, names=("C1", "C2", "C3")) -> None:
    """One row per keyframe clip: sample id, video, frame, 3 labels, 3 rater means, 3 probabilities."""
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["sample_id", "video_id", "frame"] + [f"label_{n}" for n in names]
               + [f"rater_mean_{n}" for n in names] + [f"prob_{n}" for n in names])
    for i in range(len(ids)):
        w.writerow([ids[i], videos[i], frames[i]] + [int(x) for x in labels[i]]
                   + [f"{float(x):.4f}" for x in rater_means[i]] + [f"{float(x):.6f}" for x in probs[i]])
    atomic_write_text(path, buf.getvalue())


def plot_training_curve(run_dir: Path, rows: list[dict], best_epoch: int | None, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [r["epoch"] for r in rows]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    ax1.plot(epochs, [r["train_map"] for r in rows], "o-", label="train mAP")
    ax1.plot(epochs, [r["val_map"] for r in rows], "o-", label="val mAP")
    for c in ("C1", "C2", "C3"):
        ax1.plot(epochs, [r[f"val_ap_{c}"] for r in rows], ":", alpha=0.7, label=f"val AP {c}")
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
    path = Path(run_dir) / "training_curve.png"
    tmp = path.with_name(".tmp-training_curve.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)
    return path
